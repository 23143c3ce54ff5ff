"""The reference transformer: parameter count = ModelSpec.param_count(), shapes, determinism."""

from __future__ import annotations

import pytest
import torch

from autotune.catalog import get_model
from autotune.spec import ModelSpec
from workers.model import build_model, synthetic_batch

SPECS = {
    "gpt_tied_learned_bias": ModelSpec(
        layers=2,
        hidden=64,
        heads=4,
        vocab=100,
        activation="gelu",
        tied_embeddings=True,
        norm="layernorm",
        bias="all",
        position_embedding="learned",
        max_seq_len=32,
    ),
    "llama_untied_gqa": ModelSpec(
        layers=3,
        hidden=64,
        heads=8,
        kv_heads=2,
        ffn_hidden=176,
        vocab=96,
        activation="swiglu",
        norm="rmsnorm",
        bias="none",
        position_embedding="rope",
    ),
    "qwen_qkv_bias": ModelSpec(
        layers=2,
        hidden=96,
        heads=6,
        kv_heads=3,
        ffn_hidden=256,
        vocab=120,
        activation="swiglu",
        tied_embeddings=True,
        norm="rmsnorm",
        bias="qkv",
    ),
    "gelu_all_bias_untied_rope": ModelSpec(
        layers=1,
        hidden=32,
        heads=2,
        vocab=50,
        activation="gelu",
        norm="layernorm",
        bias="all",
        position_embedding="rope",
    ),
    "swiglu_all_bias_learned": ModelSpec(
        layers=1,
        hidden=32,
        heads=4,
        kv_heads=1,
        vocab=50,
        activation="swiglu",
        bias="all",
        position_embedding="learned",
        max_seq_len=16,
    ),
    "tiny_preset": get_model("tiny"),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_parameter_count_matches_formula(name: str) -> None:
    spec = SPECS[name]
    model = build_model(spec, seq_len=16)
    assert sum(p.numel() for p in model.parameters()) == spec.param_count()


@pytest.mark.parametrize("name", ["gpt_tied_learned_bias", "llama_untied_gqa"])
def test_forward_shape_and_deterministic_init(name: str) -> None:
    spec = SPECS[name]
    a, b = build_model(spec, seq_len=16, seed=1), build_model(spec, seq_len=16, seed=1)
    inputs, labels = synthetic_batch(spec.vocab, 16, 3, step=0, seed=1)
    assert inputs.shape == labels.shape == (3, 16)
    assert torch.equal(inputs[:, 1:], labels[:, :-1])
    assert a(inputs).shape == (3, 16, spec.vocab)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    c = build_model(spec, seq_len=16, seed=2)
    assert not torch.equal(a.layers["0"].attention.wq.weight, c.layers["0"].attention.wq.weight)


def test_tied_output_shares_the_embedding() -> None:
    model = build_model(SPECS["gpt_tied_learned_bias"], seq_len=16)
    assert model.output.weight is model.tok_embeddings.weight


def test_synthetic_batches_differ_by_step_and_repeat_by_seed() -> None:
    x0, _ = synthetic_batch(100, 8, 2, step=0, seed=0)
    assert torch.equal(x0, synthetic_batch(100, 8, 2, step=0, seed=0)[0])
    assert not torch.equal(x0, synthetic_batch(100, 8, 2, step=1, seed=0)[0])


def test_causal_attention_ignores_future_tokens() -> None:
    spec = SPECS["llama_untied_gqa"]
    model = build_model(spec, seq_len=16)
    x, _ = synthetic_batch(spec.vocab, 16, 1, step=0)
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % spec.vocab
    torch.testing.assert_close(model(x)[:, :-1], model(y)[:, :-1])
