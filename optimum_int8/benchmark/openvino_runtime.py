"""OpenVINO runs of the model's encoder: static int8 through NNCF, and bf16, the engine optimum-intel 2.x users pick.

optimum-intel is not a dependency, so the encoder is converted here with ``openvino.convert_model`` (the
torch encoder traced on example inputs, dynamic batch and length) into ``encoder.xml`` / ``encoder.bin``:

- ``openvino-int8``: ``nncf.quantize`` configured as optimum-intel 2.x's ``OVQuantizationConfig`` defaults
  configure it for transformers models: ``model_type=nncf.ModelType.TRANSFORMER`` (SmoothQuant first, with
  NNCF's default alpha for MatMul, 0.95), preset ``MIXED`` (symmetric int8 weights, asymmetric int8
  activations), fast bias correction, overflow fix disabled. Calibrated on ``workloads.CALIBRATION_SEQUENCES`` random
  token sequences drawn like the benchmark's inputs (another seed). The inference precision is OpenVINO's
  default for the CPU, as optimum-intel leaves it (bf16 for what is not int8 on an AMX CPU).
- ``openvino-bf16``: the fp32 graph (stored in fp32) compiled with ``INFERENCE_PRECISION_HINT=bf16``.

Both compile with as many threads as torch uses (``INFERENCE_NUM_THREADS``) and the latency hint. They run the
``encoder`` workload only; the benchmark skips the others for them.
"""

import shutil
from pathlib import Path

import torch
from transformers.modeling_outputs import BaseModelOutput

from .onnx_runtime import EncoderForExport
from .variants import Variant, load_float32, register_variant
from .workloads import calibration_inputs, random_token_ids

GRAPH = "encoder.xml"  # its weights: encoder.bin beside it
INPUT_NAMES = ("input_ids", "attention_mask")


def convert_encoder(model):
    """The fp32 OpenVINO model of ``model``'s encoder: (input_ids, attention_mask) -> last_hidden_state.

    Constant-folded once converted: the traced graph reads the shape of the token embedding table, and that
    ShapeOf would keep an fp32 copy of the table in the int8 file beside NNCF's int8 one (the CPU plugin folds
    it when compiling anyway). Its constants share memory with ``model``'s weights: keep ``model`` unchanged
    while it is used.
    """
    import openvino
    from openvino.passes import ConstantFolding, Manager

    example = random_token_ids(model.config, 2, 8, torch.Generator().manual_seed(0))
    with torch.no_grad():
        converted = openvino.convert_model(
            EncoderForExport(model).eval(), example_input=tuple(example[name] for name in INPUT_NAMES)
        )
    converted.outputs[0].get_tensor().set_names({"last_hidden_state"})
    passes = Manager()
    passes.register_pass(ConstantFolding())
    passes.run_passes(converted)
    return converted


def calibration_sequences(config) -> list[dict]:
    """The benchmark's calibration sequences (``workloads.calibration_inputs``), encoder inputs only, as numpy."""
    return [{name: batch[name].numpy() for name in ("input_ids", "attention_mask")} for batch in calibration_inputs(config)]


def quantize_static_int8(ov_model, calibration: list[dict]):
    """NNCF static int8 with optimum-intel 2.x's ``OVQuantizationConfig()`` settings (see the module docstring)."""
    import nncf

    return nncf.quantize(
        ov_model, nncf.Dataset(calibration), preset=nncf.QuantizationPreset.MIXED, subset_size=len(calibration),
        fast_bias_correction=True, model_type=nncf.ModelType.TRANSFORMER,
        advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.DISABLE),
    )


def _save(ov_model, fp32_dir: Path, out_dir: Path) -> None:
    import openvino

    openvino.save_model(ov_model, out_dir / GRAPH, compress_to_fp16=False)
    shutil.copy2(fp32_dir / "config.json", out_dir / "config.json")


def build_openvino_fp32(fp32_dir: Path, out_dir: Path) -> None:
    model = load_float32(fp32_dir)
    _save(convert_encoder(model), fp32_dir, out_dir)


def build_openvino_int8(fp32_dir: Path, out_dir: Path) -> None:
    model = load_float32(fp32_dir)
    quantized = quantize_static_int8(convert_encoder(model), calibration_sequences(model.config))
    _save(quantized, fp32_dir, out_dir)


class OpenVINOEncoder:
    """A compiled OpenVINO encoder with the workloads' ``get_encoder()(input_ids=..., attention_mask=...)``. It
    compiles when loaded (the benchmark's load time), so its first call is an ordinary one."""

    def __init__(self, directory: Path, precision: str | None = None, threads: int | None = None):
        """``precision``: the ``INFERENCE_PRECISION_HINT`` (``"bf16"``, ``"f32"``); None: OpenVINO's default."""
        import openvino

        config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = openvino.Core().compile_model(str(Path(directory) / GRAPH), "CPU", config)
        # What the plugin settled on ("bf16", "f32"): its default depends on the CPU.
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def get_encoder(self):
        return self._encode

    def _encode(self, input_ids, attention_mask):
        outputs = self.compiled({"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
        return BaseModelOutput(last_hidden_state=torch.from_numpy(outputs[0]))


def load_openvino_int8(directory: Path) -> OpenVINOEncoder:
    return OpenVINOEncoder(Path(directory))


def load_openvino_bf16(directory: Path) -> OpenVINOEncoder:
    return OpenVINOEncoder(Path(directory), precision="bf16")


register_variant(Variant(
    "openvino-int8", "OpenVINO int8 (encoder)",
    "OpenVINO + NNCF static int8 of the encoder (SmoothQuant, optimum-intel 2.x's OVQuantizationConfig defaults)",
    build_openvino_int8, load_openvino_int8, requires=("openvino", "nncf"), extra="openvino", workloads=("encoder", "first-encoder"),
))
register_variant(Variant(
    "openvino-bf16", "OpenVINO bf16 (encoder)",
    "OpenVINO runtime on the fp32 encoder graph with INFERENCE_PRECISION_HINT=bf16",
    build_openvino_fp32, load_openvino_bf16, requires=("openvino",), extra="openvino", workloads=("encoder", "first-encoder"),
))
