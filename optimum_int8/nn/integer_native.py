"""The integer-only (I-BERT) elementwise stages as native row-fused loops (``integer_native.cpp``), built once per machine.

Each stage (Q/K/V requantization into heads, attention, residual sum + integer LayerNorm, i-GELU) reads its rows once,
keeps them in cache and writes int8 codes, where ``torch.compile``'s kernels made several passes over whole int64
tensors; and there is no graph to compile. With AVX-512 VNNI the attention is one pass per (sequence, head): Q.K^T and
P.V as exact int32 VNNI dot products around the softmax, no scores in memory; elsewhere fp32 products (exact) around
a native softmax. The i-exp reads ``integer_ops.exp_table`` where the scales give one. The stages run on
``torch.get_num_threads()`` threads, with the OpenMP runtime torch loaded. The loops do
exactly the int64 arithmetic of their references in ``integer_ops``, so outputs are bit-identical
(``tests/test_nn_integer_native.py``).

The source is compiled with the C++ compiler inductor also uses (``$CXX``, else ``g++``), with OpenMP and the vector
instructions this CPU has, into ``$OPTIMUM_INT8_CACHE_DIR`` (default ``~/.cache/optimum-int8``), named by a hash of
source and flags: one compile (a second or two) per machine and version, then a load. ``load()`` returns None, with
``unavailable_reason()`` saying why, where that fails.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from . import integer_kernels
from .kernels import capabilities

SOURCE = Path(__file__).with_name("integer_native.cpp")
CACHE_ENV = "OPTIMUM_INT8_CACHE_DIR"
_COMMON_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp")
_POINTER, _INT = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {
    "qkv_heads_f32": [_POINTER] * 3 + [_INT, _POINTER] + [_INT] * 4,
    "qkv_heads_i32": [_POINTER] * 3 + [_INT, _POINTER] + [_INT] * 4,
    "integer_softmax": [_POINTER, _POINTER, _INT, _POINTER, _POINTER, _INT, _POINTER] + [_INT] * 4,
    "context_codes": [_POINTER] + [_INT] * 3 + [_POINTER] + [_INT] * 4,
    "residual_layernorm_f32": [_POINTER] * 7 + [_INT, _INT, _POINTER, _POINTER, _INT, _POINTER, _INT, _INT],
    "residual_layernorm_i32": [_POINTER] * 7 + [_INT, _INT, _POINTER, _POINTER, _INT, _POINTER, _INT, _INT],
    "gelu_codes_f32": [_POINTER] * 7 + [_INT, _INT, _POINTER, _INT, _INT],
    "gelu_codes_i32": [_POINTER] * 7 + [_INT, _INT, _POINTER, _INT, _INT],
    "set_threads": [_INT],
    "qkv_codes_f32": [_POINTER] * 3 + [_INT, _POINTER] + [_INT] * 4,
    "qkv_codes_i32": [_POINTER] * 3 + [_INT, _POINTER] + [_INT] * 4,
    "fused_attention": [_POINTER, _POINTER, _INT, _INT, _POINTER, _POINTER] + [_INT] * 4 + [_POINTER] + [_INT] * 4,
    "fused_attention_available": [],
}
FUSED_HEAD_SIZES = range(16, 257, 16)  # what fused_attention's registers hold


class _Library:
    lock = threading.Lock()
    handle: ctypes.CDLL | None = None
    path: Path | None = None
    failure: str | None = None
    threads: int = 0  # the thread count last given to the library


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "optimum-int8"


def vector_flags() -> list[str]:
    """The vector instructions to compile for: this CPU's own (detected, never a faked capability: an instruction
    the CPU lacks would crash)."""
    cpu = capabilities.detect()
    if cpu.avx512:
        return ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw"] + (
            ["-mavx512vnni"] if cpu.avx512_vnni else [])
    if cpu.avx2:
        return ["-mavx2", "-mfma"]
    return []


def _compiler() -> str:
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set CXX or install g++)")
    return compiler


def _build() -> Path:
    compiler = _compiler()
    source = SOURCE.read_bytes()
    flags = [*_COMMON_FLAGS, *vector_flags()]
    key = hashlib.sha256(source + " ".join([compiler, *flags, torch.__version__]).encode()).hexdigest()[:20]
    target = cache_dir() / f"integer_native-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Compile beside the target and rename: a concurrent process or an interrupted build never leaves half a library.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        result = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {SOURCE.name}: {result.stderr.strip()[-500:]}")
        os.replace(built, target)
    return target


def load() -> ctypes.CDLL | None:
    """The native kernels, built and loaded on first use; None where they cannot be (``unavailable_reason``)."""
    with _Library.lock:
        if _Library.handle is None and _Library.failure is None:
            try:
                path = _build()
                handle = ctypes.CDLL(str(path))
                for name, argtypes in _SIGNATURES.items():
                    function = getattr(handle, name)
                    function.argtypes, function.restype = argtypes, None
                handle.fused_attention_available.restype = ctypes.c_int64
                _Library.handle, _Library.path = handle, path
            except (OSError, RuntimeError, AttributeError) as error:
                _Library.failure = f"{type(error).__name__}: {error}"
        return _Library.handle


def unavailable_reason() -> str | None:
    """Why ``load()`` returned None, or None once it loaded (or before it was tried)."""
    return _Library.failure


def library_path() -> Path | None:
    """The loaded library's file, None before ``load()`` or where it failed."""
    return _Library.path


def forget() -> None:
    """Drop the loaded library and any failure: the next ``load()`` builds or finds it again (with the cache
    directory then configured), as a fresh process would."""
    with _Library.lock:
        _Library.handle = _Library.path = _Library.failure = None
        _Library.threads = 0


def _pointer(tensor: torch.Tensor | None, *dtypes: torch.dtype):
    if tensor is None:
        return None
    if tensor.dtype not in dtypes or not tensor.is_contiguous():
        raise ValueError(f"native integer kernel: expected a contiguous {dtypes} tensor, got {tensor.dtype} {tuple(tensor.shape)}")
    return tensor.data_ptr()


PROFILER_PREFIX = "optimum_int8::native_"


def _run(stage: str, function, *args) -> None:
    """``function(*args)`` on torch's intra-op thread count, seen by torch's profiler as ``optimum_int8::native_<stage>``
    while it records (ctypes calls are no torch operators; a label costs 6 us, so only then)."""
    threads = torch.get_num_threads()
    if threads != _Library.threads:
        _Library.handle.set_threads(threads)
        _Library.threads = threads
    if torch.autograd._profiler_enabled():
        with torch.profiler.record_function(PROFILER_PREFIX + stage):
            function(*args)
    else:
        function(*args)


def _variant(name: str, dtype: torch.dtype):
    suffix = {torch.float32: "f32", torch.int32: "i32"}.get(dtype)
    if suffix is None:
        raise ValueError(f"native integer kernel {name}: accumulators are fp32 or int32, got {dtype}")
    return getattr(_Library.handle, f"{name}_{suffix}")


def _qkv(kernel: str, dtype: torch.dtype, accumulator: torch.Tensor, multiplier, offset, shift: int, batch: int,
         length: int, heads: int) -> torch.Tensor:
    accumulator = accumulator.contiguous()
    head_size = accumulator.shape[-1] // (3 * heads)
    out = torch.empty(3, batch, heads, length, head_size, dtype=dtype)
    _run(
        kernel, _variant(kernel, accumulator.dtype), _pointer(accumulator, torch.float32, torch.int32),
        _pointer(multiplier, torch.int64), _pointer(offset, torch.int64), shift, out.data_ptr(), batch, length, heads,
        head_size,
    )
    return out


def self_attention(accumulator: torch.Tensor, attention, keep: torch.Tensor | None, batch: int, length: int) -> torch.Tensor:
    """Everything of ``IntegerSelfAttention`` after its Q/K/V GEMM: the accumulator [batch * length, 3 * hidden] in,
    the int8 context codes [batch, length, hidden] out, with ``attention``'s prepared constants.

    With AVX-512 VNNI (and a head size ``fused_attention`` holds) one fused pass per (sequence, head) on int8 codes:
    Q.K^T and P.V as VNNI dot products, the softmax between them, no scores in memory. Elsewhere exact fp32 products
    around the native softmax (``attention``).
    """
    heads, head_size = attention.num_heads, attention.head_size
    qkv = (accumulator, attention.qkv_multiplier, attention.qkv_offset, int(attention.qkv_shift), batch, length, heads)
    context = int(attention.context_multiplier), int(attention.context_offset), int(attention.context_shift)
    if not (_Library.handle.fused_attention_available() and head_size in FUSED_HEAD_SIZES):
        query, key, value = _qkv("qkv_heads", torch.float32, *qkv).unbind(0)
        sums = _chunked_attention(query, key, value, keep, attention.softmax_packed, attention.softmax_exp_table)
        return context_codes(sums, *context)
    codes = _qkv("qkv_codes", torch.int8, *qkv)
    keep_heads = keep_rows = 1
    if keep is not None:
        keep_heads, keep_rows = keep.shape[1], keep.shape[2]
        keep = keep.expand(batch, keep_heads, keep_rows, length).contiguous()
    out = torch.empty(batch, length, heads * head_size, dtype=torch.int8)
    _run(
        "fused_attention", _Library.handle.fused_attention, codes.data_ptr(), _pointer(keep, torch.bool), keep_heads,
        keep_rows, _pointer(attention.softmax_packed, torch.int64), *_table(attention.softmax_exp_table), *context,
        out.data_ptr(), batch, heads, length, head_size,
    )
    return out


def _table(exp_table: torch.Tensor | None) -> tuple:
    """The pointer and last index of ``integer_ops.exp_table`` (None: the i-exp's arithmetic instead)."""
    return (None, 0) if exp_table is None else (_pointer(exp_table, torch.int16), exp_table.numel() - 1)


def integer_softmax(scores: torch.Tensor, keep: torch.Tensor | None, constants: torch.Tensor,
                    exp_table: torch.Tensor | None) -> torch.Tensor:
    """``integer_ops.integer_softmax`` of fp32 ``scores`` [batch, heads, queries, keys]; probabilities as fp32.

    ``constants``: int64 [7], the softmax constants in ``softmax_constants`` order; ``exp_table``: their
    ``integer_ops.exp_table`` or None. ``keep`` broadcasts to the scores.
    """
    scores = scores.contiguous()
    batch, heads, queries, keys = scores.shape
    rows_per_batch, keep_rows = heads * queries, 1
    if keep is not None:
        if keep.dim() == 4 and keep.shape[1] == 1:  # one mask per sequence (the usual padding mask), shared by heads
            keep_rows = queries if keep.shape[2] > 1 else 1
            keep = keep.expand(batch, 1, keep_rows, keys).contiguous()
        else:  # a mask per head: every row its own
            keep = keep.expand(batch, heads, queries, keys).contiguous()
            rows_per_batch, keep_rows = queries, queries
    out = torch.empty_like(scores)
    _run(
        "softmax", _Library.handle.integer_softmax, _pointer(scores, torch.float32), _pointer(keep, torch.bool),
        keep_rows, _pointer(constants, torch.int64), *_table(exp_table), out.data_ptr(), batch * heads * queries,
        queries, rows_per_batch, keys,
    )
    return out


ATTENTION_CHUNK_SCORES = 2**20  # scores per chunk: 4 MiB of fp32, within a core's L2


def _chunked_attention(query, key, value, keep: torch.Tensor | None, softmax_constants: torch.Tensor,
                       exp_table: torch.Tensor | None) -> torch.Tensor:
    """``softmax(query . key^T) . value`` on integers, for query, key and value [batch, heads, length, head_size] (fp32
    codes): the context [batch, heads, length, head_size] as fp32 integers.

    Runs in chunks of whole heads of at most ``ATTENTION_CHUNK_SCORES`` scores, so the scores and probabilities of a
    chunk stay in cache (at 8 x 384 tokens the whole batch's are 57 MB, which glibc maps and faults in afresh on every
    call).
    """
    batch, heads, length, head_size = query.shape
    keys = key.shape[2]
    per_head = length * keys
    head_chunk = max(1, min(heads, ATTENTION_CHUNK_SCORES // per_head))
    batch_chunk = max(1, ATTENTION_CHUNK_SCORES // (per_head * heads)) if head_chunk == heads else 1
    context = torch.empty(batch, heads, length, value.shape[-1], dtype=torch.float32)
    for b in range(0, batch, batch_chunk):
        rows = slice(b, b + batch_chunk)
        for h in range(0, heads, head_chunk):
            columns = slice(h, h + head_chunk)
            chunk_keep = None
            if keep is not None:
                chunk_keep = keep[rows] if keep.shape[0] > 1 else keep
                chunk_keep = chunk_keep[:, columns] if chunk_keep.shape[1] > 1 else chunk_keep
            scores = integer_kernels.integer_bmm(query[rows, columns], key[rows, columns].transpose(-1, -2))
            probabilities = integer_softmax(scores, chunk_keep, softmax_constants, exp_table)
            context[rows, columns] = integer_kernels.integer_bmm(probabilities, value[rows, columns])
    return context


def context_codes(context: torch.Tensor, multiplier: int, offset: int, shift: int) -> torch.Tensor:
    """The attention context [batch, heads, length, head_size] (fp32) requantized to int8 [batch, length, hidden]."""
    context = context.contiguous()
    batch, heads, length, head_size = context.shape
    out = torch.empty(batch, length, heads * head_size, dtype=torch.int8)
    _run(
        "context_codes", _Library.handle.context_codes, _pointer(context, torch.float32), multiplier, offset, shift,
        out.data_ptr(), batch, length, heads, head_size,
    )
    return out


def residual_layernorm(accumulator, accumulator_multiplier, terms, offset, shift: int, bits: int, layer_norm):
    """``requantize_sum`` of an accumulator [rows, C] (per-channel multipliers; may be None) and up to three int8
    ``(tensor, multiplier)`` terms to ``bits``, then ``layer_norm`` (a prepared ``IntegerLayerNorm``): int8 [rows, C]."""
    if len(terms) > 3:
        raise ValueError(f"native integer kernel residual_layernorm: at most 3 int8 terms, got {len(terms)}")
    accumulator = accumulator.contiguous() if accumulator is not None else None
    shape = (accumulator if accumulator is not None else terms[0][0]).shape
    columns = shape[-1]
    rows = shape.numel() // columns
    term_codes = [codes.contiguous() for codes, _ in terms] + [None] * (3 - len(terms))
    term_multipliers = torch.tensor([int(m) for _, m in terms] + [0] * (3 - len(terms)), dtype=torch.int64)
    offset = offset.expand(columns).contiguous()  # kept referenced until the call returns
    out = torch.empty(shape, dtype=torch.int8)
    function = _variant("residual_layernorm", accumulator.dtype if accumulator is not None else torch.float32)
    _run(
        "residual_layernorm", function, _pointer(accumulator, torch.float32, torch.int32),
        _pointer(accumulator_multiplier, torch.int64),
        *(_pointer(codes, torch.int8) for codes in term_codes), term_multipliers.data_ptr(),
        _pointer(offset, torch.int64), shift, bits,
        _pointer(layer_norm.multiplier, torch.int64), _pointer(layer_norm.offset, torch.int64),
        int(layer_norm.shift), out.data_ptr(), rows, columns,
    )
    return out


def gelu_codes(accumulator, bias, b, c, one, erf_shift, multiplier, offset: int, shift: int) -> torch.Tensor:
    """The FFN up-projection's accumulator [..., C] plus ``bias``, i-GELU, requantized to int8 [..., C]."""
    accumulator = accumulator.contiguous()
    columns = accumulator.shape[-1]
    out = torch.empty(accumulator.shape, dtype=torch.int8)
    _run(
        "gelu_codes", _variant("gelu_codes", accumulator.dtype), _pointer(accumulator, torch.float32, torch.int32),
        *(_pointer(t, torch.int64) for t in (bias, b, c, one, erf_shift, multiplier)),
        offset, shift, out.data_ptr(), accumulator.numel() // columns, columns,
    )
    return out
