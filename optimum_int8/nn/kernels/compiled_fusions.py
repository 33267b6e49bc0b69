"""GELU fused into the oneDNN GEMM before it, in compiled graphs: an inductor pattern on our custom GEMM op.

In a compiled static int8 encoder, an FFN's first GEMM (``onednn.linear_static``) is followed by GELU, which
inductor decomposes into erf arithmetic and fuses with the next layer's quantization. That erf is the most
expensive elementwise work of the encoder; oneDNN applies the same GELU to the GEMM's fp32 result as it writes it,
at a fraction of the cost. This pass rewrites ``gelu(reshape(gemm))`` into ``reshape(gemm with a GELU post-op)``,
for erf GELU (``approximate="none"``) in fp32 or around a bf16 GEMM output. It matches only our own op, so other
graphs are untouched.

``register()`` adds the patterns to inductor's post-grad passes. ``onednn`` calls it when the op is first traced
(from its fake implementation), so that importing optimum_int8 does not import inductor.
"""

import functools
import warnings

import torch

aten = torch.ops.aten
prims = torch.ops.prims
_SQRT_HALF = 0.7071067811865476
# Traced calls pass the op's arguments up to ``out_dtype`` positionally; ``unary`` and ``algorithm`` keep their
# defaults, and the fusion sets them as keywords.
_OUT_DTYPE, _UNARY = 7, 8


def _gemm_node(match) -> torch.fx.Node:
    return next(node for node in match.nodes if node.target is torch.ops.optimum_int8.onednn_qlinear.default)


def _fusable(match) -> bool:
    gemm = _gemm_node(match)
    if len(gemm.args) != _UNARY or gemm.kwargs.get("unary", "none") != "none":
        return False
    out_dtype = gemm.args[_OUT_DTYPE]
    if "to_low" in match.kwargs:  # GELU computed in fp32 on a bf16 output, rounded back to it
        return match.kwargs["to_float"] == torch.float32 and match.kwargs["to_low"] == out_dtype
    return out_dtype == torch.float32


def _fuse(match, *args, **kwargs) -> None:
    gemm = _gemm_node(match)
    reshape = next(iter(gemm.users))
    gemm.kwargs = {**gemm.kwargs, "unary": "gelu", "algorithm": "none"}
    match.output_node().replace_all_uses_with(reshape)
    gelu = [node for node in match.nodes if node not in (gemm, reshape)]
    while gelu:  # users before what they use
        node = next(node for node in gelu if not node.users)
        match.graph.erase_node(node)
        gelu.remove(node)


@functools.cache
def register() -> None:
    """Add the patterns to inductor's post-grad passes (once). Where this torch's inductor has no such passes, the
    GEMM and GELU stay apart (same results, one more pass), with one warning."""
    try:
        _register()
    except Exception as error:  # noqa: BLE001: an inductor without these internals only loses the fusion
        warnings.warn(f"GELU is not fused into int8 GEMMs in compiled graphs here: {type(error).__name__}: {error}",
                      stacklevel=2)


def _register() -> None:
    from torch._inductor.fx_passes.post_grad import pass_patterns
    from torch._inductor.pattern_matcher import Arg, CallFunction, CallFunctionVarArgs, KeywordArg, register_graph_pattern

    def erf_gelu(x):
        """Inductor's decomposition of ``aten.gelu(x)``: ``x * 0.5 * (1 + erf(x * sqrt(1/2)))``."""
        return CallFunction(
            aten.mul,
            CallFunction(aten.mul, x, 0.5),
            CallFunction(aten.add, CallFunction(aten.erf, CallFunction(aten.mul, x, _SQRT_HALF)), 1),
        )

    def gemm_output(users: int):
        gemm = CallFunctionVarArgs(torch.ops.optimum_int8.onednn_qlinear.default, users=1)
        return CallFunction(aten.reshape.default, gemm, Arg(), _users=users)

    fp32 = erf_gelu(gemm_output(users=2))
    low_precision = CallFunction(
        prims.convert_element_type.default,
        erf_gelu(CallFunction(prims.convert_element_type.default, gemm_output(users=1), KeywordArg("to_float"),
                              _users=2)),
        KeywordArg("to_low"),
        _users=1,
    )
    for pattern in (fp32, low_precision):
        register_graph_pattern(pattern, extra_check=_fusable, pass_dict=pass_patterns[1])(_fuse)
