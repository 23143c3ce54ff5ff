"""Gemma 2/3, Qwen3, OLMo 2, Phi-3 and Nemotron config.json imports against published parameter totals.

The fixtures (tests/fixtures/hf/<owner>--<repo>/config.json) hold the public config.json values of those Hub
repositories. Tolerances are what the rounding of each published figure allows (half a unit of its last digit).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.catalog import get_model, resolve_model
from autotune.catalog.hf import from_hf_config
from autotune.errors import SpecError
from autotune.spec import ModelSpec

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hf"


def _load(repo: str) -> ModelSpec:
    return resolve_model(str(FIXTURES / repo.replace("/", "--") / "config.json"))


def _non_embedding(m: ModelSpec) -> int:
    """Parameters without the input embedding and the (untied) output matrix."""
    return m.param_count() - m.vocab * m.hidden * (1 if m.tied_embeddings else 2)


@pytest.mark.parametrize("repo,non_embedding", [
    # Gemma Team 2024, "Gemma 2", Table 2: non-embedding parameters, exact.
    ("google/gemma-2-2b", 2_024_517_888), ("google/gemma-2-9b", 8_324_201_984),
    ("google/gemma-2-27b", 26_047_480_320),
])
def test_gemma2_exact(repo: str, non_embedding: int) -> None:
    m = _load(repo)
    assert _non_embedding(m) == non_embedding
    assert (m.activation, m.norm_placement, m.norms_per_layer, m.tied_embeddings) == ("geglu", "sandwich", 4, True)
    assert (m.sliding_window, m.full_attention_every) == (4096, 2)


def test_gemma2_2b_by_hand_and_embedding_rows() -> None:
    # h 2304, 8 heads x d 256 (q_dim 2048 != h), 4 kv heads, f 9216, 26 layers, 4 RMSNorms per layer:
    # layer = 2·2304·2048 + 2·2304·1024 + 3·2304·9216 + 4·2304 = 77,865,984; x 26 + final norm 2304.
    m = _load("google/gemma-2-2b")
    assert m.layer_params() == 77_865_984
    assert _non_embedding(m) == 26 * 77_865_984 + 2304
    # Table 2's embedding count 590,118,912 is 256,128 rows (the config.json's 256,000 plus padding) x 2304.
    assert m.model_copy(update={"vocab": 256_128}).embedding_params() == 590_118_912


def test_gemma3_1b() -> None:
    # Gemma Team 2025, "Gemma 3", Table 1: 1B = 302M embedding + 698M non-embedding parameters.
    m = _load("google/gemma-3-1b-pt")
    assert m.embedding_params() / 1e6 == pytest.approx(302, abs=0.5)
    assert _non_embedding(m) / 1e6 == pytest.approx(698, abs=0.5)
    # Per-head q/k norms (2 x 256) on top of Gemma 2's layer; one full-attention layer in 6 (layers 5, 11, 17, 23).
    assert m.qk_norm_params() == 512
    assert [i for i in range(m.layers) if not m.is_windowed(i)] == [5, 11, 17, 23]


@pytest.mark.parametrize("repo,total_b,total_abs,non_emb_b,non_emb_abs", [
    # Qwen3 model cards (Qwen/Qwen3-*): total and non-embedding parameters.
    ("Qwen/Qwen3-0.6B", 0.6, 0.05, 0.44, 0.005), ("Qwen/Qwen3-8B", 8.2, 0.05, 6.95, 0.005),
    ("Qwen/Qwen3-32B", 32.8, 0.05, 31.2, 0.05),
])
def test_qwen3(repo: str, total_b: float, total_abs: float, non_emb_b: float, non_emb_abs: float) -> None:
    m = _load(repo)
    assert m.param_count() / 1e9 == pytest.approx(total_b, abs=total_abs)
    assert _non_embedding(m) / 1e9 == pytest.approx(non_emb_b, abs=non_emb_abs)
    assert m.qk_norm and m.qk_norm_scope == "head" and m.head_dim == 128


def test_qwen3_8b_by_hand() -> None:
    # 36 x (2·4096·4096 + 2·4096·1024 + 3·4096·12288 + 2·4096 + 2·128) + 4096 = 6,946,075,648 non-embedding.
    assert _non_embedding(_load("Qwen/Qwen3-8B")) == 36 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 12288
                                                             + 2 * 4096 + 2 * 128) + 4096


@pytest.mark.parametrize("repo,total_b", [
    # Hub safetensors totals of allenai/OLMo-2-1124-7B and -13B: 7.3B and 13.7B parameters.
    ("allenai/OLMo-2-1124-7B", 7.3), ("allenai/OLMo-2-1124-13B", 13.7),
])
def test_olmo2(repo: str, total_b: float) -> None:
    m = _load(repo)
    assert m.param_count() / 1e9 == pytest.approx(total_b, abs=0.05)
    # Post-norms (2 per layer) and q/k norms over the whole projections: heads·d + kv_heads·d = 2h here.
    assert (m.norm_placement, m.qk_norm_scope, m.qk_norm_params()) == ("post", "projection", 2 * m.hidden)


def test_olmo2_7b_by_hand() -> None:
    # 32 x (4·4096² + 3·4096·11008 + 2·4096 + 2·4096) + 4096 + 2·100352·4096 = 7,298,617,344.
    layer = 4 * 4096**2 + 3 * 4096 * 11008 + 4 * 4096
    assert _load("allenai/OLMo-2-1124-7B").param_count() == 32 * layer + 4096 + 2 * 100352 * 4096


@pytest.mark.parametrize("repo,total_b,tol", [
    # Abdin et al. 2024, "Phi-3 Technical Report": phi-3-mini 3.8B, phi-3-medium 14B parameters.
    ("microsoft/Phi-3-mini-4k-instruct", 3.8, 0.05), ("microsoft/Phi-3-medium-4k-instruct", 14.0, 0.5),
])
def test_phi3(repo: str, total_b: float, tol: float) -> None:
    m = _load(repo)
    assert m.param_count() / 1e9 == pytest.approx(total_b, abs=tol)
    assert m.sliding_window == 2047 and m.full_attention_every is None


def test_phi3_mini_fused_matrices_by_hand() -> None:
    # qkv_proj 3072 x 9216, o_proj 3072², gate_up_proj 3072 x 16384, down_proj 8192 x 3072, 2 RMSNorms:
    # the fused matrices hold exactly the separate ones' parameters.
    m = _load("microsoft/Phi-3-mini-4k-instruct")
    assert m.layer_params() == 3072 * 9216 + 3072**2 + 3072 * 16384 + 8192 * 3072 + 2 * 3072


def test_minitron_4b() -> None:
    # Sreenivas et al. 2024 ("LLM Pruning and Distillation in Practice: The Minitron Approach", Table 1):
    # Minitron 4B has 4.2B parameters, 2.6B of them non-embedding.
    m = _load("nvidia/Minitron-4B-Base")
    assert m.param_count() / 1e9 == pytest.approx(4.2, abs=0.05)
    assert _non_embedding(m) / 1e9 == pytest.approx(2.6, abs=0.05)
    # Squared-ReLU MLP without a gate (2 matrices), LayerNorm1P (weight + bias), 24 heads x 128 != 3072/24.
    assert (m.activation, m.mlp_matrices, m.norm, m.q_dim) == ("relu2", 2, "layernorm", 3072)
    assert m.layer_params() == 2 * 3072 * 3072 + 2 * 3072 * 1024 + 2 * 3072 * 9216 + 4 * 3072


def test_attention_keys_by_hand() -> None:
    # Gemma 2 at s = 8192, w = 4096, half the layers windowed: (8192 + 4096) / 2 = 6144 keys (non-causal);
    # causal: full s/2 = 4096, windowed w − w²/(2s) = 4096 − 1024 = 3072, mean 3584.
    m = _load("google/gemma-2-2b")
    assert m.attention_keys(8192) == 6144
    assert m.attention_keys(8192, causal=True) == 3584
    assert m.attention_keys(2048) == 2048 and m.attention_keys(2048, causal=True) == 1024


@pytest.mark.parametrize("cfg,match", [
    ({"architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
      "intermediate_size": 128, "vocab_size": 10, "use_sliding_window": True}, "use_sliding_window=true"),
    ({"architectures": ["NemotronForCausalLM"], "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
      "intermediate_size": 128, "vocab_size": 10, "attention_bias": True}, "attention_bias=true"),
    ({"architectures": ["Gemma3ForCausalLM"], "num_hidden_layers": 3, "hidden_size": 64, "num_attention_heads": 4,
      "intermediate_size": 128, "vocab_size": 10, "sliding_window": 8,
      "layer_types": ["full_attention", "sliding_attention", "full_attention"]}, "one full_attention layer every k"),
    ({"architectures": ["Gemma3ForConditionalGeneration"]}, "unsupported architecture"),
])
def test_refused_by_name(cfg: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        from_hf_config(cfg)


def test_layer_types_pattern_and_rope_parameters() -> None:
    cfg = json.loads((FIXTURES / "google--gemma-3-1b-pt" / "config.json").read_text())
    cfg.pop("sliding_window_pattern")
    cfg["layer_types"] = ["sliding_attention"] * 5 + ["full_attention"]
    cfg["num_hidden_layers"] = 6
    cfg["rope_parameters"] = {"rope_theta": 123.0}
    m = from_hf_config(cfg)
    assert (m.full_attention_every, m.rope_theta) == (6, 123.0)


@pytest.mark.parametrize("preset,repo", [
    ("gemma2-9b", "google/gemma-2-9b"), ("gemma3-1b", "google/gemma-3-1b-pt"), ("qwen3-8b", "Qwen/Qwen3-8B"),
    ("qwen3-32b", "Qwen/Qwen3-32B"), ("olmo2-7b", "allenai/OLMo-2-1124-7B"),
    ("phi3-mini", "microsoft/Phi-3-mini-4k-instruct"), ("minitron-4b", "nvidia/Minitron-4B-Base"),
])
def test_presets_equal_their_config_json(preset: str, repo: str) -> None:
    assert get_model(preset).model_dump(exclude={"name"}) == _load(repo).model_dump(exclude={"name"})
