import pytest
from torch import nn

from conftest import TINY_ARCHS
from optimum_int8.linear_modules import find_float_linears, resolve_module_names, untie_modules


def test_finds_exact_linear_and_conv1d_modules_only():
    bart = find_float_linears(TINY_ARCHS["bart"].build())
    assert "lm_head" in bart and "model.encoder.layers.0.fc1" in bart
    assert len(bart) == 2 * 6 + 2 * 10 + 1  # encoder: q,k,v,o,fc1,fc2; decoder adds cross-attention
    gpt2 = find_float_linears(TINY_ARCHS["gpt2"].build())
    assert "transformer.h.0.attn.c_attn" in gpt2 and "lm_head" in gpt2


def test_resolve_expands_globs_once_and_keeps_order():
    names = ["a.0.fc1", "a.0.fc2", "a.1.fc1", "a.1.fc2"]
    assert resolve_module_names(["a.*.fc2", "a.1.fc2", "a.0.fc1"], names, "x") == ["a.0.fc2", "a.1.fc2", "a.0.fc1"]


def test_resolve_rejects_unmatched_entries_with_suggestions():
    with pytest.raises(ValueError, match=r"where: 'a.0.fc3' matches no Linear module.*Did you mean \['a.0.fc1'"):
        resolve_module_names(["a.0.fc3"], ["a.0.fc1", "b"], "where")


def test_untie_drops_entries_for_the_given_modules_in_sub_models():
    model = TINY_ARCHS["bart"].build()
    assert "lm_head.weight" in model.all_tied_weights_keys
    untie_modules(model, ["lm_head"])
    assert "lm_head.weight" not in model.all_tied_weights_keys
    assert "model.encoder.embed_tokens.weight" in model.all_tied_weights_keys
    assert isinstance(model.lm_head, nn.Linear)
