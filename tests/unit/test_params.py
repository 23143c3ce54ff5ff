"""Parameter counts against seed 002's formula and published totals; model-state bytes per param."""

from __future__ import annotations

import pytest

from autotune.catalog import get_model
from autotune.costmodel.memory import model_state_bytes
from autotune.spec import ModelSpec, TrainingSpec


@pytest.mark.parametrize("h,L,v", [(2304, 24, 51200), (4096, 32, 50257), (12288, 96, 51200)])
def test_seed_002_formula(h: int, L: int, v: int) -> None:
    # Seed 002: N = h·v + L(12h² + 13h) + 2h for a GPT with tied embeddings and no position table.
    spec = ModelSpec(layers=L, hidden=h, heads=h // 128, vocab=v, activation="gelu", tied_embeddings=True,
                     norm="layernorm", bias="all", position_embedding="rope")
    assert spec.param_count() == h * v + L * (12 * h * h + 13 * h) + 2 * h


@pytest.mark.parametrize("name,published_billion", [
    ("llama3-8b", 8.03), ("llama3-70b", 70.6), ("llama3-405b", 405.9), ("gpt3-175b", 174.6),
    ("llama2-7b", 6.74), ("llama2-13b", 13.0), ("llama2-70b", 69.0), ("mistral-7b", 7.24),
    ("qwen2.5-7b", 7.61), ("qwen2.5-72b", 72.7), ("gpt3-1t", 1008.0), ("gpt3-529.6b", 529.6),
    ("gpt3-145.6b", 145.6), ("gpt3-18.4b", 18.4),
])
def test_presets_match_published_counts(name: str, published_billion: float) -> None:
    assert get_model(name).param_count() / 1e9 == pytest.approx(published_billion, rel=0.01)


def test_llama3_8b_by_hand() -> None:
    # 32 x (2·4096² + 2·4096·1024 + 3·4096·14336 + 2·4096) + 2·128256·4096 + 4096
    layer = 2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert get_model("llama3-8b").param_count() == 32 * layer + 2 * 128256 * 4096 + 4096


@pytest.mark.parametrize("billion,fp32_gb,mixed_gb", [(1, 16, 20), (7, 112, 140), (70, 1120, 1400),
                                                       (405, 6480, 8100)])
def test_seed_002_bytes_table(billion: int, fp32_gb: int, mixed_gb: int) -> None:
    psi = billion * 1e9
    fp32 = sum(model_state_bytes(psi, 0, 1, TrainingSpec(seq_len=1, global_batch=1, precision="fp32")))
    # Seed 002's 20 B/param: bf16 weights + bf16 grads + fp32 grads + fp32 master + Adam m, v.
    mixed = sum(model_state_bytes(psi, 0, 1, TrainingSpec(seq_len=1, global_batch=1, grad_buffers="both")))
    assert fp32 / 1e9 == pytest.approx(fp32_gb)
    assert mixed / 1e9 == pytest.approx(mixed_gb)


def test_megatron_18_bytes_per_param() -> None:
    # Megatron-LM theoretical_memory_usage: 18 B/param, or 6 + 12/dp with the distributed optimizer.
    t = TrainingSpec(seq_len=1, global_batch=1)
    assert sum(model_state_bytes(1.0, 0, 1, t)) == pytest.approx(18)
    assert sum(model_state_bytes(1.0, 1, 8, t)) == pytest.approx(6 + 12 / 8)
