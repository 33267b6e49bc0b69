// The integer-only (I-BERT) elementwise stages as row-fused loops: integer_native.py compiles this file once per
// machine and calls it through ctypes. Every function computes exactly what its reference in integer_ops.py computes
// (same int64 arithmetic, same constants, same rounding), one row at a time in cache, where torch.compile's kernels
// pass over whole int64 tensors several times. The accumulators come from oneDNN's int8 GEMM as fp32 holding exact
// integers (`float`) or from torch._int_mm as int32.

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

// Threads per parallel loop: torch's intra-op thread count, set by the caller (set_threads). OpenMP's own setting is
// per calling thread, and a Python thread other than the one that called torch.set_num_threads would use every core.
int g_threads = 1;

constexpr int64_t kMaskedScore = -(int64_t(1) << 40);  // integer_ops.MASKED_SCORE
constexpr int64_t kExpMaxHalvings = 30;                 // integer_ops.EXP_MAX_HALVINGS
constexpr int64_t kExpMax = (int64_t(1) << 15) - 1;     // 16-bit exp (integer_ops.EXP_BITS)
constexpr int kSoftmaxSumBits = 32, kSoftmaxBits = 8;
constexpr int kLayerNormFactorBits = 61, kLayerNormBits = 30;
constexpr int kSqrtIterations = 7;  // integer_ops.SQRT_ITERATIONS

inline int64_t saturate(int64_t x, int bits) {
  const int64_t high = (int64_t(1) << (bits - 1)) - 1;
  return std::min(std::max(x, -high - 1), high);
}

// Python's floor division for a positive divisor.
inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// integer_ops.integer_sqrt: Newton's iteration from 2**ceil(bits / 2), a fixed number of steps.
inline int64_t integer_sqrt(int64_t n) {
  const int bits = n > 0 ? 64 - __builtin_clzll(static_cast<uint64_t>(n)) : 0;
  int64_t x = int64_t(1) << ((bits + 1) >> 1);
  for (int i = 0; i < kSqrtIterations; ++i) x = std::min(x, (x + n / std::max(x, int64_t(1))) >> 1);
  return x;
}

// integer_ops.integer_layernorm on one row, then integer_ops.requantize to int8 with LayerNorm's folded affine.
inline void layernorm_row(int64_t* x, int64_t n, const int64_t* multiplier, const int64_t* offset, int64_t shift,
                          int8_t* out) {
  int64_t sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += x[j];
  const int64_t mean = floor_div(2 * sum + n, 2 * n);
  int64_t squares = 0;
  for (int64_t j = 0; j < n; ++j) {
    x[j] -= mean;
    squares += x[j] * x[j];
  }
  const int64_t factor = (int64_t(1) << kLayerNormFactorBits) / std::max(integer_sqrt(squares), int64_t(1));
  for (int64_t j = 0; j < n; ++j) {
    const int64_t normalized = (x[j] * factor) >> (kLayerNormFactorBits - kLayerNormBits);
    out[j] = static_cast<int8_t>(saturate((normalized * multiplier[j] + offset[j]) >> shift, 8));
  }
}

template <typename T>
void qkv_heads(const T* accumulator, const int64_t* multiplier, const int64_t* offset, int64_t shift, float* out,
               int64_t batch, int64_t length, int64_t heads, int64_t head_size) {
  const int64_t hidden = heads * head_size;
#pragma omp parallel for num_threads(g_threads)
  for (int64_t row = 0; row < batch * length; ++row) {
    const int64_t b = row / length, l = row % length;
    const T* in = accumulator + row * 3 * hidden;
    for (int64_t block = 0; block < 3 * heads; ++block) {  // (projection, head) pairs, in column order
      const int64_t projection = block / heads, h = block % heads;
      float* target = out + (((projection * batch + b) * heads + h) * length + l) * head_size;
      const int64_t start = block * head_size;
      for (int64_t d = 0; d < head_size; ++d) {
        const int64_t c = start + d;
        target[d] = static_cast<float>(saturate((static_cast<int64_t>(in[c]) * multiplier[c] + offset[c]) >> shift, 8));
      }
    }
  }
}

template <typename T>
void residual_layernorm(const T* accumulator, const int64_t* accumulator_multiplier, const int8_t* term0,
                        const int8_t* term1, const int8_t* term2, const int64_t* term_multipliers,
                        const int64_t* offset, int64_t shift, int64_t sum_bits, const int64_t* ln_multiplier,
                        const int64_t* ln_offset, int64_t ln_shift, int8_t* out, int64_t rows, int64_t columns) {
  const int8_t* terms[3] = {term0, term1, term2};
#pragma omp parallel num_threads(g_threads)
  {
    std::vector<int64_t> x(columns);
#pragma omp for
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t base = row * columns;
      for (int64_t c = 0; c < columns; ++c) x[c] = offset[c];
      if (accumulator != nullptr)
        for (int64_t c = 0; c < columns; ++c)
          x[c] += static_cast<int64_t>(accumulator[base + c]) * accumulator_multiplier[c];
      for (int t = 0; t < 3; ++t) {
        if (terms[t] == nullptr) continue;
        const int64_t m = term_multipliers[t];
        for (int64_t c = 0; c < columns; ++c) x[c] += static_cast<int64_t>(terms[t][base + c]) * m;
      }
      for (int64_t c = 0; c < columns; ++c) x[c] = saturate(x[c] >> shift, static_cast<int>(sum_bits));
      layernorm_row(x.data(), columns, ln_multiplier, ln_offset, ln_shift, out + base);
    }
  }
}

template <typename T>
void gelu_codes(const T* accumulator, const int64_t* bias, const int64_t* b, const int64_t* c, const int64_t* one,
                const int64_t* erf_shift, const int64_t* multiplier, int64_t offset, int64_t shift, int8_t* out,
                int64_t rows, int64_t columns) {
#pragma omp parallel for num_threads(g_threads)
  for (int64_t row = 0; row < rows; ++row) {
    const T* in = accumulator + row * columns;
    int8_t* target = out + row * columns;
    for (int64_t j = 0; j < columns; ++j) {
      const int64_t x = static_cast<int64_t>(in[j]) + bias[j];
      const int64_t distance = std::min(x < 0 ? -x : x, -b[j]) + b[j];
      int64_t erf = distance * distance + c[j];
      erf = x < 0 ? -erf : erf;
      const int64_t gelu = x * ((erf >> erf_shift[j]) + one[j]);
      target[j] = static_cast<int8_t>(saturate((gelu * multiplier[j] + offset) >> shift, 8));
    }
  }
}

}  // namespace

extern "C" {

void set_threads(int64_t threads) { g_threads = static_cast<int>(std::max(threads, int64_t(1))); }

// Q, K and V from the fused projection's accumulator [batch * length, 3 * heads * head_size], requantized to int8
// codes (as fp32, the attention products' operand type) in the layout [3, batch, heads, length, head_size].
void qkv_heads_f32(const float* a, const int64_t* m, const int64_t* o, int64_t s, float* out, int64_t batch,
                   int64_t length, int64_t heads, int64_t head_size) {
  qkv_heads(a, m, o, s, out, batch, length, heads, head_size);
}
void qkv_heads_i32(const int32_t* a, const int64_t* m, const int64_t* o, int64_t s, float* out, int64_t batch,
                   int64_t length, int64_t heads, int64_t head_size) {
  qkv_heads(a, m, o, s, out, batch, length, heads, head_size);
}

// integer_ops.integer_softmax over rows of `keys` scores (fp32 holding exact integers), probabilities out as fp32.
// `keep` (nullable): bool [batch, keep_rows, keys], keep_rows 1 (one padding row per sequence) or `queries`.
void integer_softmax(const float* scores, const bool* keep, int64_t keep_rows, const int64_t* k, float* out,
                     int64_t rows, int64_t queries, int64_t rows_per_batch, int64_t keys) {
  const int64_t x0 = k[0], reciprocal = k[1], reciprocal_shift = k[2], b = k[3], c = k[4], multiplier = k[5],
                shift = k[6];
  const int64_t floor_x = x0 * kExpMaxHalvings;
#pragma omp parallel num_threads(g_threads)
  {
    std::vector<int64_t> x(keys);
#pragma omp for
    for (int64_t row = 0; row < rows; ++row) {
      const float* in = scores + row * keys;
      int64_t maximum = INT64_MIN;
      if (keep != nullptr) {
        const int64_t query = keep_rows == 1 ? 0 : row % queries;
        const bool* kept = keep + ((row / rows_per_batch) * keep_rows + query) * keys;
        const uint8_t* kept_bytes = reinterpret_cast<const uint8_t*>(kept);
        for (int64_t j = 0; j < keys; ++j) {  // a select through a bit mask: a branch-free loop the compiler vectorizes
          const int64_t keep_all = -static_cast<int64_t>(kept_bytes[j]);
          x[j] = (static_cast<int64_t>(in[j]) & keep_all) | (kMaskedScore & ~keep_all);
          maximum = std::max(maximum, x[j]);
        }
      } else {
        for (int64_t j = 0; j < keys; ++j) {
          x[j] = static_cast<int64_t>(in[j]);
          maximum = std::max(maximum, x[j]);
        }
      }
      int64_t total = 0;
      for (int64_t j = 0; j < keys; ++j) {
        const int64_t v = std::max(x[j] - maximum, floor_x);
        const int64_t q = (-v * reciprocal) >> reciprocal_shift;
        const int64_t r = v - x0 * q;
        const int64_t poly = (r + b) * r + c;
        const int64_t total_shift = std::min(shift + q, int64_t(63));
        const int64_t e = std::min(std::max((((poly * multiplier) >> (total_shift - 1)) + 1) >> 1, int64_t(0)), kExpMax);
        x[j] = e;
        total += e;
      }
      const int64_t factor = (int64_t(1) << kSoftmaxSumBits) / std::max(total, int64_t(1));
      float* target = out + row * keys;
      for (int64_t j = 0; j < keys; ++j)
        target[j] = static_cast<float>((x[j] * factor) >> (kSoftmaxSumBits - kSoftmaxBits));
    }
  }
}

// The attention context [batch, heads, length, head_size] (fp32 holding exact integers) requantized with scalar
// constants to int8 codes [batch, length, heads * head_size].
void context_codes(const float* context, int64_t multiplier, int64_t offset, int64_t shift, int8_t* out,
                   int64_t batch, int64_t length, int64_t heads, int64_t head_size) {
#pragma omp parallel for num_threads(g_threads)
  for (int64_t row = 0; row < batch * length; ++row) {
    const int64_t b = row / length, l = row % length;
    int8_t* target = out + row * heads * head_size;
    for (int64_t h = 0; h < heads; ++h) {
      const float* in = context + ((b * heads + h) * length + l) * head_size;
      for (int64_t d = 0; d < head_size; ++d)
        target[h * head_size + d] =
            static_cast<int8_t>(saturate((static_cast<int64_t>(in[d]) * multiplier + offset) >> shift, 8));
    }
  }
}

// integer_ops.requantize_sum of up to one accumulator (per-channel multipliers) and three int8 terms (one multiplier
// each) to `sum_bits`, then the integer LayerNorm and its int8 requantization: rows of `columns` int8 codes out.
void residual_layernorm_f32(const float* a, const int64_t* am, const int8_t* t0, const int8_t* t1, const int8_t* t2,
                            const int64_t* tm, const int64_t* o, int64_t s, int64_t bits, const int64_t* lm,
                            const int64_t* lo, int64_t ls, int8_t* out, int64_t rows, int64_t columns) {
  residual_layernorm(a, am, t0, t1, t2, tm, o, s, bits, lm, lo, ls, out, rows, columns);
}
void residual_layernorm_i32(const int32_t* a, const int64_t* am, const int8_t* t0, const int8_t* t1,
                            const int8_t* t2, const int64_t* tm, const int64_t* o, int64_t s, int64_t bits,
                            const int64_t* lm, const int64_t* lo, int64_t ls, int8_t* out, int64_t rows,
                            int64_t columns) {
  residual_layernorm(a, am, t0, t1, t2, tm, o, s, bits, lm, lo, ls, out, rows, columns);
}

// The FFN up-projection's accumulator plus its bias, i-GELU, requantized to int8 codes.
void gelu_codes_f32(const float* a, const int64_t* bias, const int64_t* b, const int64_t* c, const int64_t* one,
                    const int64_t* es, const int64_t* m, int64_t o, int64_t s, int8_t* out, int64_t rows,
                    int64_t columns) {
  gelu_codes(a, bias, b, c, one, es, m, o, s, out, rows, columns);
}
void gelu_codes_i32(const int32_t* a, const int64_t* bias, const int64_t* b, const int64_t* c, const int64_t* one,
                    const int64_t* es, const int64_t* m, int64_t o, int64_t s, int8_t* out, int64_t rows,
                    int64_t columns) {
  gelu_codes(a, bias, b, c, one, es, m, o, s, out, rows, columns);
}

}  // extern "C"
