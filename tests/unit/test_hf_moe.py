"""Hugging Face import of the mixture-of-experts architectures from the checkpoints' own config.json values
(tests/fixtures/moe/README.md names each checkpoint), against the published parameter counts and the presets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.catalog import from_hf_config, get_model, resolve_model
from autotune.errors import SpecError
from autotune.spec import ModelSpec

FIXTURES = Path(__file__).parents[1] / "fixtures" / "moe"
HEAD_DIM = pytest.mark.skipif("head_dim" not in ModelSpec.model_fields,
                              reason="needs the ModelSpec.head_dim field (Qwen3 head_dim 128, gpt-oss 64)")


def _cfg(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.mark.parametrize("fixture,preset", [
    ("mixtral-8x7b", "mixtral-8x7b"), ("deepseek-v3", "deepseek-v3"),
    pytest.param("qwen3-30b-a3b", "qwen3-30b-a3b", marks=HEAD_DIM),
    pytest.param("gpt-oss-20b", "gpt-oss-20b", marks=HEAD_DIM),
])
def test_import_equals_the_preset(fixture, preset) -> None:
    assert from_hf_config(_cfg(fixture), name=preset) == get_model(preset)


def test_qwen2_moe_shared_expert() -> None:
    """Qwen1.5-MoE-A2.7B (Qwen blog, 2024): 14.3 B total, 2.7 B activated; 60 experts of 1408, top-4, one shared
    expert of 5632, q/k/v biases. (Its shared_expert_gate, h weights per layer, is not counted: 49,152.)"""
    m = resolve_model(str(FIXTURES / "qwen1.5-moe-a2.7b.json"))
    assert (m.experts, m.experts_per_token, m.expert_ffn, m.shared_experts, m.shared_expert_ffn) == (60, 4, 1408, 1,
                                                                                                     5632)
    assert (m.bias, m.moe_layers) == ("qkv", 24)
    assert m.param_count() / 1e9 == pytest.approx(14.3, rel=0.01)
    assert m.active_param_count() / 1e9 == pytest.approx(2.7, rel=0.01)


def test_deepseek_v2_lite() -> None:
    """DeepSeek-V2 paper (2024), Appendix B: V2-Lite has 15.7 B parameters; no query LoRA (q_lora_rank null),
    64 routed experts top-6, 2 shared, the first layer dense."""
    m = from_hf_config(_cfg("deepseek-v2-lite"))
    assert (m.q_lora_rank, m.kv_lora_rank, m.first_dense_layers, m.moe_layers, m.shared_experts) == (None, 512, 1, 26,
                                                                                                     2)
    assert m.param_count() / 1e9 == pytest.approx(15.7, rel=0.01)
    # query 2048·16·192 = 6,291,456; kv 2048·576 + 512 + 512·16·256 = 3,277,312; o 16·128·2048 = 4,194,304.
    assert m.mla_params() == 6_291_456 + 3_277_312 + 4_194_304


@pytest.mark.parametrize("edit,match", [
    (dict(decoder_sparse_step=2, mlp_only_layers=[0]), "mlp_only_layers=\\[0\\] with decoder_sparse_step=2"),
    (dict(mlp_only_layers=[3]), "mlp_only_layers=\\[3\\] with decoder_sparse_step=1"),
])
def test_qwen_layer_patterns_refused(edit, match) -> None:
    with pytest.raises(SpecError, match=match):
        from_hf_config(_cfg("qwen1.5-moe-a2.7b") | edit)


def test_qwen_sparse_step_and_leading_dense_layers() -> None:
    # decoder_sparse_step 2: layers 1, 3, ..., 23 are MoE (12); mlp_only_layers [0, 1]: 22 MoE layers.
    assert from_hf_config(_cfg("qwen1.5-moe-a2.7b") | dict(decoder_sparse_step=2)).moe_layers == 12
    assert from_hf_config(_cfg("qwen1.5-moe-a2.7b") | dict(mlp_only_layers=[0, 1])).moe_layers == 22


def test_deepseek_layer_frequency() -> None:
    # first_k_dense_replace 2, moe_layer_freq 2 (of 27 layers): MoE layers 2, 4, ..., 26 = 13.
    assert from_hf_config(_cfg("deepseek-v2-lite") | dict(first_k_dense_replace=2, moe_layer_freq=2)).moe_layers == 13
    with pytest.raises(SpecError, match="first_k_dense_replace=1 is not a multiple of moe_layer_freq=2"):
        from_hf_config(_cfg("deepseek-v2-lite") | dict(moe_layer_freq=2))


@pytest.mark.parametrize("cfg,match", [
    ({"architectures": ["OlmoeForCausalLM"], "num_experts": 64}, "unsupported architecture 'OlmoeForCausalLM'"),
    ({"architectures": ["MixtralForCausalLM"], "hidden_size": 64}, "config.json field 'num_hidden_layers' is missing"),
])
def test_refusals(cfg, match) -> None:
    with pytest.raises(SpecError, match=match):
        from_hf_config(cfg)


def test_missing_expert_field_is_named() -> None:
    cfg = {k: v for k, v in _cfg("deepseek-v3").items() if k != "n_routed_experts"}
    with pytest.raises(SpecError, match="config.json field 'n_routed_experts' is missing"):
        from_hf_config(cfg)
