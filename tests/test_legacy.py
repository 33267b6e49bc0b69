"""Legacy INC int8 checkpoints: the real old-stack fixtures (../shared/fixtures/legacy_inc), eager checkpoints
written here with torch.ao, conversion to our format, and the refusals."""

import functools
import json
import os
import re
import shutil
import sys
import time
import types
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from conftest import LEGACY_FIXTURES, TINY_ARCHS
from torch import nn
from torch.ao.quantization import (
    default_dynamic_qconfig,
    float_qparams_weight_only_qconfig,
    per_channel_dynamic_qconfig,
    quantize_dynamic,
)
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BartModel, BertForSequenceClassification

from optimum_int8 import (
    INCModel,
    INCModelForCausalLM,
    INCModelForSeq2SeqLM,
    INCModelForSequenceClassification,
    Int8DynamicLinear,
    LegacyCheckpointError,
    convert_legacy_checkpoint,
)
from optimum_int8.cli import main as cli_main
from optimum_int8.configuration import FORMAT_VERSION
from optimum_int8.nn import BFloat16Linear, Int8Embedding, Int8StaticActivationLinear

FIXTURES = {
    "bart_seq2seq_dynamic": INCModelForSeq2SeqLM,
    "bert_seqcls_dynamic": INCModelForSequenceClassification,
    "bert_seqcls_static": INCModelForSequenceClassification,
    "t5_seq2seq_dynamic": INCModelForSeq2SeqLM,
    "bart_seq2seq_dynamic_eager": INCModelForSeq2SeqLM,
}
TASKS = {INCModelForSeq2SeqLM: "text2text-generation", INCModelForSequenceClassification: "text-classification"}
# The eager fixture's reference ran transformers 4.26's eager attention; today's default (sdpa) differs in the
# last bits of the fp32 parts (about 1e-7 relative, as the fp32 model itself does). With eager attention it is exact.
EXACT_KWARGS = {"bart_seq2seq_dynamic_eager": {"attn_implementation": "eager"}}
FP32_FALLBACKS = {"lm_head": "float32", "model.decoder.layers.0.fc2": "float32"}
BF16_TIED = Path(__file__).parent / "fixtures" / "bart_seq2seq_dynamic_tuned_bf16_tied"
PLAIN_FILES = ("config.json", "inc_config.json", "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "vocab.json", "merges.txt", "vocab.txt")


def reference(name: str) -> dict:
    return json.loads((LEGACY_FIXTURES / name / "reference.json").read_text())


def model_inputs(ref: dict) -> dict:
    return {key: torch.tensor(value) for key, value in ref["inputs"].items()}


def today_name(old_name: str) -> str:
    """A module path of the old loaded model without its FX wrapper segments."""
    return re.sub(r"\.module(?=\.|$)", "", old_name)


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def generate(model, ref: dict) -> list:
    inputs = model_inputs(ref)
    return model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                          **ref["generate_kwargs"]).tolist()


def copy_fixture(name: str, destination: Path) -> Path:
    destination.mkdir(parents=True)
    for file in PLAIN_FILES:
        if (LEGACY_FIXTURES / name / file).exists():
            shutil.copyfile(LEGACY_FIXTURES / name / file, destination / file)
    return destination


def read_state_dict(path: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: TypedStorage / quantized tensors are deprecated
        return torch.load(path, weights_only=True)


def rewrite_checkpoint(folder: Path, edit) -> None:
    """Load pytorch_model.bin, let ``edit(state_dict, best_configure)`` change it, save it back the old way."""
    state_dict = read_state_dict(folder / "pytorch_model.bin")
    edit(state_dict, state_dict["best_configure"])
    torch.save(state_dict, folder / "pytorch_model.bin")


@pytest.fixture(scope="module")
def loaded():
    """Every fixture loaded once through its INCModelFor<Task> class, default settings."""
    return {name: cls.from_pretrained(LEGACY_FIXTURES / name) for name, cls in FIXTURES.items()}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_loads_as_plain_transformers_model_with_old_modules_and_manifest(name, loaded):
    ref, model = reference(name), loaded[name]
    assert type(model).__name__ == ref["architecture"]
    kinds = {module_name: type(module) for module_name, module in model.named_modules()}
    dynamic = [today_name(n) for n in ref["dynamic_int8_linear_modules"]]
    static = [today_name(n) for n in ref["static_int8_linear_modules"]]
    assert all(kinds[n] is Int8DynamicLinear for n in dynamic) and all(kinds[n] is Int8StaticActivationLinear for n in static)
    assert all(model.get_submodule(n).requantized for n in static)
    assert sorted(n for n, k in kinds.items() if k in (Int8DynamicLinear, Int8StaticActivationLinear)) == sorted(dynamic + static)
    assert all(type(model.get_submodule(today_name(n))) is Int8Embedding for n in ref["quantized_embedding_modules"])

    manifest = model.config.quantization_config.manifest
    assert sorted(manifest.int8_modules) == sorted(dynamic + static)
    expected = {today_name(n): "float32" for n in ref["fp32_linear_modules"]}
    expected |= {today_name(n): "bfloat16" for n in ref["bf16_linear_modules"]}
    assert manifest.fallback_modules == expected
    assert manifest.created_with["legacy-checkpoint"] == f"neural-compressor {ref['framework']} {ref['approach']}"
    assert sorted(manifest.output_qparams_modules) == sorted(static)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_reproduces_the_old_loaders_outputs(name, loaded):
    ref = reference(name)
    inputs, expected = model_inputs(ref), torch.tensor(ref["int8_loaded"]["logits"])
    got = logits(loaded[name], inputs)
    assert (got - expected).norm() / expected.norm() <= 1e-5
    exact = loaded[name] if name not in EXACT_KWARGS else FIXTURES[name].from_pretrained(
        LEGACY_FIXTURES / name, **EXACT_KWARGS[name]
    )
    assert torch.equal(logits(exact, inputs), expected)
    if "generated_int8_loaded" in ref:
        assert generate(loaded[name], ref) == ref["generated_int8_loaded"]


def test_tokenizer_of_a_fixture_gives_the_reference_inputs():
    ref = reference("t5_seq2seq_dynamic")
    encoded = AutoTokenizer.from_pretrained(LEGACY_FIXTURES / "t5_seq2seq_dynamic")(ref["sentences"], padding=True)
    assert encoded["input_ids"] == ref["inputs"]["input_ids"]


@pytest.mark.parametrize("name", ["bart_seq2seq_dynamic", "bert_seqcls_dynamic", "t5_seq2seq_dynamic", "bart_seq2seq_dynamic_eager"])
def test_converted_checkpoint_computes_bit_for_bit_what_the_legacy_one_does(name, loaded, tmp_path):
    cls, ref = FIXTURES[name], reference(name)
    out = convert_legacy_checkpoint(LEGACY_FIXTURES / name, tmp_path / "converted", task=TASKS[cls])
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    assert "Linear modules kept in" in (out / "README.md").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "optimum_int8" and "int8" not in str(config.get("dtype"))
    converted = cls.from_pretrained(out)
    inputs = model_inputs(ref)
    assert torch.equal(logits(converted, inputs), logits(loaded[name], inputs))
    assert converted.config.quantization_config.manifest.fallback_modules == (
        loaded[name].config.quantization_config.manifest.fallback_modules
    )
    assert AutoTokenizer.from_pretrained(out)(ref["sentences"], padding=True)["input_ids"] == ref["inputs"]["input_ids"]
    if "generated_int8_loaded" in ref:
        assert (out / "generation_config.json").is_file()
        assert generate(converted, ref) == ref["generated_int8_loaded"]


def test_generation_parameters_left_in_config_json_are_kept(tmp_path):
    """Old summarization checkpoints keep num_beams, max_length, ... in config.json (no generation_config.json)."""
    folder = copy_fixture("bart_seq2seq_dynamic", tmp_path / "legacy")
    summarization = {"num_beams": 4, "max_length": 142, "min_length": 56, "no_repeat_ngram_size": 3, "length_penalty": 2.0}
    config = json.loads((folder / "config.json").read_text()) | summarization
    (folder / "config.json").write_text(json.dumps(config))
    model = INCModelForSeq2SeqLM.from_pretrained(folder)
    assert {key: getattr(model.generation_config, key) for key in summarization} == summarization
    out = convert_legacy_checkpoint(folder, tmp_path / "converted", task="text2text-generation")
    assert json.loads((out / "generation_config.json").read_text()).items() >= summarization.items()


def test_save_pretrained_of_a_legacy_model_writes_our_format(loaded, tmp_path):
    legacy = loaded["bart_seq2seq_dynamic_eager"]
    legacy.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "pytorch_model.bin").exists()
    reloaded = INCModelForSeq2SeqLM.from_pretrained(tmp_path / "saved")
    inputs = model_inputs(reference("bart_seq2seq_dynamic_eager"))
    assert torch.equal(logits(reloaded, inputs), logits(legacy, inputs))


def test_static_checkpoint_converts_to_int8_static_computing_bit_for_bit_what_the_legacy_one_does(loaded, tmp_path):
    source, legacy, ref = LEGACY_FIXTURES / "bert_seqcls_static", loaded["bert_seqcls_static"], reference("bert_seqcls_static")
    inputs, expected = model_inputs(ref), torch.tensor(ref["int8_loaded"]["logits"])
    out = convert_legacy_checkpoint(source, tmp_path / "converted", task="text-classification")
    stored = json.loads((out / "config.json").read_text())["quantization_config"]
    static = [today_name(n) for n in ref["static_int8_linear_modules"]]
    assert stored["scheme"] == "int8_static" and stored["kernel"] == "fbgemm" and stored["format_version"] == FORMAT_VERSION
    assert sorted(stored["manifest"]["output_qparams_modules"]) == sorted(static) == sorted(stored["manifest"]["int8_modules"])
    name = "bert.encoder.layer.0.intermediate.dense"
    with safe_open(out / "model.safetensors", framework="pt") as handle:
        assert {key.rpartition(".")[2] for key in handle.keys() if key.startswith(name + ".")} == {
            "weight_int8", "weight_scale", "bias", "input_scale", "input_zero_point", "output_scale", "output_zero_point"}

    converted = INCModelForSequenceClassification.from_pretrained(out)
    assert type(converted.get_submodule(name)) is Int8StaticActivationLinear and converted.get_submodule(name).requantized
    assert torch.equal(logits(converted, inputs), logits(legacy, inputs))
    assert torch.equal(logits(converted, inputs), expected)
    plain = AutoModelForSequenceClassification.from_pretrained(out)
    assert torch.equal(logits(plain, inputs), expected)

    converted.save_pretrained(tmp_path / "resaved")
    with safe_open(out / "model.safetensors", framework="pt") as first, \
            safe_open(tmp_path / "resaved" / "model.safetensors", framework="pt") as second:
        assert set(first.keys()) == set(second.keys())
        assert all(torch.equal(first.get_tensor(key), second.get_tensor(key)) for key in first.keys())
    resaved = INCModelForSequenceClassification.from_pretrained(tmp_path / "resaved")
    assert torch.equal(logits(resaved, inputs), expected)
    assert resaved.config.quantization_config.manifest.output_qparams_modules == (
        converted.config.quantization_config.manifest.output_qparams_modules
    )

    legacy.save_pretrained(tmp_path / "legacy_saved")
    assert torch.equal(logits(INCModelForSequenceClassification.from_pretrained(tmp_path / "legacy_saved"), inputs), expected)


def test_static_checkpoint_converts_to_dynamic_int8_when_asked_and_keeps_its_int8_weights(loaded, tmp_path):
    source, legacy = LEGACY_FIXTURES / "bert_seqcls_static", loaded["bert_seqcls_static"]
    out = convert_legacy_checkpoint(source, tmp_path / "dynamic", task="text-classification", static_as_dynamic=True)
    converted = INCModelForSequenceClassification.from_pretrained(out)
    name = "bert.encoder.layer.0.intermediate.dense"
    static_weights = legacy.get_submodule(name).packed_state()
    dynamic = converted.get_submodule(name)
    assert type(dynamic) is Int8DynamicLinear
    assert torch.equal(dynamic.dequantized_weight(), static_weights["weight_int8"].float() * static_weights["weight_scale"][:, None])
    config = converted.config.quantization_config
    assert config.scheme == "int8_dynamic" and config.manifest.output_qparams_modules == []
    assert config.manifest.module_schemes == {}
    assert config.manifest.created_with["legacy-static-as-dynamic"] == "14 modules"
    ref = reference("bert_seqcls_static")
    expected = torch.tensor(ref["int8_loaded"]["logits"])
    assert (logits(converted, model_inputs(ref)) - expected).norm() / expected.norm() < 0.2


def _bf16_fallback_checkpoint(folder: Path) -> None:
    """bart_seq2seq_dynamic as INC writes it when tuning falls lm_head back to bf16 (CPUs with avx512_bf16)."""

    def edit(state_dict, best_configure):
        weight = state_dict.pop("lm_head.module.weight").to(torch.bfloat16)
        state_dict["lm_head.weight"] = weight
        state_dict["lm_head.module.weight"] = weight  # stale copies kept by the wrappers
        state_dict["lm_head.module.module.module.weight"] = weight  # BF16ModuleWrapper(GraphModule(BF16ModuleWrapper(Linear)))
        best_configure["op"][("lm_head.module", "Linear")] = {
            "weight": {"dtype": "bf16"}, "activation": {"dtype": "bf16", "quant_mode": ("bf16",)}}
        best_configure["bf16_ops_list"] = [("lm_head.module", "Linear")]

    rewrite_checkpoint(folder, edit)


class _OldBF16Wrapper(nn.Module):
    """What neural-compressor's BF16ModuleWrapper computed around a bf16 Linear."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.module = nn.Linear(linear.in_features, linear.out_features, bias=False, dtype=torch.bfloat16)
        self.module.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16))

    def forward(self, x):
        return self.module(x.to(torch.bfloat16)).float()


def test_bf16_fallback_loads_as_bfloat16_linear_and_converts(loaded, tmp_path):
    folder = copy_fixture("bart_seq2seq_dynamic", tmp_path / "bf16")
    _bf16_fallback_checkpoint(folder)
    model = INCModelForSeq2SeqLM.from_pretrained(folder)
    assert type(model.lm_head) is BFloat16Linear
    assert model.config.quantization_config.manifest.fallback_modules == {**FP32_FALLBACKS, "lm_head": "bfloat16"}
    assert model.config.quantization_config.modules_in_bf16 == ["lm_head"]

    old = INCModelForSeq2SeqLM.from_pretrained(LEGACY_FIXTURES / "bart_seq2seq_dynamic")
    old.lm_head = _OldBF16Wrapper(old.lm_head)
    inputs = model_inputs(reference("bart_seq2seq_dynamic"))
    assert torch.equal(logits(model, inputs), logits(old, inputs))

    converted = INCModelForSeq2SeqLM.from_pretrained(convert_legacy_checkpoint(folder, tmp_path / "out", task="text2text-generation"))
    assert type(converted.lm_head) is BFloat16Linear
    assert torch.equal(logits(converted, inputs), logits(model, inputs))


FP32_OP = {"weight": {"dtype": "fp32"}, "activation": {"dtype": "fp32", "quant_mode": "fp32"}}
DYNAMIC_ACTIVATION = {"dtype": "uint8", "quant_mode": "dynamic", "scheme": "asym", "algorithm": "minmax", "granularity": "per_tensor"}
UINT8_EMBEDDING_OP = {"weight": {"dtype": "uint8", "scheme": "asym_float", "algorithm": "minmax", "granularity": "per_channel"},
                      "activation": {"dtype": "fp32", "quant_mode": "dynamic", "algorithm": "placeholder"}}


def _save_eager_checkpoint(folder: Path, fp32, qconfigs: dict, fp32_ops=()):
    """``fp32`` quantized with torch.ao's eager dynamic quantization (``qconfigs``: module name -> qconfig) and
    saved as optimum-intel 1.3-1.5 did: state dict + best_configure in pytorch_model.bin, config.json with
    torch_dtype int8 and framework pytorch. Returns the quantized model, the old runtime's reference."""
    ops = {(name, "Linear"): FP32_OP for name in fp32_ops}
    for name, qconfig in qconfigs.items():
        if isinstance(fp32.get_submodule(name), nn.Embedding):
            ops[(name, "Embedding")] = UINT8_EMBEDDING_OP
        else:
            granularity = "per_tensor" if qconfig is default_dynamic_qconfig else "per_channel"
            ops[(name, "Linear")] = {"weight": {"dtype": "int8", "scheme": "sym", "algorithm": "minmax",
                                                "granularity": granularity}, "activation": DYNAMIC_ACTIVATION}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = quantize_dynamic(fp32, qconfigs)
    state_dict = qmodel.state_dict()
    state_dict["best_configure"] = {"op": ops, "calib_sampling_size": 100, "calib_iteration": 1, "advance": None,
                                    "approach": "post_training_dynamic_quant", "framework": "pytorch", "bf16_ops_list": []}
    folder.mkdir()
    torch.save(state_dict, folder / "pytorch_model.bin")
    config = fp32.config.to_dict() | {"torch_dtype": "int8", "framework": "pytorch"}
    (folder / "config.json").write_text(json.dumps(config))
    return qmodel


def _write_eager_checkpoint(folder: Path):
    """A tiny BART in the eager layout, lm_head and one fc2 kept fp32; fc1 layers get per-tensor weights
    (torch.ao's default), the other Linear modules per-channel ones (INC's)."""
    bart = TINY_ARCHS["bart"]
    fp32 = bart.build(seed=3)
    linears = [name for name, module in fp32.named_modules() if type(module) is nn.Linear and name not in FP32_FALLBACKS]
    qconfigs = {name: default_dynamic_qconfig if name.endswith("fc1") else per_channel_dynamic_qconfig for name in linears}
    return _save_eager_checkpoint(folder, fp32, qconfigs, fp32_ops=FP32_FALLBACKS), bart.inputs()


def test_eager_checkpoint_written_with_torch_ao_loads_exactly(tmp_path):
    qmodel, inputs = _write_eager_checkpoint(tmp_path / "eager")
    model = INCModelForSeq2SeqLM.from_pretrained(tmp_path / "eager")
    assert torch.equal(logits(model, inputs), logits(qmodel, inputs))
    assert type(model.model.encoder.layers[0].fc1) is Int8DynamicLinear
    assert model.config.quantization_config.manifest.fallback_modules == FP32_FALLBACKS


def test_eager_gpt2_with_quantized_embeddings_and_tied_int8_lm_head(tmp_path):
    """Any architecture whose modules best_configure names: GPT-2's Conv1D layers stay float (fallbacks),
    its lm_head (tied to wte) is int8 and wte/wpe are uint8 embeddings."""
    gpt2 = TINY_ARCHS["gpt2"]
    qconfigs = {"lm_head": per_channel_dynamic_qconfig, "transformer.wte": float_qparams_weight_only_qconfig,
                "transformer.wpe": float_qparams_weight_only_qconfig}
    qmodel = _save_eager_checkpoint(tmp_path / "gpt2", gpt2.build(seed=4), qconfigs)
    model = INCModelForCausalLM.from_pretrained(tmp_path / "gpt2")
    inputs = gpt2.inputs()
    assert torch.equal(logits(model, inputs), logits(qmodel, inputs))
    prompt = {"input_ids": inputs["input_ids"][:, :5], "attention_mask": inputs["attention_mask"][:, :5]}
    assert torch.equal(model.generate(**prompt, max_new_tokens=4, do_sample=False),
                       qmodel.generate(**prompt, max_new_tokens=4, do_sample=False))
    assert type(model.transformer.wte) is Int8Embedding and type(model.lm_head) is Int8DynamicLinear
    manifest = model.config.quantization_config.manifest
    assert manifest.int8_modules == ["lm_head"] and set(manifest.fallback_modules.values()) == {"float32"}
    assert "transformer.h.0.attn.c_attn" in manifest.fallback_modules


def test_state_dict_without_torch_module_versions_warns_that_activations_were_8_bit(tmp_path):
    """torch.ao's dynamic Linear ran 7-bit activations only for state dicts saved with module version >= 4."""
    _write_eager_checkpoint(tmp_path / "eager")
    state_dict = dict(read_state_dict(tmp_path / "eager" / "pytorch_model.bin"))  # drops _metadata
    torch.save(state_dict, tmp_path / "eager" / "pytorch_model.bin")
    with pytest.warns(UserWarning, match="quantized their activations to 8 bits"):
        INCModelForSeq2SeqLM.from_pretrained(tmp_path / "eager")


def test_best_configure_from_yaml_beside_the_weights(tmp_path):
    """optimum-intel 1.2 wrote best_configure.yaml next to the state dict instead of inside it."""
    qmodel, inputs = _write_eager_checkpoint(tmp_path / "eager")
    rewrite_checkpoint(tmp_path / "eager", lambda state_dict, best: (tmp_path / "eager" / "best_configure.yaml").write_text(
        yaml.dump(state_dict.pop("best_configure"))))
    assert "!!python/tuple" in (tmp_path / "eager" / "best_configure.yaml").read_text()
    model = INCModelForSeq2SeqLM.from_pretrained(tmp_path / "eager")
    assert torch.equal(logits(model, inputs), logits(qmodel, inputs))


def test_neural_compressor_1x_dotdict_best_configure_is_refused_with_the_reason(tmp_path, monkeypatch):
    """INC 1.x pickled best_configure as neural_compressor.conf.dotdict.DotDict; weights_only=True cannot rebuild it."""
    _write_eager_checkpoint(tmp_path / "eager")

    class DotDict(dict):
        def __getstate__(self):
            return self.__dict__

    module = types.ModuleType("neural_compressor.conf.dotdict")
    DotDict.__module__, DotDict.__qualname__, module.DotDict = module.__name__, "DotDict", DotDict
    monkeypatch.setitem(sys.modules, module.__name__, module)
    rewrite_checkpoint(tmp_path / "eager", lambda state_dict, best: state_dict.update(best_configure=DotDict(best)))
    monkeypatch.delitem(sys.modules, module.__name__)
    with pytest.raises(LegacyCheckpointError, match=r"GLOBAL neural_compressor\.conf\.dotdict\.DotDict; neural-compressor 1\.x"):
        INCModelForSeq2SeqLM.from_pretrained(tmp_path / "eager")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_needs_code_is_refused_and_nothing_runs(tmp_path):
    folder = copy_fixture("bert_seqcls_dynamic", tmp_path / "evil")
    rewrite_checkpoint(folder, lambda state_dict, best: state_dict.update(extra=_Payload(tmp_path / "pwned")))
    with pytest.raises(LegacyCheckpointError, match=r"refusing to unpickle.*GLOBAL posix.system.*\). Nothing from the file was run"):
        INCModelForSequenceClassification.from_pretrained(folder)
    assert not (tmp_path / "pwned").exists()


def test_a_torchscript_checkpoint_is_refused(tmp_path):
    """neural-compressor's IPEX backend saved a TorchScript program as pytorch_model.bin."""
    folder = copy_fixture("bert_seqcls_dynamic", tmp_path / "ipex")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; old IPEX files still exist
        torch.jit.save(torch.jit.script(nn.Linear(2, 2)), folder / "pytorch_model.bin")
    with pytest.raises(LegacyCheckpointError, match="TorchScript archive"):
        INCModelForSequenceClassification.from_pretrained(folder)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd, best: best.update(approach="quant_aware_training"), "approach is 'quant_aware_training'"),
        (lambda sd, best: best.update(framework="pytorch_ipex"), "framework is 'pytorch_ipex'"),
        (lambda sd, best: best["op"].update({("bert.pooler.dense", "Conv1d"): {"weight": {"dtype": "int8"}}}),
         "op 'bert.pooler.dense' of type 'Conv1d'"),
        (lambda sd, best: best["op"].update({("bert.pooler.gone", "Linear"): {"weight": {"dtype": "int8"}}}),
         "op 'bert.pooler.gone' \\(Linear\\), which is not a module"),
        (lambda sd, best: sd.pop("bert.encoder.layer.1.output.LayerNorm.weight"), "lacks 1 tensor"),
        (lambda sd, best: sd.pop("classifier.module._packed_params._packed_params"), "no key ends in '_packed_params._packed_params'"),
    ],
    ids=["approach", "framework", "op-type", "unknown-module", "missing-tensor", "missing-int8-weight"],
)
def test_what_cannot_be_rebuilt_raises_naming_it(tmp_path, edit, message):
    folder = copy_fixture("bert_seqcls_dynamic", tmp_path / "edited")
    rewrite_checkpoint(folder, edit)
    with pytest.raises(LegacyCheckpointError, match=message):
        INCModelForSequenceClassification.from_pretrained(folder)


def test_loads_by_repo_id_from_the_hub_cache(loaded, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--Intel--bert-int8-legacy"
    copy_fixture("bert_seqcls_dynamic", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = INCModelForSequenceClassification.from_pretrained(
        "Intel/bert-int8-legacy", cache_dir=tmp_path / "cache", local_files_only=True
    )
    inputs = model_inputs(reference("bert_seqcls_dynamic"))
    assert torch.equal(logits(model, inputs), logits(loaded["bert_seqcls_dynamic"], inputs))


def test_task_checkpoint_loads_into_its_base_model(loaded):
    base = INCModel.from_pretrained(LEGACY_FIXTURES / "bart_seq2seq_dynamic")
    assert isinstance(base, BartModel) and type(base.encoder.layers[0].fc1) is Int8DynamicLinear
    assert base.config.quantization_config.manifest.fallback_modules == {"decoder.layers.0.fc2": "float32"}
    inputs = model_inputs(reference("bart_seq2seq_dynamic"))
    with torch.no_grad():
        assert torch.equal(base(**inputs).last_hidden_state, loaded["bart_seq2seq_dynamic"].model(**inputs).last_hidden_state)


def test_cli_converts_and_reports_errors(tmp_path, capsys):
    source = LEGACY_FIXTURES / "bart_seq2seq_dynamic"
    assert cli_main(["convert", str(source), str(tmp_path / "cli"), "--task", "text2text-generation"]) == 0
    assert "31 int8 Linear modules; kept in float: lm_head (float32), model.decoder.layers.0.fc2 (float32)" in capsys.readouterr().out
    assert cli_main(["convert", str(source), str(tmp_path / "cli"), "--task", "text2text-generation"]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert cli_main(["convert", str(source), str(tmp_path / "no-task")]) == 2
    assert "names no architecture" in capsys.readouterr().err
    assert cli_main(["convert", str(tmp_path / "cli"), str(tmp_path / "again")]) == 2
    assert "is not a legacy INC int8 checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli"]


def test_cli_converts_a_static_checkpoint_as_static_unless_asked_for_dynamic(tmp_path, capsys):
    source = LEGACY_FIXTURES / "bert_seqcls_static"
    assert cli_main(["convert", str(source), str(tmp_path / "static"), "--task", "text-classification"]) == 0
    assert "14 int8 Linear modules (14 static, with calibrated input and output qparams)" in capsys.readouterr().out
    assert cli_main(["convert", str(source), str(tmp_path / "dynamic"), "--task", "text-classification",
                     "--static-as-dynamic"]) == 0
    assert "14 int8 Linear modules; kept in float" in capsys.readouterr().out
    stored = json.loads((tmp_path / "dynamic" / "config.json").read_text())["quantization_config"]
    assert stored["scheme"] == "int8_dynamic" and "output_qparams_modules" not in stored["manifest"]


def test_a_static_scale_float32_cannot_hold_is_refused(tmp_path):
    folder = copy_fixture("bert_seqcls_static", tmp_path / "legacy")
    key = "bert.encoder.layer.0.attention.self.query.module.scale"
    rewrite_checkpoint(folder, lambda state_dict, _: state_dict.update({key: torch.tensor(0.1, dtype=torch.float64)}))
    with pytest.raises(LegacyCheckpointError, match="'bert.encoder.layer.0.attention.self.query' has output scale 0.1, "
                                                    "which float32 cannot hold"):
        INCModelForSequenceClassification.from_pretrained(folder)


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    def fail(self, *args, **kwargs):
        (Path(args[0]) / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(BertForSequenceClassification, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        convert_legacy_checkpoint(LEGACY_FIXTURES / "bert_seqcls_dynamic", tmp_path / "out", task="text-classification")
    assert list(tmp_path.iterdir()) == []


def _laughs(levels: int):
    """A structure of 2**levels leaves in ``levels`` shared lists: tiny as a pickle, huge when expanded."""
    node = ["lol"]
    for _ in range(levels):
        node = [node, node]
    return node


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd, best: best.update(laughs=_laughs(25)), r"best_configure holds more than 1000000 entries"),
        (lambda sd, best: best["op"].update({("bert.pooler.dense", "Linear"): {"weight": _laughs(25)}}),
         r"best_configure holds more than 1000000 entries"),
        (lambda sd, best: best.update(deep=functools.reduce(lambda inner, _: [inner], range(5000), [])), "nests deeper than 32 levels"),
        (lambda sd, best: best.update(op=dict(best["op"], **{"pooler": {}})), r"\['op'\] keys must be \(name, type\) pairs of strings, got 'pooler'"),
        (lambda sd, best: best["op"].update({("bert.pooler.dense", "Linear"): ["int8"]}), r"\['op'\]\[\('bert.pooler.dense', 'Linear'\)\] must be a dict, got a list"),
        (lambda sd, best: best["op"][("bert.pooler.dense", "Linear")].update(weight=["int8"]), r"\['weight'\] must be a dict, got a list"),
        (lambda sd, best: best["op"][("bert.pooler.dense", "Linear")]["weight"].update(dtype={"int8": 1}), r"\['dtype'\] must be a string or a list of strings, got a dict"),
        (lambda sd, best: best.update(approach=["post_training_dynamic_quant"]), r"\['approach'\] must be a string, got a list"),
        (lambda sd, best: best.update(fx_sub_module_list="bert"), r"\['fx_sub_module_list'\] must be a list of module names"),
        (lambda sd, best: best.update(bf16_ops_list=[3]), r"\['bf16_ops_list'\] must be a list of \(name, type\) pairs, got a list"),
        (lambda sd, best: sd.update({"bert.pooler.dense.module.scale": _laughs(30)}), r"state dict entry 'bert.pooler.dense.module.scale' is a list, not a tensor"),
    ],
    ids=["billion-laughs", "billion-laughs-in-op", "deep", "op-key", "op-list", "weight-list", "dtype-dict", "approach-list",
         "modules-string", "bf16-entries", "state-dict-laughs"],
)
def test_hostile_best_configure_is_refused_in_bounded_time_naming_the_file(tmp_path, edit, message):
    folder = copy_fixture("bert_seqcls_dynamic", tmp_path / "edited")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))  # torch.save pickles recursively
    try:
        rewrite_checkpoint(folder, edit)
    finally:
        sys.setrecursionlimit(limit)
    assert (folder / "pytorch_model.bin").stat().st_size < 1_000_000
    start = time.monotonic()
    with pytest.raises(LegacyCheckpointError, match=r"pytorch_model.bin: .*" + message) as error:
        INCModelForSequenceClassification.from_pretrained(folder)
    assert time.monotonic() - start < 20 and len(str(error.value)) < 400


@pytest.mark.parametrize("kind", ["laughs", "deep"])
def test_hostile_best_configure_yaml_is_refused_in_bounded_time(tmp_path, kind):
    qmodel, _ = _write_eager_checkpoint(tmp_path / "eager")
    rewrite_checkpoint(tmp_path / "eager", lambda state_dict, best: state_dict.pop("best_configure"))
    if kind == "laughs":
        lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
        document, message = "\n".join(lines + ["op: {}", "approach: post_training_dynamic_quant"]), "holds more than 1000000 entries"
    else:
        document, message = "op: " + "[" * 50_000 + "]" * 50_000, "nests deeper than a yaml parser allows"
    (tmp_path / "eager" / "best_configure.yaml").write_text(document)
    start = time.monotonic()
    with pytest.raises(LegacyCheckpointError, match=r"best_configure.yaml.*" + message):
        INCModelForSeq2SeqLM.from_pretrained(tmp_path / "eager")
    assert time.monotonic() - start < 20


def test_convert_never_copies_a_tokenizer_file_linking_outside_the_checkpoint(tmp_path):
    folder = copy_fixture("bert_seqcls_dynamic", tmp_path / "legacy")
    (tmp_path / "secret.json").write_text('{"token": "hf_secret"}')
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").symlink_to(tmp_path / "secret.json")
    with pytest.raises(LegacyCheckpointError, match=r"tokenizer.json links outside .*legacy .*refusing to copy it"):
        convert_legacy_checkpoint(folder, tmp_path / "out", task="text-classification")
    assert not (tmp_path / "out").exists()


def test_bf16_lm_head_tied_to_the_shared_embedding_loads_and_matches_the_old_stack(tmp_path):
    """Written by the old stack (tests/fixtures/README.md): its tuning fell 7 modules back to bf16, lm_head
    among them, so the pickle holds model.shared.weight (and its tied copies) in bf16, unlisted in best_configure."""
    ref = json.loads((BF16_TIED / "reference.json").read_text())
    state_dict = read_state_dict(BF16_TIED / "pytorch_model.bin")
    shared = state_dict["model.shared.weight"]
    assert shared.dtype == torch.bfloat16 and not any("shared" in name for name, _ in state_dict["best_configure"]["op"])
    model = INCModelForSeq2SeqLM.from_pretrained(BF16_TIED)
    bf16 = sorted(today_name(name) for name in ref["bf16_linear_modules"])
    assert "lm_head" in bf16 and len(bf16) == 7
    assert sorted(name for name, module in model.named_modules() if type(module) is BFloat16Linear) == bf16
    assert model.config.quantization_config.manifest.fallback_modules == dict.fromkeys(bf16, "bfloat16")
    assert torch.equal(model.get_input_embeddings().weight.float(), shared.float())

    tokenizer = AutoTokenizer.from_pretrained(BF16_TIED)
    assert tokenizer(ref["sentences"], padding=True)["input_ids"] == ref["inputs"]["input_ids"]
    inputs, expected = model_inputs(ref), torch.tensor(ref["int8_loaded"]["logits"])
    assert torch.equal(logits(model, inputs), expected)
    assert generate(model, ref) == ref["generated_int8_loaded"]
    converted = INCModelForSeq2SeqLM.from_pretrained(
        convert_legacy_checkpoint(BF16_TIED, tmp_path / "out", task="text2text-generation"))
    assert type(converted.lm_head) is BFloat16Linear
    assert torch.equal(logits(converted, inputs), expected)
