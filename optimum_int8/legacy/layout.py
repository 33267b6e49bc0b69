"""Read a legacy checkpoint's ``best_configure`` and state dict against the transformers model they belong to.

The result says, in today's module names, which Linear modules ran dynamic or static int8, which
embeddings were uint8, which Linear modules stayed fp32 or bf16, and every float tensor to load.
Nothing here is specific to an architecture: module names come from ``best_configure`` and the
state dict, and are checked against the model built from config.json.

Key names need care (see docs/legacy.md): FX-traced leaf modules gained a ``.module`` segment
(``lm_head.module.weight``), bf16 fallbacks gained more (``BF16ModuleWrapper``), the wrappers left stale
copies of float tensors beside the real ones, and static input qparams live on the traced parent
(``bert.pooler.dense_input_scale_0``).
"""

import dataclasses
import warnings

import torch
from torch import nn

from .. import linear_modules
from .reader import LegacyCheckpoint, LegacyCheckpointError

WRAPPER_SEGMENT = "module"
APPROACH_MODES = {"post_training_dynamic_quant": "dynamic", "post_training_static_quant": "static"}
FRAMEWORKS = ("pytorch", "pytorch_fx")
LINEAR_OP_TYPES = ("Linear",)
EMBEDDING_OP_TYPES = ("Embedding",)
PACKED_LINEAR = "_packed_params._packed_params"
PACKED_EMBEDDING = "_packed_params._packed_weight"
PACKED_DTYPE = "_packed_params.dtype"
# The minimum torch.ao dynamic Linear version that ran with reduce_range=True (7-bit activations).
_REDUCE_RANGE_VERSION = 4


@dataclasses.dataclass
class Int8Weights:
    weight_int8: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None


@dataclasses.dataclass
class StaticQParams:
    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int


@dataclasses.dataclass
class Uint8Table:
    weight_uint8: torch.Tensor
    row_scale: torch.Tensor
    row_zero_point: torch.Tensor


@dataclasses.dataclass
class LegacyLayout:
    """What the old stack built, in the names of the model built from config.json."""

    framework: str
    approach: str
    dynamic_linears: dict[str, Int8Weights]
    static_linears: dict[str, tuple[Int8Weights, StaticQParams]]
    embeddings: dict[str, Uint8Table]
    float_tensors: dict[str, torch.Tensor]
    fallback_modules: dict[str, str]

    @property
    def int8_modules(self) -> list[str]:
        return [*self.dynamic_linears, *self.static_linears]


@dataclasses.dataclass
class _Entry:
    key: str
    value: object
    wrappers: int


@dataclasses.dataclass
class _Ops:
    """``best_configure["op"]`` sorted by what each op became (module paths in today's model)."""

    linear_modes: dict[str, str] = dataclasses.field(default_factory=dict)  # "dynamic" or "static"
    embeddings: set[str] = dataclasses.field(default_factory=set)
    bf16_linears: set[str] = dataclasses.field(default_factory=set)
    raw_names: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> name in best_configure


def _top_level(checkpoint: LegacyCheckpoint) -> tuple[str, str]:
    config, source = checkpoint.best_configure, checkpoint.weights_file
    framework = config.get("framework", "pytorch_fx" if config.get("fx_sub_module_list") else "pytorch")
    if framework not in FRAMEWORKS:
        raise LegacyCheckpointError(
            f"{source}: best_configure framework is {framework!r}; optimum-int8 loads INC checkpoints of the PyTorch "
            f"frameworks {FRAMEWORKS} (IPEX and ONNX Runtime ones are not PyTorch state dicts)."
        )
    approach = config.get("approach")
    if approach not in APPROACH_MODES:
        raise LegacyCheckpointError(
            f"{source}: best_configure approach is {approach!r}; optimum-int8 rebuilds {sorted(APPROACH_MODES)} "
            "checkpoints (not quantization-aware training, weight-only or one-shot ones)."
        )
    if framework == "pytorch" and approach == "post_training_static_quant":
        raise LegacyCheckpointError(
            f"{source}: an eager (framework 'pytorch') static INC checkpoint places its QuantStub/DeQuantStub modules "
            "by the original model code, which the checkpoint does not record; only its FX ('pytorch_fx') form loads."
        )
    recipes = config.get("recipe_cfgs") or {}
    folded = (recipes.get("smooth_quant_args") or {}).get("folding")  # folded smooth-quant only rescales weights
    for recipe in ("layer_wise_quant", "smooth_quant"):
        if recipes.get(recipe) and not (recipe == "smooth_quant" and folded):
            raise LegacyCheckpointError(
                f"{source}: best_configure uses the {recipe!r} recipe, which wraps Linear modules in INC classes "
                "optimum-int8 does not rebuild."
            )
    if config.get("is_oneshot"):
        raise LegacyCheckpointError(f"{source}: one-shot (quantization-aware) INC checkpoints are not supported.")
    return framework, approach


def _resolve(modules: dict, name: str) -> tuple[str, str, int]:
    """(module path in the model, rest of the name, number of wrapper segments skipped)."""
    parts = name.split(".")
    path: list[str] = []
    wrappers = 0
    index = 0
    while index < len(parts):
        candidate = ".".join([*path, parts[index]])
        if candidate in modules:
            path.append(parts[index])
        elif parts[index] == WRAPPER_SEGMENT:
            wrappers += 1
        else:
            break
        index += 1
    return ".".join(path), ".".join(parts[index:]), wrappers


def _precision(config: dict) -> str | None:
    weight = config.get("weight") or {}
    activation = config.get("activation") or {}
    return weight.get("dtype", activation.get("dtype"))


def _classify_ops(checkpoint: LegacyCheckpoint, modules: dict, approach: str) -> _Ops:
    source = checkpoint.weights_file
    default_mode = APPROACH_MODES[approach]
    bf16_listed = {entry[0] for entry in checkpoint.best_configure.get("bf16_ops_list") or []}
    ops = _Ops()
    for key, config in checkpoint.best_configure["op"].items():
        if not (isinstance(key, tuple) and len(key) == 2 and isinstance(config, dict)):
            raise LegacyCheckpointError(f"{source}: best_configure['op'] entry {key!r} is not ((name, type), config).")
        raw_name, op_type = key
        precision = "bf16" if raw_name in bf16_listed else _precision(config)
        if precision == "fp32":
            continue
        path, rest, _ = _resolve(modules, raw_name)
        if rest or not path:
            raise LegacyCheckpointError(
                f"{source}: best_configure quantizes op {raw_name!r} ({op_type}), which is not a module of "
                f"{checkpoint.config.get('architectures') or 'the model in config.json'}."
            )
        ops.raw_names[path] = raw_name
        mode = (config.get("activation") or {}).get("quant_mode", default_mode)
        if op_type in LINEAR_OP_TYPES and precision == "int8" and mode in ("dynamic", "static"):
            ops.linear_modes[path] = mode
        elif op_type in LINEAR_OP_TYPES and precision == "bf16":
            ops.bf16_linears.add(path)
        elif op_type in EMBEDDING_OP_TYPES and precision == "uint8":
            ops.embeddings.add(path)
        else:
            raise LegacyCheckpointError(
                f"{source}: best_configure runs op {raw_name!r} of type {op_type!r} as {precision!r} "
                f"(quant_mode {mode!r}); optimum-int8 rebuilds int8 Linear (dynamic or static), uint8 Embedding "
                "and fp32/bf16 fallbacks only."
            )
    return ops


def _group_by_module(checkpoint: LegacyCheckpoint, modules: dict) -> dict[str, dict[str, list[_Entry]]]:
    groups: dict[str, dict[str, list[_Entry]]] = {}
    for key, value in checkpoint.state_dict.items():
        path, tail, wrappers = _resolve(modules, key)
        groups.setdefault(path, {}).setdefault(tail, []).append(_Entry(key, value, wrappers))
    return groups


def _innermost(entries: list[_Entry]) -> _Entry:
    """Of a tensor and its stale wrapper copies, the one the old runtime used (the most deeply wrapped)."""
    return max(entries, key=lambda entry: entry.wrappers)


def _one(tails: dict, tail: str, path: str, source: str, what: str) -> _Entry:
    entries = tails.get(tail)
    if not entries:
        raise LegacyCheckpointError(f"{source}: best_configure lists {path!r} as {what}, but no key ends in {tail!r} for it.")
    return _innermost(entries)


def _int8_weights(packed: _Entry, module: nn.Module, path: str, source: str) -> Int8Weights:
    value = packed.value
    if not (isinstance(value, tuple) and len(value) == 2 and torch.is_tensor(value[0]) and value[0].is_quantized):
        raise LegacyCheckpointError(f"{source}: {packed.key} is not a (quantized weight, bias) pair.")
    weight, bias = value
    if weight.dtype != torch.qint8:
        raise LegacyCheckpointError(f"{source}: {packed.key} holds a {weight.dtype} weight; int8 Linear needs qint8.")
    if tuple(weight.shape) != (module.out_features, module.in_features):
        raise LegacyCheckpointError(
            f"{source}: {packed.key} has shape {tuple(weight.shape)}, but {path} of the model in config.json is "
            f"[{module.out_features}, {module.in_features}]."
        )
    if weight.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        scale = torch.full((weight.shape[0],), weight.q_scale(), dtype=torch.float64)
        zero_point = torch.tensor([weight.q_zero_point()])
    elif weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric) and weight.q_per_channel_axis() == 0:
        scale, zero_point = weight.q_per_channel_scales(), weight.q_per_channel_zero_points()
    else:
        raise LegacyCheckpointError(f"{source}: {packed.key} is quantized {weight.qscheme()}; expected per-tensor or per-output-channel.")
    if bool(zero_point.any()):
        raise LegacyCheckpointError(
            f"{source}: {packed.key} has non-zero weight zero points (asymmetric weights); optimum-int8's int8 "
            "Linear is symmetric."
        )
    if (bias is None) != (module.bias is None):
        raise LegacyCheckpointError(f"{source}: {packed.key} and {path} of the model in config.json disagree on having a bias.")
    # The kernels keep weight scales in fp32 (fbgemm stores them as float), so float64 -> fp32 loses nothing that runs.
    return Int8Weights(
        weight.int_repr(), scale.to(torch.float32), None if bias is None else bias.detach().to(torch.float32)
    )


def _uint8_table(tails: dict, path: str, module: nn.Module, source: str) -> Uint8Table:
    entry = _one(tails, PACKED_EMBEDDING, path, source, "a uint8 Embedding")
    weight = entry.value
    if not (torch.is_tensor(weight) and weight.is_quantized and weight.dtype == torch.quint8
            and weight.qscheme() == torch.per_channel_affine_float_qparams and weight.q_per_channel_axis() == 0):
        found = f"{weight.dtype} {weight.qscheme()}" if torch.is_tensor(weight) and weight.is_quantized else type(weight).__name__
        raise LegacyCheckpointError(
            f"{source}: {entry.key} is {found}; a quantized Embedding needs quint8 per-row float qparams."
        )
    if tuple(weight.shape) != (module.num_embeddings, module.embedding_dim):
        raise LegacyCheckpointError(
            f"{source}: {entry.key} has shape {tuple(weight.shape)}, but {path} of the model in config.json is "
            f"[{module.num_embeddings}, {module.embedding_dim}]."
        )
    return Uint8Table(weight.int_repr(), weight.q_per_channel_scales().to(torch.float32),
                      weight.q_per_channel_zero_points().to(torch.float32))


def _input_qparams_keys(checkpoint: LegacyCheckpoint, raw_name: str) -> tuple[str, str, str]:
    """Where FX stored a static op's input qparams: on the traced parent, ``<child with _>_input_scale_0``."""
    parents = [name for name in checkpoint.best_configure.get("fx_sub_module_list") or [] if raw_name.startswith(name + ".")]
    if not parents:
        raise LegacyCheckpointError(
            f"{checkpoint.weights_file}: static op {raw_name!r} is not inside any module of best_configure's "
            "fx_sub_module_list, so its input quantization parameters cannot be found."
        )
    parent = max(parents, key=len)
    child = raw_name[len(parent) + 1:].replace(".", "_")
    return parent, f"{parent}.{child}_input_scale_0", f"{parent}.{child}_input_zero_point_0"


def _static_qparams(checkpoint: LegacyCheckpoint, raw_name: str, tails: dict, path: str, consumed: set) -> StaticQParams:
    source = checkpoint.weights_file
    parent, scale_key, zero_point_key = _input_qparams_keys(checkpoint, raw_name)
    state_dict = checkpoint.state_dict
    if scale_key not in state_dict or zero_point_key not in state_dict:
        raise LegacyCheckpointError(
            f"{source}: static int8 Linear {path!r} has no {scale_key!r}/{zero_point_key!r}: its input arrives already "
            "quantized from another int8 op of the traced graph, which optimum-int8 cannot rebuild module by module. "
            "Quantize the fp32 model again with optimum-int8 instead."
        )
    input_scale, input_zero_point = float(state_dict[scale_key]), int(state_dict[zero_point_key])
    recorded = checkpoint.best_configure.get("get_attr") or {}
    for key, value in ((scale_key, input_scale), (zero_point_key, input_zero_point)):
        attr = f"{parent}--{key[len(parent) + 1:]}"
        if attr in recorded and float(torch.tensor(recorded[attr], dtype=torch.float32)) != float(value):
            raise LegacyCheckpointError(f"{source}: {key} is {value} but best_configure['get_attr'][{attr!r}] is {recorded[attr]}.")
    consumed.update((scale_key, zero_point_key))
    output_scale = float(_one(tails, "scale", path, source, "a static int8 Linear").value)
    output_zero_point = int(_one(tails, "zero_point", path, source, "a static int8 Linear").value)
    return StaticQParams(input_scale, input_zero_point, output_scale, output_zero_point)


def _check_packed_dtype(tails: dict, expected: torch.dtype, source: str) -> None:
    for entry in tails.get(PACKED_DTYPE, []):
        if entry.value != expected:
            raise LegacyCheckpointError(f"{source}: {entry.key} is {entry.value}; optimum-int8 rebuilds {expected} only.")


def _check_dynamic_versions(checkpoint: LegacyCheckpoint, packed_keys: dict[str, str]) -> None:
    """torch.ao's dynamic Linear ran 7-bit activations (reduce_range) only from state-dict version 4 on."""
    versions = checkpoint.module_versions or {}
    old = [path for path, key in packed_keys.items()
           if versions.get(key[: -len("." + PACKED_LINEAR)], 0) < _REDUCE_RANGE_VERSION]
    if old:
        warnings.warn(
            f"{checkpoint.weights_file}: {len(old)} dynamic int8 Linear module(s) (e.g. {old[0]!r}) carry no torch.ao "
            f"module version >= {_REDUCE_RANGE_VERSION} in the state dict metadata, so the old runtime quantized "
            "their activations to 8 bits; optimum-int8's kernel uses 7 (reduce_range), as torch >= 1.6 did. "
            "Outputs can differ slightly from the old stack's.",
            stacklevel=3,
        )


def _renamed(checkpoint: LegacyCheckpoint, rename) -> LegacyCheckpoint:
    """The checkpoint with every module name passed through ``rename`` (None drops the name)."""
    def keep(mapping):
        return {rename(key): value for key, value in mapping.items() if rename(key) is not None}

    config = dict(checkpoint.best_configure)
    config["op"] = {(rename(name), op_type): cfg for (name, op_type), cfg in config["op"].items() if rename(name) is not None}
    config["bf16_ops_list"] = [(rename(name), *rest) for name, *rest in config.get("bf16_ops_list") or [] if rename(name) is not None]
    config["fx_sub_module_list"] = [rename(name) for name in config.get("fx_sub_module_list") or [] if rename(name) is not None]
    attrs = {tuple(key.split("--", 1)): value for key, value in (config.get("get_attr") or {}).items()}
    config["get_attr"] = {f"{rename(parent)}--{attr}": value for (parent, attr), value in attrs.items() if rename(parent) is not None}
    versions = None if checkpoint.module_versions is None else keep(checkpoint.module_versions)
    return dataclasses.replace(checkpoint, state_dict=keep(checkpoint.state_dict), best_configure=config, module_versions=versions)


def _all_resolve(modules: dict, names) -> bool:
    return all(path and not rest for path, rest, _ in (_resolve(modules, name) for name in names))


def _aligned_to_model(checkpoint: LegacyCheckpoint, model: nn.Module, modules: dict) -> LegacyCheckpoint:
    """A task checkpoint read into its base model loses the base-model prefix and the head; a base checkpoint
    read into a task model gains the prefix (as transformers loads ordinary checkpoints)."""
    names = [name for name, op_type in checkpoint.best_configure["op"] if op_type in (*LINEAR_OP_TYPES, *EMBEDDING_OP_TYPES)]
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or _all_resolve(modules, names):
        return checkpoint
    renames = (
        lambda name: name[len(prefix) + 1:] if name.startswith(prefix + ".") else None,
        lambda name: f"{prefix}.{name}",
    )
    for rename in renames:
        renamed = [rename(name) for name in names if rename(name) is not None]
        if renamed and _all_resolve(modules, renamed):
            return _renamed(checkpoint, rename)
    return checkpoint  # the op names that match neither way are reported by name below


def plan_layout(checkpoint: LegacyCheckpoint, model: nn.Module) -> LegacyLayout:
    """Match ``checkpoint`` to ``model`` (any device, e.g. meta) and say what each module becomes."""
    framework, approach = _top_level(checkpoint)
    modules = dict(model.named_modules())
    checkpoint = _aligned_to_model(checkpoint, model, modules)
    source = checkpoint.weights_file
    ops = _classify_ops(checkpoint, modules, approach)
    groups = _group_by_module(checkpoint, modules)
    linears = linear_modules.find_float_linears(model)
    for path in [*ops.linear_modes, *ops.bf16_linears]:
        if type(modules[path]) is not nn.Linear:
            raise LegacyCheckpointError(
                f"{source}: best_configure treats {ops.raw_names[path]!r} as a Linear, but {path} is a "
                f"{type(modules[path]).__name__} in today's transformers model."
            )
    for path in ops.embeddings:
        if not isinstance(modules[path], nn.Embedding):
            raise LegacyCheckpointError(
                f"{source}: best_configure quantizes {ops.raw_names[path]!r} as an Embedding, but {path} is a "
                f"{type(modules[path]).__name__} in today's transformers model."
            )

    consumed: set[str] = set()
    dynamic, static, embeddings, packed_keys = {}, {}, {}, {}
    for path, mode in ops.linear_modes.items():
        tails = groups.get(path, {})
        _check_packed_dtype(tails, torch.qint8, source)
        packed = _one(tails, PACKED_LINEAR, path, source, f"a {mode} int8 Linear")
        weights = _int8_weights(packed, modules[path], path, source)
        if mode == "dynamic":
            dynamic[path] = weights
            packed_keys[path] = packed.key
        else:
            static[path] = (weights, _static_qparams(checkpoint, ops.raw_names[path], tails, path, consumed))
    for path in ops.embeddings:
        tails = groups.get(path, {})
        _check_packed_dtype(tails, torch.quint8, source)
        embeddings[path] = _uint8_table(tails, path, modules[path], source)
    _check_dynamic_versions(checkpoint, packed_keys)

    float_tensors = {}
    for path in ops.bf16_linears:
        tails = groups.get(path, {})
        for tail, name in (("weight", "weight_bf16"), ("bias", "bias")):
            if tail in tails:
                entry = _innermost(tails[tail])
                if entry.value.dtype != torch.bfloat16:
                    raise LegacyCheckpointError(f"{source}: {entry.key} is {entry.value.dtype}, but best_configure runs {path} in bf16.")
                float_tensors[f"{path}.{name}"] = entry.value
    rebuilt = {*ops.linear_modes, *ops.embeddings, *ops.bf16_linears}
    bf16_weights = [tensor for name, tensor in float_tensors.items() if name.endswith(".weight_bf16")]
    for path, tails in groups.items():
        if path in rebuilt:
            continue  # the wrappers' stale float copies and torch.ao bookkeeping; the packed tensors ran
        for tail, entries in tails.items():
            entry = _innermost(entries)
            if entry.key in consumed:
                continue
            name = f"{path}.{tail}" if path else tail
            if _is_tied_bf16_copy(entry.value, bf16_weights):
                # A bf16 Linear tied to an embedding (lm_head and the shared embedding): the old stack turned
                # the one shared Parameter into bf16, so the embedding looked up bf16 rows. fp32 holds them exactly.
                float_tensors[name] = entry.value.float()
                continue
            _check_float_entry(entry, source)
            float_tensors[name] = entry.value

    fallback_modules = {
        name: "bfloat16" if name in ops.bf16_linears else "float32"
        for name in linears
        if name not in ops.linear_modes
    }
    return LegacyLayout(framework, approach, dynamic, static, embeddings, float_tensors, fallback_modules)


def _is_tied_bf16_copy(value, bf16_weights) -> bool:
    """Whether ``value`` is a bf16 tensor equal to the weight of a bf16 fallback Linear (its tied copy)."""
    return torch.is_tensor(value) and not value.is_quantized and value.dtype == torch.bfloat16 and any(
        weight.shape == value.shape and torch.equal(weight, value) for weight in bf16_weights)


def _check_float_entry(entry: _Entry, source: str) -> None:
    value = entry.value
    if not torch.is_tensor(value) or value.is_quantized:
        raise LegacyCheckpointError(
            f"{source}: {entry.key} ({type(value).__name__}{', quantized' if torch.is_tensor(value) else ''}) belongs to "
            "no op that best_configure quantizes; the checkpoint and its best_configure do not match."
        )
    if "_input_scale_" in entry.key or "_input_zero_point_" in entry.key:
        raise LegacyCheckpointError(
            f"{source}: {entry.key} is a static input quantization parameter that no static int8 Linear of "
            "best_configure uses (an op quantized twice, or a quantized op optimum-int8 does not rebuild)."
        )
    if value.dtype == torch.bfloat16:
        raise LegacyCheckpointError(f"{source}: {entry.key} is bfloat16, but best_configure does not list it as a bf16 op.")
