"""Every Linear scheme of the registry on three architecture families (BERT, BART, Llama): quantize, save, reload
bit-exact; quantize while loading where the scheme allows it; calibration where it needs it."""

import copy
import json

import pytest
import torch
from torch import nn

from conftest import TINY_ARCHS, TINY_LLAMA, run
from optimum_int8 import Int8Config, quantize_model
from optimum_int8.configuration import FORMAT_VERSION, ConfigError
from optimum_int8.nn import Int8PerTokenLinear, Int8StaticActivationLinear, Int8WeightOnlyLinear
from optimum_int8.nn.kernels import capabilities, onednn
from optimum_int8.schemes import SCHEMES, get_scheme

ARCHS = {"bert": TINY_ARCHS["bert"], "bart": TINY_ARCHS["bart"], "llama": TINY_LLAMA}
ONEDNN_RUNS = onednn.unavailable_reason(capabilities.detect()) is None
LINEAR_SCHEMES = [name for name, scheme in SCHEMES.items() if scheme.module_class is not None]
# (scheme, config options): every Linear scheme, and the calibrated variants that write extra tensors.
CASES = {
    "int8_dynamic": ("int8_dynamic", {}),
    "int8_per_token": ("int8_per_token", {}),
    "int8_per_token-smoothquant": ("int8_per_token", {"smoothquant_alpha": 0.5}),
    "int8_static-minmax": ("int8_static", {}),
    "int8_static-histogram-smoothquant-auto": ("int8_static", {"observer": "histogram", "smoothquant_alpha": "auto"}),
    "int8_weight_only": ("int8_weight_only", {}),
}


def _calibration(arch, batches: int = 3) -> list[dict]:
    return [arch.inputs(seed=10 + i) for i in range(batches)]


def _quantize(arch, path, scheme, options):
    config = Int8Config(scheme=scheme, **options)
    data = _calibration(arch) if config.needs_calibration_data else None
    return quantize_model(arch.auto_class.from_pretrained(path), config, calibration_data=data)


@pytest.fixture(params=sorted(ARCHS))
def family(request, tmp_path):
    arch = ARCHS[request.param]
    path = tmp_path / f"{arch.name}-fp32"
    arch.build().save_pretrained(path)
    return arch, path


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_scheme_saves_and_reloads_bit_exact(family, case, tmp_path):
    arch, path = family
    scheme, options = CASES[case]
    qmodel = _quantize(arch, path, scheme, options)
    inputs = arch.inputs()
    reference = run(qmodel, inputs)
    module_class = get_scheme(scheme).module_class
    quantized = [name for name, module in qmodel.named_modules() if type(module) is module_class]
    assert quantized and quantized == qmodel.config.quantization_config.manifest.int8_modules
    qmodel.save_pretrained(tmp_path / "int8")

    saved = json.loads((tmp_path / "int8" / "config.json").read_text())["quantization_config"]
    assert saved["scheme"] == scheme and saved["format_version"] == FORMAT_VERSION
    calibration = saved["manifest"].get("calibration")
    if Int8Config(scheme=scheme, **options).needs_calibration_data:
        assert calibration["samples"] == 3
        assert calibration["smoothquant_alpha"] == options.get("smoothquant_alpha")
        assert (calibration["module_alphas"] != {}) == (options.get("smoothquant_alpha") == "auto")
    else:
        assert calibration is None

    reloaded = arch.auto_class.from_pretrained(tmp_path / "int8")
    assert torch.equal(run(reloaded, inputs), reference)
    assert [n for n, m in reloaded.named_modules() if type(m) is module_class] == quantized
    first = reloaded.get_submodule(quantized[0])
    assert ("smooth_scale" in first.state_dict()) == ("smoothquant_alpha" in options)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_scheme_stays_close_to_fp32(family, case):
    arch, path = family
    inputs = arch.inputs()
    fp32 = run(arch.auto_class.from_pretrained(path), inputs)
    int8 = run(_quantize(arch, path, *CASES[case]), inputs)
    assert torch.nn.functional.cosine_similarity(fp32.flatten(), int8.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("scheme", ["int8_dynamic", "int8_per_token", "int8_weight_only"])
def test_quantize_while_loading_equals_quantize_model(family, scheme):
    arch, path = family
    config = Int8Config(scheme=scheme)
    after = quantize_model(arch.auto_class.from_pretrained(path), config)
    while_loading = arch.auto_class.from_pretrained(path, quantization_config=config)
    inputs = arch.inputs()
    assert torch.equal(run(while_loading, inputs), run(after, inputs))
    after_state, loading_state = after.state_dict(), while_loading.state_dict()
    assert after_state.keys() == loading_state.keys()
    assert all(torch.equal(after_state[key], loading_state[key]) for key in after_state)


@pytest.mark.parametrize("options", [{"scheme": "int8_static"}, {"scheme": "int8_per_token", "smoothquant_alpha": 0.5}])
def test_quantizing_while_loading_refuses_what_needs_calibration(family, options):
    arch, path = family
    with pytest.raises(ValueError, match=r"needs calibration data.*quantize_model\(model, config, calibration_data="):
        arch.auto_class.from_pretrained(path, quantization_config=Int8Config(**options))
    with pytest.raises(ValueError, match="needs calibration data"):
        quantize_model(arch.auto_class.from_pretrained(path), Int8Config(**options))


def test_schemes_without_calibration_refuse_calibration_data(tmp_path):
    arch = ARCHS["bert"]
    for scheme in ("int8_dynamic", "int8_weight_only", "int8_per_token"):
        with pytest.raises(ValueError, match=f"the '{scheme}' scheme .* takes none"):
            quantize_model(arch.build(), Int8Config(scheme=scheme), calibration_data=_calibration(arch))


def test_module_schemes_mix_schemes_and_the_manifest_records_them(tmp_path):
    arch = TINY_LLAMA
    model = arch.build()
    config = Int8Config(scheme="int8_per_token", module_schemes={"lm_head": "int8_weight_only",
                                                                 "model.layers.*.mlp.down_proj": "int8_weight_only"},
                        modules_in_fp32=["model.layers.0.self_attn.q_proj"])
    qmodel = quantize_model(model, config)
    assert isinstance(qmodel.lm_head, Int8WeightOnlyLinear)
    assert isinstance(qmodel.model.layers[1].mlp.down_proj, Int8WeightOnlyLinear)
    assert isinstance(qmodel.model.layers[1].mlp.up_proj, Int8PerTokenLinear)
    assert type(qmodel.model.layers[0].self_attn.q_proj) is nn.Linear
    manifest = qmodel.config.quantization_config.manifest
    assert manifest.module_schemes == {"model.layers.0.mlp.down_proj": "int8_weight_only",
                                       "model.layers.1.mlp.down_proj": "int8_weight_only", "lm_head": "int8_weight_only"}
    inputs = arch.inputs()
    reference = run(qmodel, inputs)
    qmodel.save_pretrained(tmp_path / "mixed")
    reloaded = arch.auto_class.from_pretrained(tmp_path / "mixed")
    assert isinstance(reloaded.lm_head, Int8WeightOnlyLinear)
    assert torch.equal(run(reloaded, inputs), reference)


def test_static_scales_are_the_observers_and_are_tensors_in_the_checkpoint(tmp_path):
    from safetensors import safe_open

    arch = ARCHS["bart"]
    model = quantize_model(arch.build(), Int8Config(scheme="int8_static"), calibration_data=_calibration(arch))
    layer = model.model.encoder.layers[0].fc1
    assert isinstance(layer, Int8StaticActivationLinear)
    assert layer.input_scale.item() > 0 and 0 <= layer.input_zero_point.item() <= 255
    model.save_pretrained(tmp_path / "static")
    with safe_open(tmp_path / "static" / "model.safetensors", "pt") as tensors:
        assert tensors.get_tensor("model.encoder.layers.0.fc1.input_scale").dtype == torch.float32
        assert tensors.get_tensor("model.encoder.layers.0.fc1.input_zero_point").dtype == torch.int32


def test_config_errors_name_the_bad_option():
    with pytest.raises(ConfigError, match="scheme is 'int4'; supported schemes are"):
        Int8Config(scheme="int4")
    with pytest.raises(ConfigError, match="smoothquant_alpha applies to"):
        Int8Config(scheme="int8_weight_only", smoothquant_alpha=0.5)
    with pytest.raises(ConfigError, match=r"smoothquant_alpha must be a number in \[0, 1\]"):
        Int8Config(scheme="int8_per_token", smoothquant_alpha=1.5)
    with pytest.raises(ConfigError, match="has no static activation scales to observe"):
        Int8Config(scheme="int8_per_token", observer="minmax")
    with pytest.raises(ConfigError, match=r"module_schemes\['lm_head'\] is 'ibert'"):
        Int8Config(module_schemes={"lm_head": "ibert"})
    with pytest.raises(ConfigError, match="module_schemes apply to the Linear schemes"):
        Int8Config(scheme="ibert", module_schemes={"x": "int8_dynamic"})


def test_every_registered_linear_scheme_is_covered_here():
    assert {scheme for scheme, _ in CASES.values()} == set(LINEAR_SCHEMES)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_checkpoints_of_earlier_format_versions_load_bit_exact(version, tmp_path):
    """Versions 1 and 2 wrote int8_dynamic tensors only, version 3 no output qparams; rewritten as such, they reload
    to the same outputs."""
    arch = ARCHS["bart"]
    qmodel = quantize_model(arch.build(), Int8Config(scheme="int8_dynamic"))
    inputs = arch.inputs()
    reference = run(qmodel, inputs)
    qmodel.save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    config = json.loads(config_file.read_text())
    stored = config["quantization_config"]
    stored["format_version"] = version
    if version < 3:
        for key in ("module_schemes", "smoothquant_alpha", "observer", *(("scheme",) if version == 1 else ())):
            stored.pop(key)
    if version == 1:
        for key in ("kernel", "compute_dtype", "reduce_range"):
            stored.pop(key)
        for key in ("kernel", "compute_dtype"):
            stored["manifest"].pop(key, None)
    config_file.write_text(json.dumps(config))
    reloaded = arch.auto_class.from_pretrained(tmp_path / "old")
    assert reloaded.config.quantization_config.scheme == "int8_dynamic"
    assert torch.equal(run(reloaded, inputs), reference)


@pytest.mark.parametrize("data, error, message", [
    ([], ValueError, "calibration_data is empty"),
    ([torch.ones(2, 3, dtype=torch.long)], TypeError, "must yield dicts of model inputs .* got Tensor"),
])
def test_bad_calibration_data_is_a_clear_error_and_leaves_the_model_float(data, error, message):
    arch = ARCHS["bert"]
    model = arch.build()
    with pytest.raises(error, match=message):
        quantize_model(model, Int8Config(scheme="int8_static"), calibration_data=data)
    assert not any(isinstance(m, Int8StaticActivationLinear) for m in model.modules())
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected.float()).norm() / expected.float().norm())


@pytest.mark.parametrize("case", ["int8_dynamic", "int8_per_token", "int8_static-histogram-smoothquant-auto"])
def test_an_int8_encoder_runs_under_torch_compile(case, tmp_path):
    arch = ARCHS["bart"]
    arch.build().save_pretrained(tmp_path / "fp32")
    scheme, options = CASES[case]
    encoder = _quantize(arch, tmp_path / "fp32", scheme, options).get_encoder()
    # 64 and 63 rows: the prefill shapes oneDNN's kernel runs (fewer rows run fbgemm, which quantizes eagerly).
    generator = torch.Generator().manual_seed(3)
    batches = []
    for shape in ((4, 16), (3, 21)):
        input_ids = torch.randint(4, arch.config.vocab_size, shape, generator=generator)
        batches.append({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)})
    # Dynamo keeps, per code object, what it learned in this process: a graph break in BartEncoder's layer loop
    # (another scheme's eager GEMMs) makes it run that loop eagerly for every later BART encoder too.
    torch._dynamo.reset()
    compiled_encoder = copy.deepcopy(encoder)  # not run yet: its first call is the compiled one
    compiled_encoder.compile(dynamic=True)
    with torch.no_grad():
        eager = [encoder(**batch).last_hidden_state for batch in batches]
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        compiled = [compiled_encoder(**batches[0]).last_hidden_state]
        after_first_call = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        compiled.append(compiled_encoder(**batches[1]).last_hidden_state)
    graphs = after_first_call - graphs
    # Inductor fuses the float ops around the GEMMs (bf16 where the CPU computes in bf16) and, for static scales,
    # the quantization: the same result up to float rounding.
    for got, expected in zip(compiled, eager):
        assert _relative_error(got, expected) < 0.02
    if scheme == "int8_static" and ONEDNN_RUNS:
        assert graphs == 1  # quantization and GEMMs traced: one graph for the whole encoder
        # A new batch size and length runs the same graph: nothing recompiles (SmoothQuant's cached multipliers
        # included).
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == after_first_call
    else:
        assert graphs > 1  # the GEMMs quantize eagerly between compiled parts


def test_every_family_runs_compiled_with_static_smoothquant_layers(family):
    arch, path = family
    model = _quantize(arch, path, "int8_static", {"smoothquant_alpha": 0.5})
    input_ids = torch.randint(4, arch.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(4))
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if arch.is_seq2seq:
        inputs["decoder_input_ids"] = input_ids[:, :9]
    torch._dynamo.reset()
    compiled = copy.deepcopy(model)
    compiled.compile(dynamic=False)
    assert _relative_error(run(compiled, inputs), run(model, inputs)) < 0.03
