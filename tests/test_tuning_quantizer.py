"""End-to-end tuning runs with neural-compressor's autotune on tiny seeded models."""

import re
import warnings

import datasets
import pytest
import torch
from neural_compressor.torch.quantization import autotune as nc_autotune
from neural_compressor.torch.utils.utility import algos_mapping

import optimum_int8.tuning.driver as driver_module
import optimum_int8.tuning.quantizer as quantizer_module
from conftest import TINY_ARCHS
from optimum_int8 import INCModelForSequenceClassification, Int8Config, Int8DynamicLinear
from optimum_int8.linear_modules import find_float_linears
from optimum_int8.tuning import EvalFnFailedWarning, INCQuantizer, ToleranceNotMetWarning, TuningConfig, evaluation_budget
from optimum_int8.tuning.scheme import ALGO_NAME
from word_tokenizer import word_tokenizer

DEAD_CHANNEL = 5
SENSITIVE = (
    "bert.encoder.layer.0.intermediate.dense",
    "bert.encoder.layer.1.attention.self.value",
    "bert.encoder.layer.1.intermediate.dense",
)


def sensitive_bert():
    """A tiny BERT where exactly ``SENSITIVE`` are wrecked by per-channel int8.

    Channel ``DEAD_CHANNEL`` is zeroed by every LayerNorm, so every Linear reading the residual stream
    sees 0 there. The sensitive modules get a huge weight in that input column: harmless in fp32 (it
    multiplies 0) but it sets each row's int8 scale, so all their real weights round to 0. Their real
    weights are scaled up so that what they compute dominates the output.
    """
    model = TINY_ARCHS["bert"].build()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight[DEAD_CHANNEL] = 0
                module.bias[DEAD_CHANNEL] = 0
        for name in SENSITIVE:
            weight = model.get_submodule(name).weight
            weight *= 20
            weight[:, DEAD_CHANNEL] = 1e4
    return model


def calibration_inputs():
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(4, 99, (8, 12), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits.flatten()


class Fidelity:
    """Cosine similarity of the logits to the fp32 model's (higher is better, fp32 = 1)."""

    def __init__(self, model, inputs):
        self.inputs, self.reference = inputs, logits(model, inputs)
        self.__name__ = "logit_cosine"

    def __call__(self, model) -> float:
        return float(torch.nn.functional.cosine_similarity(logits(model, self.inputs), self.reference, dim=0))


class LogitError(Fidelity):
    """Relative squared error of the logits against fp32 (lower is better, fp32 = 0)."""

    def __call__(self, model) -> float:
        out = logits(model, self.inputs)
        return float((out - self.reference).pow(2).sum() / self.reference.pow(2).sum())


@pytest.fixture
def counted(monkeypatch):
    """Count autotune calls and our registered algorithm's applications."""
    calls = {"autotune": 0, "algorithm": 0}
    algorithm = algos_mapping[ALGO_NAME]

    def autotune(*args, **kwargs):
        calls["autotune"] += 1
        return nc_autotune(*args, **kwargs)

    def counted_algorithm(*args, **kwargs):
        calls["algorithm"] += 1
        return algorithm(*args, **kwargs)

    monkeypatch.setattr(driver_module.nc_quantization, "autotune", autotune)
    monkeypatch.setitem(algos_mapping, ALGO_NAME, counted_algorithm)
    return calls


def tune(model, eval_fn, **tuning_kwargs):
    tuning_kwargs.setdefault("fallback_dtype", "float32")
    return INCQuantizer(model).quantize(
        tuning=TuningConfig(**tuning_kwargs), eval_fn=eval_fn, calibration_dataset=[calibration_inputs()], show_progress=False
    )


def test_keeps_exactly_the_sensitive_modules_in_fp32_within_the_budget(counted):
    model = sensitive_bert()
    qmodel = tune(model, Fidelity(model, calibration_inputs()), tolerable_loss=0.01)
    manifest = qmodel.config.quantization_config.manifest
    assert manifest.fallback_modules == dict.fromkeys(SENSITIVE, "float32")
    record = manifest.tuning
    num_linear = len(find_float_linears(model))
    assert record.tolerance_met and record.stop_reason == "search complete"
    assert record.trials <= evaluation_budget(num_linear) and record.evaluations == record.trials + 1
    assert record.trials < num_linear  # a linear walk would need one trial per module
    assert record.relative_loss == pytest.approx((record.fp32_value - record.int8_value) / record.fp32_value)
    assert record.relative_loss <= 0.01
    assert [t["fallbacks"] for t in record.trial_results][0] == 0
    assert all(t["passed"] == (t["loss"] <= 0.01) for t in record.trial_results)
    assert record.library_versions["neural-compressor"].startswith("3.")
    # autotune drove every trial through our registered algorithm, and the fp32 model is untouched.
    assert counted["autotune"] >= 1 and counted["algorithm"] >= record.trials
    assert not any(isinstance(m, Int8DynamicLinear) for m in model.modules())


def test_absolute_tolerance_on_a_lower_is_better_metric(counted):
    model = sensitive_bert()
    error = LogitError(model, calibration_inputs())
    qmodel = tune(model, error, tolerable_loss=0.01, tolerance_mode="absolute", higher_is_better=False)
    manifest = qmodel.config.quantization_config.manifest
    assert manifest.fallback_modules == dict.fromkeys(SENSITIVE, "float32")
    record = manifest.tuning
    assert not record.higher_is_better and record.tolerance_mode == "absolute"
    assert record.fp32_value == 0.0 and record.relative_loss is None
    assert 0 < record.int8_value <= 0.01 and record.int8_value == pytest.approx(error(qmodel))
    assert all(t["loss"] == pytest.approx(t["value"]) for t in record.trial_results)


def test_relative_tolerance_on_a_zero_baseline_is_refused():
    model = sensitive_bert()
    with pytest.raises(ValueError, match="tolerance_mode='absolute'"):
        tune(model, LogitError(model, calibration_inputs()), higher_is_better=False)


def test_missed_tolerance_returns_the_best_model_with_a_warning_and_a_record(tmp_path):
    model = sensitive_bert()
    fidelity = Fidelity(model, calibration_inputs())
    with pytest.warns(ToleranceNotMetWarning, match="max_trials"):
        qmodel = INCQuantizer(model, tokenizer=word_tokenizer()).quantize(
            tuning=TuningConfig(tolerable_loss=0.01, max_trials=1, fallback_dtype="float32"), eval_fn=fidelity,
            calibration_dataset=[calibration_inputs()], save_directory=tmp_path / "best", show_progress=False,
        )
    record = qmodel.config.quantization_config.manifest.tuning
    assert record.trials == 1 and not record.tolerance_met and record.stop_reason == "max_trials"
    best = max(record.trial_results, key=lambda t: t["value"])
    assert record.int8_value == best["value"] == pytest.approx(fidelity(qmodel))
    assert len(qmodel.config.quantization_config.manifest.fallback_modules) == best["fallbacks"]
    reloaded = INCModelForSequenceClassification.from_pretrained(tmp_path / "best")
    assert reloaded.config.quantization_config.manifest.tuning.tolerance_met is False
    assert (tmp_path / "best" / "tokenizer.json").is_file()
    torch.testing.assert_close(logits(reloaded, calibration_inputs()), logits(qmodel, calibration_inputs()))


def test_a_pass_found_before_max_trials_is_kept_without_warning():
    model = sensitive_bert()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ToleranceNotMetWarning)
        qmodel = tune(model, Fidelity(model, calibration_inputs()), tolerable_loss=0.01, max_trials=2)
    record = qmodel.config.quantization_config.manifest.tuning
    assert record.tolerance_met and record.stop_reason == "max_trials"
    assert len(qmodel.config.quantization_config.manifest.fallback_modules) == record.trial_results[1]["fallbacks"]


def test_timeout_stops_between_trials_with_the_best_so_far():
    model = sensitive_bert()
    with pytest.warns(ToleranceNotMetWarning, match="timeout"):
        qmodel = tune(model, Fidelity(model, calibration_inputs()), tolerable_loss=0.01, timeout=1e-6)
    record = qmodel.config.quantization_config.manifest.tuning
    assert record.trials == 1 and record.stop_reason == "timeout" and record.evaluations == 2


def test_unreachable_tolerance_is_reported():
    model = sensitive_bert()
    fidelity = Fidelity(model, calibration_inputs())
    with pytest.warns(ToleranceNotMetWarning, match="tolerance unreachable"):
        qmodel = tune(model, lambda m: fidelity(m) - 1.0 if any(isinstance(x, Int8DynamicLinear) for x in m.modules()) else 1.0,
                      tolerable_loss=0.01)
    record = qmodel.config.quantization_config.manifest.tuning
    assert not record.tolerance_met and record.stop_reason == "tolerance unreachable"
    assert record.trials <= evaluation_budget(len(find_float_linears(model)))


def test_bf16_fallbacks_when_asked_and_auto_confirmation_on_a_bf16_cpu(monkeypatch):
    model = sensitive_bert()
    fidelity = Fidelity(model, calibration_inputs())
    forced = tune(model, fidelity, tolerable_loss=0.01, fallback_dtype="bfloat16")
    manifest = forced.config.quantization_config.manifest
    assert manifest.fallback_modules == dict.fromkeys(SENSITIVE, "bfloat16")
    assert manifest.tuning.fallback_dtype == "bfloat16"
    assert {t["fallback_dtype"] for t in manifest.tuning.trial_results} == {"bfloat16"}

    monkeypatch.setattr(quantizer_module, "cpu_has_native_bf16", lambda: True)
    auto = tune(model, fidelity, tolerable_loss=0.01, fallback_dtype="auto")
    trials = auto.config.quantization_config.manifest.tuning.trial_results
    assert trials[-1]["fallback_dtype"] == "bfloat16" and trials[-1]["fallbacks"] == len(SENSITIVE)
    chosen = "bfloat16" if trials[-1]["passed"] else "float32"
    assert auto.config.quantization_config.manifest.fallback_modules == dict.fromkeys(SENSITIVE, chosen)

    monkeypatch.setattr(quantizer_module, "cpu_has_native_bf16", lambda: False)
    plain = tune(model, fidelity, tolerable_loss=0.01, fallback_dtype="auto")
    assert {t["fallback_dtype"] for t in plain.config.quantization_config.manifest.tuning.trial_results} == {"float32"}


def test_user_fallbacks_stay_in_every_trial_and_are_not_tuned():
    model = sensitive_bert()
    qmodel = INCQuantizer(model).quantize(
        Int8Config(modules_in_fp32=["classifier"]), tuning=TuningConfig(tolerable_loss=0.01, fallback_dtype="float32"),
        eval_fn=Fidelity(model, calibration_inputs()), calibration_dataset=[calibration_inputs()], show_progress=False,
    )
    assert qmodel.config.quantization_config.manifest.fallback_modules == {"classifier": "float32"} | dict.fromkeys(SENSITIVE, "float32")


def test_builtin_perplexity_tuning_on_a_causal_lm(tmp_path):
    tokenizer, model = word_tokenizer(), TINY_ARCHS["gpt2"].build()
    texts = ["the cat sat on the mat", "a dog ran home w1 w2 w3", "w4 w5 w6 the cat", "good dog bad cat w7 w8"]
    data_file = tmp_path / "texts.jsonl"
    datasets.Dataset.from_dict({"content": texts}).to_json(data_file)
    quantizer = INCQuantizer(model, task="causal-lm", tokenizer=tokenizer)
    qmodel = quantizer.quantize(tuning=TuningConfig(metric="perplexity", tolerable_loss=0.02, calibration_samples=2),
                                eval_dataset=str(data_file), show_progress=False)
    record = qmodel.config.quantization_config.manifest.tuning
    assert record.metric == "perplexity" and record.higher_is_better is False
    assert record.tolerance_met and record.relative_loss <= 0.02
    assert record.relative_loss == pytest.approx((record.int8_value - record.fp32_value) / record.fp32_value)


def test_untuned_quantize_saves_model_and_tokenizer(tmp_path):
    model = TINY_ARCHS["bert"].build()
    qmodel = INCQuantizer(model, tokenizer=word_tokenizer()).quantize(Int8Config(), save_directory=tmp_path / "out")
    assert qmodel.config.quantization_config.manifest.tuning is None
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "tokenizer.json").is_file()
    with pytest.raises(ValueError, match="eval_dataset"):
        INCQuantizer(model).quantize(tuning=TuningConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not any(isinstance(m, Int8DynamicLinear) for m in model.modules())


def test_eval_fn_with_calibration_rows_from_a_dataset():
    model = sensitive_bert()
    rows = datasets.Dataset.from_dict({"sentence": ["w1 w2 the cat sat", "a dog ran home w3", "good w4 w5", "bad mat"],
                                       "label": [0, 1, 2, 0]})
    quantizer = INCQuantizer(model, task="text-classification", tokenizer=word_tokenizer())
    qmodel = quantizer.quantize(tuning=TuningConfig(tolerable_loss=0.01, fallback_dtype="float32", calibration_samples=4),
                                eval_fn=Fidelity(model, calibration_inputs()), calibration_dataset=rows, show_progress=False)
    record = qmodel.config.quantization_config.manifest.tuning
    assert record.metric == "logit_cosine" and record.tolerance_met
    assert set(SENSITIVE) <= set(qmodel.config.quantization_config.manifest.fallback_modules)


def test_seq2seq_summarization_tuning_on_rouge_with_generation_overrides(tmp_path):
    tokenizer, model = word_tokenizer(), TINY_ARCHS["bart"].build()
    data = datasets.Dataset.from_dict({"article": ["the cat sat on the mat w1 w2", "a dog ran home w3 w4 w5"],
                                       "highlights": ["cat sat", "dog ran home"]})
    qmodel = INCQuantizer(model, task="summarization", tokenizer=tokenizer).quantize(
        tuning=TuningConfig(tolerable_loss=1.0, tolerance_mode="absolute", fallback_dtype="float32"), eval_dataset=data,
        generation_kwargs={"max_new_tokens": 4}, show_progress=False, save_directory=tmp_path / "bart-int8",
    )
    record = qmodel.config.quantization_config.manifest.tuning
    assert record.metric == "rougeLsum" and record.higher_is_better and record.tolerance_met
    assert record.trial_results[0]["fallbacks"] == 0 and record.trials == 1
    assert (tmp_path / "bart-int8" / "config.json").is_file()


@pytest.mark.parametrize(("returned", "shown"), [
    ("0.9", r"returned '0.9' \(str\)"),
    (True, r"returned True \(bool\)"),
    (torch.ones(3), r"returned a tensor of 3 elements \(tensor\(\[1., 1., 1.\]\)\)"),
    ({"accuracy": 0.9}, r"returned \{'accuracy': 0.9\} \(dict\)"),
    (float("nan"), r"the fp32 model's metric is nan"),
], ids=["string", "bool", "tensor", "dict", "nan"])
def test_an_eval_fn_returning_no_number_is_refused_at_the_first_trial(returned, shown):
    calls = []

    def eval_fn(model):
        calls.append(model)
        return returned

    with pytest.raises(ValueError, match=shown):
        tune(sensitive_bert(), eval_fn, tolerable_loss=0.01)
    assert len(calls) == 1


def test_a_one_element_tensor_is_a_number():
    model = sensitive_bert()
    fidelity = Fidelity(model, calibration_inputs())
    qmodel = tune(model, lambda m: torch.tensor([fidelity(m)]), tolerable_loss=0.01, max_trials=2)
    assert qmodel.config.quantization_config.manifest.tuning.trials == 2


def test_an_eval_fn_raising_mid_way_keeps_the_best_so_far_and_names_the_trial(tmp_path):
    model = sensitive_bert()
    fidelity, calls = Fidelity(model, calibration_inputs()), []

    def eval_fn(candidate):
        calls.append(candidate)
        if len(calls) == 4:  # fp32 baseline, trials 1 and 2, then trial 3 fails
            raise RuntimeError("evaluation server went away")
        return fidelity(candidate)

    quantizer = INCQuantizer(model)
    with pytest.warns(EvalFnFailedWarning, match=r"int8 trial 3 failed \(RuntimeError\('evaluation server went away'\)\)"):
        qmodel = quantizer.quantize(tuning=TuningConfig(tolerable_loss=0.01, fallback_dtype="float32"), eval_fn=eval_fn,
                                    calibration_dataset=[calibration_inputs()], show_progress=False,
                                    save_directory=tmp_path / "int8")
    record = INCModelForSequenceClassification.from_pretrained(tmp_path / "int8").config.quantization_config.manifest.tuning
    assert record.trials == 2 and [t["index"] for t in record.trial_results] == [1, 2]
    assert record.stop_reason == "evaluation failed at trial 3: RuntimeError: evaluation server went away"
    assert record.int8_value in [t["value"] for t in record.trial_results]  # the kept model is one of the trials run
    assert qmodel.config.quantization_config.manifest.tuning.stop_reason == record.stop_reason


def test_an_eval_fn_raising_at_the_first_int8_trial_has_nothing_to_keep():
    model = sensitive_bert()
    fidelity = Fidelity(model, calibration_inputs())

    def eval_fn(candidate):
        if any(isinstance(m, Int8DynamicLinear) for m in candidate.modules()):
            raise KeyError("label")
        return fidelity(candidate)

    with pytest.raises(ValueError, match=r"int8 trial 1 \(the first\) failed: KeyError\('label'\); no int8 trial completed"):
        tune(model, eval_fn, tolerable_loss=0.01)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tolerable_loss": -0.01}, "tolerable_loss must be a finite number >= 0, got -0.01"),
    ({"tolerable_loss": float("inf")}, "tolerable_loss must be a finite number >= 0, got inf"),
    ({"tolerable_loss": float("nan")}, "tolerable_loss must be a finite number >= 0, got nan"),
    ({"tolerable_loss": "1%"}, "tolerable_loss must be a finite number >= 0, got '1%'"),
    ({"tolerable_loss": 5.0}, "a relative loss above 100%"),
    ({"max_trials": 0}, "max_trials must be an integer >= 1"),
    ({"max_trials": True}, "max_trials must be an integer >= 1"),
    ({"max_trials": 2.5}, "max_trials must be an integer >= 1"),
    ({"timeout": -1}, "timeout must be a positive, finite number of seconds"),
    ({"timeout": float("inf")}, "timeout must be a positive, finite number of seconds"),
    ({"calibration_samples": 0}, "calibration_samples must be an integer >= 1"),
], ids=["negative", "infinite", "nan", "string", "relative-500%", "no-trials", "bool-trials", "fractional-trials",
        "negative-timeout", "infinite-timeout", "no-calibration"])
def test_negative_or_absurd_tolerances_and_budgets_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TuningConfig(**kwargs)
    assert TuningConfig(tolerable_loss=5.0, tolerance_mode="absolute").tolerable_loss == 5.0


def test_weight_only_repairs_instead_of_float_fallbacks_and_the_record_says_so(counted):
    from optimum_int8.nn import Int8WeightOnlyLinear

    model = sensitive_bert()

    def repaired(qmodel) -> float:
        """A metric hurt only by W8A8 in the sensitive modules: weight-only int8 there passes."""
        w8a8 = [qmodel.get_submodule(name) for name in SENSITIVE]
        return 1.0 - 0.1 * sum(isinstance(m, Int8DynamicLinear) and not isinstance(m, Int8WeightOnlyLinear) for m in w8a8)

    qmodel = tune(model, repaired, tolerable_loss=0.01, fallback_dtype="int8_weight_only")
    manifest = qmodel.config.quantization_config.manifest
    assert manifest.fallback_modules == {}
    assert manifest.module_schemes == dict.fromkeys(SENSITIVE, "int8_weight_only")
    assert all(isinstance(qmodel.get_submodule(name), Int8WeightOnlyLinear) for name in SENSITIVE)
    assert set(manifest.int8_modules) == set(find_float_linears(model))
    assert manifest.tuning.tolerance_met and manifest.tuning.fallback_dtype == "int8_weight_only"
    assert {t["fallback_dtype"] for t in manifest.tuning.trial_results} == {"int8_weight_only"}


def test_trials_keep_the_configs_scheme_and_its_calibration():
    from optimum_int8.nn import Int8StaticActivationLinear

    model = sensitive_bert()
    qmodel = INCQuantizer(model).quantize(
        Int8Config(scheme="int8_static", smoothquant_alpha=0.5),
        tuning=TuningConfig(tolerable_loss=1.0, fallback_dtype="float32"), eval_fn=Fidelity(model, calibration_inputs()),
        calibration_dataset=[calibration_inputs()], show_progress=False,
    )
    int8 = [m for m in qmodel.modules() if isinstance(m, Int8StaticActivationLinear)]
    assert int8 and all(m.smooth_scale is not None for m in int8)
    calibration = qmodel.config.quantization_config.manifest.calibration
    assert calibration.samples == 1 and calibration.smoothquant_alpha == 0.5 and calibration.observer == "minmax"


def test_untuned_quantize_calibrates_on_calibration_dataset_and_refuses_without_it():
    from optimum_int8.nn import Int8StaticActivationLinear

    model = TINY_ARCHS["bert"].build()
    qmodel = INCQuantizer(model).quantize(Int8Config(scheme="int8_static"), calibration_dataset=[calibration_inputs()])
    assert isinstance(qmodel.bert.encoder.layer[0].output.dense, Int8StaticActivationLinear)
    with pytest.raises(ValueError, match="calibrates its activations: pass calibration_dataset="):
        INCQuantizer(model).quantize(Int8Config(scheme="int8_static"))
