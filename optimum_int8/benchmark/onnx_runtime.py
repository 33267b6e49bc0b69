"""ONNX Runtime dynamic int8 of the same model, the peer users would pick instead of ours.

optimum-onnx cannot be installed beside transformers 5, so the model is exported here with
``torch.onnx.export`` as three graphs and quantized with ONNX Runtime's own ``quantize_dynamic``
(int8 per-channel weights of every MatMul with a constant weight, i.e. the Linear layers; uint8
dynamic activations; embeddings and attention stay fp32, as in our int8 models):

- ``encoder.onnx``: (input_ids, attention_mask) -> encoder hidden states;
- ``cross_kv.onnx``: encoder hidden states -> every decoder layer's cross-attention keys and values;
- ``decoder.onnx``: one cached decoder step: (decoder_input_ids, attention_mask, encoder hidden states,
  past self-attention keys/values, cross-attention keys/values) -> logits, present self-attention keys/values.

Each graph has its own copy of the weights it uses, so the shared token embedding is stored twice
(encoder and decoder). ``OrtSeq2SeqLM`` runs greedy and beam search over these sessions with the
workloads' ``generate`` signature. Supports BART-family models (decoder layers with ``encoder_attn``).
"""

import json
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from transformers.cache_utils import EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from .variants import Variant, load_float32, register_variant

GRAPHS = ("encoder", "cross_kv", "decoder")


def _decoder_layers(model) -> nn.ModuleList:
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None or not all(hasattr(layer, "encoder_attn") for layer in layers):
        raise ValueError(
            f"the ONNX Runtime variant exports BART-family seq2seq models (decoder layers with encoder_attn); "
            f"{type(model).__name__} is not one."
        )
    return layers


class EncoderForExport(nn.Module):
    """(input_ids, attention_mask) -> the encoder's last hidden state: the encoder as a graph exporters trace."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class _CrossKeyValues(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.attentions = nn.ModuleList(layer.encoder_attn for layer in _decoder_layers(model))

    def forward(self, encoder_hidden_states):
        batch, length, _ = encoder_hidden_states.shape
        outputs = []
        for attention in self.attentions:
            for projection in (attention.k_proj, attention.v_proj):
                states = projection(encoder_hidden_states).view(batch, length, -1, attention.head_dim)
                outputs.append(states.transpose(1, 2))
        return tuple(outputs)


class _DecoderStep(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.num_layers = len(_decoder_layers(model))

    def forward(self, decoder_input_ids, attention_mask, encoder_hidden_states, *past):
        layers = self.num_layers
        cache = EncoderDecoderCache([
            (past[2 * i], past[2 * i + 1], past[2 * (layers + i)], past[2 * (layers + i) + 1]) for i in range(layers)
        ])
        output = self.model(
            decoder_input_ids=decoder_input_ids, attention_mask=attention_mask,
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden_states),
            past_key_values=cache, use_cache=True,
        )
        present = output.past_key_values.self_attention_cache.layers
        return (output.logits, *[tensor for layer in present for tensor in (layer.keys, layer.values)])


def _kv_names(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def export_onnx(model, directory: Path) -> None:
    """Export the three fp32 graphs of a BART-family model into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    layers, config = len(_decoder_layers(model)), model.config
    heads, head_dim = config.decoder_attention_heads, config.d_model // config.decoder_attention_heads
    batch, source, past = 2, 7, 3
    ids = torch.randint(4, config.vocab_size, (batch, source))
    mask = torch.ones_like(ids)
    hidden = torch.randn(batch, source, config.d_model)
    self_kv = [torch.randn(batch, heads, past, head_dim) for _ in range(2 * layers)]
    cross_kv = [torch.randn(batch, heads, source, head_dim) for _ in range(2 * layers)]
    batch_dim, source_dim, past_dim = torch.export.Dim("batch"), torch.export.Dim("source"), torch.export.Dim("past")
    kv = {0: batch_dim, 2: source_dim}
    exports = {
        "encoder": (EncoderForExport(model), (ids, mask), ["input_ids", "attention_mask"], ["encoder_hidden_states"],
                    ({0: batch_dim, 1: source_dim}, {0: batch_dim, 1: source_dim})),
        "cross_kv": (_CrossKeyValues(model), (hidden,), ["encoder_hidden_states"], _kv_names("cross", layers),
                     ({0: batch_dim, 1: source_dim},)),
        "decoder": (
            _DecoderStep(model), (ids[:, :1], mask, hidden, *self_kv, *cross_kv),
            ["decoder_input_ids", "attention_mask", "encoder_hidden_states", *_kv_names("past", layers),
             *_kv_names("cross", layers)],
            ["logits", *_kv_names("present", layers)],
            ({0: batch_dim}, {0: batch_dim, 1: source_dim}, {0: batch_dim, 1: source_dim},
             tuple([{0: batch_dim, 2: past_dim}] * (2 * layers) + [kv] * (2 * layers))),
        ),
    }
    for name, (module, args, input_names, output_names, dynamic_shapes) in exports.items():
        with torch.no_grad():
            torch.onnx.export(
                module.eval(), args, directory / f"{name}.onnx", input_names=input_names, output_names=output_names,
                dynamic_shapes=dynamic_shapes, dynamo=True, external_data=True, verbose=False,
            )


def _untie_output_embeddings(model) -> None:
    """Give the LM head its own weight. Tied to the input embedding, it is exported as a Transpose of the
    embedding table, which ``quantize_dynamic`` leaves in fp32 (it quantizes constant weights only); ours is int8."""
    head = model.get_output_embeddings()
    if head is not None:
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)


def build_ort_int8(fp32_dir: Path, out_dir: Path) -> None:
    """Export ``fp32_dir`` to ONNX and quantize every graph with ONNX Runtime's dynamic int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = load_float32(fp32_dir)
    _untie_output_embeddings(model)
    with tempfile.TemporaryDirectory(dir=out_dir) as float_dir:
        export_onnx(model, Path(float_dir))
        del model
        for name in GRAPHS:
            quantize_dynamic(
                Path(float_dir) / f"{name}.onnx", out_dir / f"{name}.onnx", op_types_to_quantize=["MatMul"],
                per_channel=True, reduce_range=False, weight_type=QuantType.QInt8, use_external_data_format=True,
            )
    for name in ("config.json", "generation_config.json"):
        if (fp32_dir / name).is_file():
            shutil.copy2(fp32_dir / name, out_dir / name)


class OrtSeq2SeqLM:
    """Greedy and beam search over the three ONNX Runtime sessions, with the workloads' ``generate`` signature."""

    def __init__(self, directory: Path, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.sessions = {
            name: onnxruntime.InferenceSession(str(directory / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
            for name in GRAPHS
        }
        config = json.loads((directory / "config.json").read_text())
        self.decoder_start_token_id = config["decoder_start_token_id"]
        self.eos_token_id = config["eos_token_id"]
        self.num_layers = config["decoder_layers"]
        self.heads, self.head_dim = config["decoder_attention_heads"], config["d_model"] // config["decoder_attention_heads"]

    def get_encoder(self):
        return self._encode

    def _encode(self, input_ids, attention_mask):
        hidden = self.sessions["encoder"].run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})[0]
        return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden))

    def _step(self, tokens: np.ndarray, state: SimpleNamespace) -> np.ndarray:
        feeds = {"decoder_input_ids": tokens, "attention_mask": state.mask, "encoder_hidden_states": state.hidden}
        feeds |= dict(zip(_kv_names("past", self.num_layers), state.past))
        feeds |= dict(zip(_kv_names("cross", self.num_layers), state.cross))
        logits, *state.past = self.sessions["decoder"].run(None, feeds)
        return logits[:, -1, :]

    def _start(self, input_ids, attention_mask, copies: int) -> SimpleNamespace:
        hidden = self._encode(input_ids, attention_mask).last_hidden_state.numpy()
        hidden, mask = np.repeat(hidden, copies, axis=0), np.repeat(attention_mask.numpy(), copies, axis=0)
        rows = hidden.shape[0]
        empty = np.zeros((rows, self.heads, 0, self.head_dim), dtype=np.float32)
        cross = self.sessions["cross_kv"].run(None, {"encoder_hidden_states": hidden})
        return SimpleNamespace(hidden=hidden, mask=mask, cross=cross, past=[empty] * (2 * self.num_layers))

    def _suppress_eos(self, scores: np.ndarray, generated: int, min_new_tokens: int) -> None:
        if generated < min_new_tokens:
            scores[:, self.eos_token_id] = -np.inf

    def generate(self, input_ids, attention_mask, num_beams=1, do_sample=False, max_new_tokens=20, min_new_tokens=0):
        if do_sample:
            raise ValueError("OrtSeq2SeqLM runs greedy and beam search only (do_sample=False)")
        if num_beams == 1:
            return self._greedy(input_ids, attention_mask, max_new_tokens, min_new_tokens)
        return self._beam_search(input_ids, attention_mask, num_beams, max_new_tokens, min_new_tokens)

    def _greedy(self, input_ids, attention_mask, max_new_tokens, min_new_tokens):
        state = self._start(input_ids, attention_mask, 1)
        tokens = np.full((input_ids.shape[0], 1), self.decoder_start_token_id, dtype=np.int64)
        sequence = [tokens]
        for step in range(max_new_tokens):
            scores = self._step(tokens, state)
            self._suppress_eos(scores, step, min_new_tokens)
            tokens = scores.argmax(axis=-1)[:, None].astype(np.int64)
            sequence.append(tokens)
        return torch.from_numpy(np.concatenate(sequence, axis=1))

    def _beam_search(self, input_ids, attention_mask, beams, max_new_tokens, min_new_tokens):
        """Beam search without length penalty; runs exactly ``max_new_tokens`` steps on batch x beams rows."""
        batch = input_ids.shape[0]
        state = self._start(input_ids, attention_mask, beams)
        tokens = np.full((batch * beams, 1), self.decoder_start_token_id, dtype=np.int64)
        beam_scores = np.zeros((batch, beams), dtype=np.float32)
        beam_scores[:, 1:] = -1e9  # all beams start identical: expand from the first one only
        sequences = tokens
        for step in range(max_new_tokens):
            logits = self._step(tokens, state)
            self._suppress_eos(logits, step, min_new_tokens)
            log_probs = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
            vocab = log_probs.shape[-1]
            candidates = (log_probs.reshape(batch, beams, vocab) + beam_scores[:, :, None]).reshape(batch, -1)
            best = np.argpartition(-candidates, beams, axis=1)[:, :beams]
            beam_scores = np.take_along_axis(candidates, best, axis=1)
            rows = (np.arange(batch)[:, None] * beams + best // vocab).reshape(-1)
            tokens = (best % vocab).reshape(-1, 1).astype(np.int64)
            sequences = np.concatenate([sequences[rows], tokens], axis=1)
            state.past = [tensor[rows] for tensor in state.past]
        best_beam = beam_scores.argmax(axis=1)
        return torch.from_numpy(sequences.reshape(batch, beams, -1)[np.arange(batch), best_beam])


def load_ort_int8(directory: Path) -> OrtSeq2SeqLM:
    return OrtSeq2SeqLM(Path(directory))


register_variant(Variant(
    "ort-int8", "ONNX Runtime int8",
    "ONNX Runtime dynamic int8: torch.onnx.export, quantize_dynamic (per-channel int8 weights of every weight MatMul)",
    build_ort_int8, load_ort_int8,
    requires=("onnxruntime", "onnx", "onnxscript"), extra="onnx",
))
