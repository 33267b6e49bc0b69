// The integer-only (I-BERT) elementwise stages as row-fused loops: integer_native.py compiles this file once per
// machine and calls it through ctypes. Every function computes exactly what its reference in integer_ops.py computes
// (same int64 arithmetic, same constants, same rounding), one row at a time in cache, where torch.compile's kernels
// pass over whole int64 tensors several times. The accumulators come from oneDNN's int8 GEMM as fp32 holding exact
// integers (`float`) or from torch._int_mm as int32.

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__AVX512VNNI__)
#include <immintrin.h>
#endif

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

// integer_ops.integer_softmax constants, in softmax_constants order, and integer_ops.exp_table (nullable): the i-exp
// of -i at index i up to `table_last`, the exp of everything below.
struct SoftmaxConstants {
  int64_t x0, reciprocal, reciprocal_shift, b, c, multiplier, shift;
  const int16_t* table;
  int32_t table_last;
  SoftmaxConstants(const int64_t* k, const int16_t* exp_table, int64_t exp_table_last)
      : x0(k[0]), reciprocal(k[1]), reciprocal_shift(k[2]), b(k[3]), c(k[4]), multiplier(k[5]), shift(k[6]),
        table(exp_table), table_last(static_cast<int32_t>(exp_table_last)) {}
};

// The i-exp of a row from the table: int32 indices, one gather each. A masked key's exp is the table's last entry (its
// score is below the maximum by more than the table spans), or exp(0) in a row with no key to attend to, where the
// reference's maximum is the masked score itself.
template <typename Score>
inline int64_t table_exp_row(const Score* in, const uint8_t* kept, int64_t keys, const SoftmaxConstants& k,
                             int32_t* e) {
  int32_t maximum = INT32_MIN;
  bool any = kept == nullptr;
  for (int64_t j = 0; j < keys; ++j) {
    const int32_t score = static_cast<int32_t>(in[j]);
    const bool counts = kept == nullptr || kept[j];
    maximum = counts ? std::max(maximum, score) : maximum;
    any = any || counts;
  }
  const int32_t masked = any ? k.table_last : 0;
  int32_t total = 0;
  for (int64_t j = 0; j < keys; ++j) {
    const int32_t index = (kept == nullptr || kept[j]) ? std::min(maximum - static_cast<int32_t>(in[j]), k.table_last)
                                                       : masked;
    e[j] = k.table[index];
    total += e[j];
  }
  return total;
}

// integer_ops.integer_softmax of one row of `keys` integer scores; `kept` (nullable) marks the keys it may attend to.
// `x` is scratch for `keys` values; the probabilities (0 to 256) go to `out`.
template <typename Score, typename Out>
inline void softmax_row(const Score* in, const uint8_t* kept, int64_t keys, const SoftmaxConstants& k, int64_t* x,
                        Out* out) {
  if (k.table != nullptr) {
    int32_t* e = reinterpret_cast<int32_t*>(x);
    const int64_t factor = (int64_t(1) << kSoftmaxSumBits) / std::max(table_exp_row(in, kept, keys, k, e), int64_t(1));
    for (int64_t j = 0; j < keys; ++j) out[j] = static_cast<Out>((e[j] * factor) >> (kSoftmaxSumBits - kSoftmaxBits));
    return;
  }
  int64_t maximum = INT64_MIN;
  if (kept != nullptr) {
    for (int64_t j = 0; j < keys; ++j) {  // a select through a bit mask: a branch-free loop the compiler vectorizes
      const int64_t keep_all = -static_cast<int64_t>(kept[j]);
      x[j] = (static_cast<int64_t>(in[j]) & keep_all) | (kMaskedScore & ~keep_all);
      maximum = std::max(maximum, x[j]);
    }
  } else {
    for (int64_t j = 0; j < keys; ++j) {
      x[j] = static_cast<int64_t>(in[j]);
      maximum = std::max(maximum, x[j]);
    }
  }
  const int64_t floor_x = k.x0 * kExpMaxHalvings;
  int64_t total = 0;
  for (int64_t j = 0; j < keys; ++j) {
    const int64_t v = std::max(x[j] - maximum, floor_x);
    const int64_t q = (-v * k.reciprocal) >> k.reciprocal_shift;
    const int64_t r = v - k.x0 * q;
    const int64_t poly = (r + k.b) * r + k.c;
    const int64_t total_shift = std::min(k.shift + q, int64_t(63));
    const int64_t e = std::min(std::max((((poly * k.multiplier) >> (total_shift - 1)) + 1) >> 1, int64_t(0)), kExpMax);
    x[j] = e;
    total += e;
  }
  const int64_t factor = (int64_t(1) << kSoftmaxSumBits) / std::max(total, int64_t(1));
  for (int64_t j = 0; j < keys; ++j) out[j] = static_cast<Out>((x[j] * factor) >> (kSoftmaxSumBits - kSoftmaxBits));
}

template <typename T, typename Out>
void qkv_heads(const T* accumulator, const int64_t* multiplier, const int64_t* offset, int64_t shift, Out* out,
               int64_t batch, int64_t length, int64_t heads, int64_t head_size) {
  const int64_t hidden = heads * head_size;
#pragma omp parallel for num_threads(g_threads)
  for (int64_t row = 0; row < batch * length; ++row) {
    const int64_t b = row / length, l = row % length;
    const T* in = accumulator + row * 3 * hidden;
    for (int64_t block = 0; block < 3 * heads; ++block) {  // (projection, head) pairs, in column order
      const int64_t projection = block / heads, h = block % heads;
      Out* target = out + (((projection * batch + b) * heads + h) * length + l) * head_size;
      const int64_t start = block * head_size;
      for (int64_t d = 0; d < head_size; ++d) {
        const int64_t c = start + d;
        target[d] = static_cast<Out>(saturate((static_cast<int64_t>(in[c]) * multiplier[c] + offset[c]) >> shift, 8));
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


#if defined(__AVX512VNNI__)
constexpr int64_t kQueryRows = 4;  // query rows whose P.V share each load of V (16 independent sums for head size 64)

// One query's scores against the packed keys: four blocks of 16 keys at a time, so that four independent vpdpbusd
// chains hide its latency.
inline void query_scores(const int8_t* query, const int8_t* k_packed, const int32_t* key_offsets, int64_t padded,
                         int64_t groups, int32_t* scores) {
  __m512i shifted[64];  // four query codes per lane as unsigned bytes: code + 128 is the code with its top bit flipped
  for (int64_t g = 0; g < groups; ++g) {
    int32_t four;
    __builtin_memcpy(&four, query + 4 * g, 4);
    shifted[g] = _mm512_set1_epi32(four ^ static_cast<int32_t>(0x80808080u));
  }
  int64_t block = 0;
  for (; block + 4 <= padded / 16; block += 4) {
    __m512i sums[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    for (int64_t g = 0; g < groups; ++g)
      for (int u = 0; u < 4; ++u)
        sums[u] = _mm512_dpbusd_epi32(sums[u], shifted[g], _mm512_loadu_si512(k_packed + ((block + u) * groups + g) * 64));
    for (int u = 0; u < 4; ++u)
      _mm512_storeu_si512(scores + (block + u) * 16,
                          _mm512_sub_epi32(sums[u], _mm512_loadu_si512(key_offsets + (block + u) * 16)));
  }
  for (; block < padded / 16; ++block) {
    __m512i sums = _mm512_setzero_si512();
    for (int64_t g = 0; g < groups; ++g)
      sums = _mm512_dpbusd_epi32(sums, shifted[g], _mm512_loadu_si512(k_packed + (block * groups + g) * 64));
    _mm512_storeu_si512(scores + block * 16, _mm512_sub_epi32(sums, _mm512_loadu_si512(key_offsets + block * 16)));
  }
}

inline __m512i probability_pair(const int16_t* probabilities, int64_t pair) {
  int32_t both;  // the probabilities of keys 2 pair and 2 pair + 1, as one int16 pair
  __builtin_memcpy(&both, probabilities + 2 * pair, 4);
  return _mm512_set1_epi32(both);
}

// P.V for `Rows` queries at once (probabilities: Rows rows of `padded`), head size 16 * Blocks, into sums [Rows][head].
template <int Blocks, int Rows>
inline void weighted_values(const int16_t* probabilities, const int16_t* v_packed, int64_t padded, int64_t head_size,
                            int32_t* sums) {
  __m512i context[Rows][Blocks];
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < Blocks; ++c) context[r][c] = _mm512_setzero_si512();
  for (int64_t pair = 0; pair < padded / 2; ++pair) {
    __m512i values[Blocks];
    for (int c = 0; c < Blocks; ++c) values[c] = _mm512_loadu_si512(v_packed + (pair * head_size + c * 16) * 2);
    for (int r = 0; r < Rows; ++r) {
      const __m512i weights = probability_pair(probabilities + r * padded, pair);
      for (int c = 0; c < Blocks; ++c) context[r][c] = _mm512_dpwssd_epi32(context[r][c], weights, values[c]);
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < Blocks; ++c) _mm512_storeu_si512(sums + r * head_size + c * 16, context[r][c]);
}

// P.V for one query, any head size that is a multiple of 16.
inline void weighted_values_any(const int16_t* probabilities, const int16_t* v_packed, int64_t padded,
                                int64_t head_size, int32_t* sums) {
  for (int64_t c = 0; c < head_size / 16; ++c) {
    __m512i context = _mm512_setzero_si512();
    for (int64_t pair = 0; pair < padded / 2; ++pair)
      context = _mm512_dpwssd_epi32(context, probability_pair(probabilities, pair),
                                    _mm512_loadu_si512(v_packed + (pair * head_size + c * 16) * 2));
    _mm512_storeu_si512(sums + c * 16, context);
  }
}

// softmax(Q.K^T).V on int8 codes for one (sequence, head), with VNNI dot products: 16 scores per vpdpbusd chain,
// 16 context dims per vpdpwssd. Q, K, V: [length, head_size] int8, head_size a multiple of 16. Every product and sum
// is an exact int32 (|score| <= 255 * 128 * head_size, |context| <= 256 * 128 * length), so the integers are those of
// the fp32 products of the reference; the softmax is softmax_row and the requantization integer_ops.requantize.
void attention_head(const int8_t* q, const int8_t* k, const int8_t* v, const bool* keep, int64_t keep_row_stride,
                    const SoftmaxConstants& constants, int64_t multiplier, int64_t offset, int64_t shift,
                    int64_t length, int64_t head_size, int64_t out_row_stride, int8_t* out, int8_t* k_packed,
                    int32_t* key_offsets, int16_t* v_packed, int32_t* scores, int64_t* x, int16_t* probabilities) {
  const int64_t padded = (length + 15) / 16 * 16, groups = head_size / 4, blocks = head_size / 16;
  // K as [key block of 16][group of 4 dims][16 keys][4 dims]: one 64-byte operand per (block, group). Keys past the
  // length are zero.
  for (int64_t j = 0; j < padded; ++j) {
    int32_t* packed = reinterpret_cast<int32_t*>(k_packed) + (j / 16) * groups * 16 + j % 16;
    int32_t sum = 0;
    if (j < length) {
      const int8_t* row = k + j * head_size;
      for (int64_t g = 0; g < groups; ++g) __builtin_memcpy(packed + g * 16, row + 4 * g, 4);
      for (int64_t d = 0; d < head_size; ++d) sum += row[d];
    } else {
      for (int64_t g = 0; g < groups; ++g) packed[g * 16] = 0;
    }
    key_offsets[j] = 128 * sum;  // vpdpbusd multiplies unsigned q + 128: subtract 128 * sum(k)
  }
  // V as [key pair][dim][2 keys] int16: 16 dims of two keys per 64-byte operand.
  for (int64_t pair = 0; pair < padded / 2; ++pair) {
    int16_t* packed = v_packed + pair * head_size * 2;
    const int8_t* first = v + 2 * pair * head_size;
    const bool has_first = 2 * pair < length, has_second = 2 * pair + 1 < length;
    for (int64_t d = 0; d < head_size; ++d) {
      packed[2 * d] = has_first ? first[d] : 0;
      packed[2 * d + 1] = has_second ? first[head_size + d] : 0;
    }
  }
  for (int64_t r = 0; r < kQueryRows; ++r)
    for (int64_t j = length; j < padded; ++j) probabilities[r * padded + j] = 0;
  for (int64_t first = 0; first < length; first += kQueryRows) {
    const int64_t rows = std::min(kQueryRows, length - first);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = first + r;
      query_scores(q + i * head_size, k_packed, key_offsets, padded, groups, scores);
      const uint8_t* kept = keep != nullptr ? reinterpret_cast<const uint8_t*>(keep + i * keep_row_stride) : nullptr;
      softmax_row(scores, kept, length, constants, x, probabilities + r * padded);
    }
    alignas(64) int32_t sums[kQueryRows * 256];
    if (blocks == 4 && rows == kQueryRows) {
      weighted_values<4, kQueryRows>(probabilities, v_packed, padded, head_size, sums);
    } else {
      for (int64_t r = 0; r < rows; ++r)
        weighted_values_any(probabilities + r * padded, v_packed, padded, head_size, sums + r * head_size);
    }
    for (int64_t r = 0; r < rows; ++r) {
      int8_t* target = out + (first + r) * out_row_stride;
      for (int64_t d = 0; d < head_size; ++d)
        target[d] = static_cast<int8_t>(
            saturate((static_cast<int64_t>(sums[r * head_size + d]) * multiplier + offset) >> shift, 8));
    }
  }
}
#endif

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

// The same requantization as qkv_heads_*, to int8 codes: the operands of fused_attention.
void qkv_codes_f32(const float* a, const int64_t* m, const int64_t* o, int64_t s, int8_t* out, int64_t batch,
                   int64_t length, int64_t heads, int64_t head_size) {
  qkv_heads(a, m, o, s, out, batch, length, heads, head_size);
}
void qkv_codes_i32(const int32_t* a, const int64_t* m, const int64_t* o, int64_t s, int8_t* out, int64_t batch,
                   int64_t length, int64_t heads, int64_t head_size) {
  qkv_heads(a, m, o, s, out, batch, length, heads, head_size);
}

// Whether fused_attention was compiled (AVX-512 VNNI).
int64_t fused_attention_available() {
#if defined(__AVX512VNNI__)
  return 1;
#else
  return 0;
#endif
}

// Q.K^T, integer softmax, P.V and the context's requantization in one pass per (sequence, head), from the int8 codes
// qkv [3, batch, heads, length, head_size] to int8 context codes [batch, length, heads * head_size]. `keep`
// (nullable): bool [batch, keep_heads, keep_rows, length], keep_heads 1 or heads, keep_rows 1 or length.
void fused_attention(const int8_t* qkv, const bool* keep, int64_t keep_heads, int64_t keep_rows, const int64_t* k,
                     const int16_t* table, int64_t table_last, int64_t multiplier, int64_t offset, int64_t shift,
                     int8_t* out, int64_t batch, int64_t heads, int64_t length, int64_t head_size) {
#if defined(__AVX512VNNI__)
  const SoftmaxConstants constants(k, table, table_last);
  const int64_t padded = (length + 15) / 16 * 16, per_head = length * head_size;
#pragma omp parallel num_threads(g_threads)
  {
    std::vector<int8_t> k_packed(padded * head_size);
    std::vector<int32_t> key_offsets(padded), scores(padded);
    std::vector<int16_t> v_packed(padded * head_size), probabilities(kQueryRows * padded);
    std::vector<int64_t> x(length);
#pragma omp for
    for (int64_t item = 0; item < batch * heads; ++item) {
      const int64_t b = item / heads, h = item % heads;
      const int8_t* q = qkv + item * per_head;
      const bool* kept = keep == nullptr ? nullptr
                         : keep + ((b * keep_heads + (keep_heads > 1 ? h : 0)) * keep_rows) * length;
      attention_head(q, q + batch * heads * per_head, q + 2 * batch * heads * per_head, kept,
                     keep_rows > 1 ? length : 0, constants, multiplier, offset, shift, length, head_size,
                     heads * head_size, out + b * length * heads * head_size + h * head_size, k_packed.data(),
                     key_offsets.data(), v_packed.data(), scores.data(), x.data(), probabilities.data());
    }
  }
#endif
}

// integer_ops.integer_softmax over rows of `keys` scores (fp32 holding exact integers), probabilities out as fp32.
// `keep` (nullable): bool [batch, keep_rows, keys], keep_rows 1 (one padding row per sequence) or `queries`.
void integer_softmax(const float* scores, const bool* keep, int64_t keep_rows, const int64_t* k, const int16_t* table,
                     int64_t table_last, float* out, int64_t rows, int64_t queries, int64_t rows_per_batch,
                     int64_t keys) {
  const SoftmaxConstants constants(k, table, table_last);
#pragma omp parallel num_threads(g_threads)
  {
    std::vector<int64_t> x(keys);
#pragma omp for
    for (int64_t row = 0; row < rows; ++row) {
      const uint8_t* kept = nullptr;
      if (keep != nullptr) {
        const int64_t query = keep_rows == 1 ? 0 : row % queries;
        kept = reinterpret_cast<const uint8_t*>(keep + ((row / rows_per_batch) * keep_rows + query) * keys);
      }
      softmax_row(scores + row * keys, kept, keys, constants, x.data(), out + row * keys);
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
