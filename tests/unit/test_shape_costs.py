"""FLOPs, activation memory and element-wise traffic of decoupled heads, GeGLU/squared ReLU, q/k norms,
sandwich norms and sliding windows, against hand-worked numbers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.config import derive
from autotune.costmodel.compute import layer_forward_times, replicated_share
from autotune.costmodel.flops import attention_core_flops, layer_linear_flops
from autotune.costmodel.layout import layout_scalars
from autotune.costmodel.memory import activation_bytes_per_layer, stage_params
from autotune.spec import GPUSpec, ModelSpec, TrainingSpec

# h 64, 4 heads of d 32 (q_dim 128 = 2h), 2 kv heads (kv_dim 64), f 96, GeGLU, per-head q/k norms, sandwich norms.
TOY = ModelSpec(layers=4, hidden=64, heads=4, kv_heads=2, head_dim=32, ffn_hidden=96, vocab=128, activation="geglu",
                norm="rmsnorm", qk_norm=True, norm_placement="sandwich")
T16 = TrainingSpec(seq_len=16, global_batch=1)
GPU = GPUSpec(name="toy", memory_gib=80, peak_tflops={"bf16": 1000.0, "fp32": 60.0, "tf32": 500.0}, hbm_gbps=3000,
              intra_node_gbps=400, inter_node_gbps=50, gemm_k_dim=0.0, gemm_k_tokens=0.0)


def _layout(model: ModelSpec, training: TrainingSpec, gpus: int = 1, **kw):
    return layout_scalars(derive(model, training, gpus, **kw))


def test_linear_and_core_flops_by_hand() -> None:
    # 2h(q_dim + 2 kv_dim) + 2 q_dim h + 6hf = 2·64·256 + 2·128·64 + 6·64·96 = 32768 + 16384 + 36864.
    assert layer_linear_flops(TOY) == 86016
    # Core: 4 · s · heads · d = 4 · 16 · 128 (not 4 · s · h).
    assert attention_core_flops(TOY, 16) == 8192
    relu2 = TOY.model_copy(update={"activation": "relu2"})
    assert layer_linear_flops(relu2) == 32768 + 16384 + 4 * 64 * 96


def test_windowed_core_flops_by_hand() -> None:
    # Every 2nd layer full, w = 4 at s = 16: keys (16 + 4) / 2 = 10 per query, core 4 · 10 · 128.
    win = TOY.model_copy(update={"sliding_window": 4, "full_attention_every": 2})
    assert attention_core_flops(win, 16) == 4 * 10 * 128
    # All layers windowed (Mistral v0.1 style): min(s, w) = 4 keys.
    assert attention_core_flops(TOY.model_copy(update={"sliding_window": 4}), 16) == 4 * 4 * 128


def test_activation_bytes_by_hand() -> None:
    # Per token, bf16, tp 1, FlashAttention:
    #   Q 2·128 + projection input 2·128 + K, V 4·64 + GeGLU 6·96 = 1344
    #   q/k norm inputs 2·128 + 2·64, rstd 4 bytes x (4 + 2) heads = 408
    #   4 sandwich norm inputs 4·2·64 + QKV input 2·64 + fc1 input 2·64 = 768;  log-sum-exp 4·4 = 16.
    stored, checkpoint = activation_bytes_per_layer(TOY, T16, _layout(TOY, T16))
    assert stored == 16 * (1344 + 408 + 768 + 16)
    assert checkpoint == 16 * 2 * 64


def test_projection_qk_norm_bytes_and_params() -> None:
    # OLMo 2 style: one rstd per token for q and one for k (8 bytes) instead of one per head (24 bytes);
    # its q/k norm weights (128 + 64) shard with the projections: tp 2 leaves 96 of them per rank.
    olmo = TOY.model_copy(update={"qk_norm_scope": "projection", "norm_placement": "post"})
    stored, _ = activation_bytes_per_layer(olmo, T16, _layout(olmo, T16))
    assert stored == 16 * (1344 + 384 + 8 + (2 * 2 * 64 + 2 * 64 + 2 * 64) + 16)
    assert olmo.replicated_layer_params() == 2 * 64
    first, _ = stage_params(olmo, 2, 1)
    per_layer = (olmo.layer_params() - 128) / 2 + 128
    assert first == pytest.approx(4 * per_layer + 128 * 64 / 2 + 64 + 128 * 64 / 2)


def test_replicated_share_sandwich() -> None:
    # Outside tp: 4 norms 8h + 2 residual adds 6h = 14h = 896; inside: GeGLU 3f + q/k norms 2·(128 + 64) = 672.
    assert replicated_share(TOY) == pytest.approx(896 / (896 + 672))


def test_windowed_core_time_follows_the_causal_band() -> None:
    # s = 16, w = 4, all layers windowed: a causal window visits w − w²/(2s) = 3.5 keys per query against 8 for
    # full causal attention, so the FlashAttention core takes 3.5 / 8 of the full model's time.
    full = layer_forward_times(TOY, T16, GPU, _layout(TOY, T16))["core"]
    win = TOY.model_copy(update={"sliding_window": 4})
    assert layer_forward_times(win, T16, GPU, _layout(win, T16))["core"] == pytest.approx(full * 3.5 / 8)


@settings(max_examples=300, deadline=None)
@given(s=st.integers(1, 131072), w=st.integers(1, 131072), every=st.one_of(st.none(), st.integers(1, 8)),
       layers=st.integers(1, 64))
def test_attention_keys_bounds(s: int, w: int, every: int | None, layers: int) -> None:
    # A query never visits more keys than the non-causal count, which never exceeds s; the causal band covers at
    # least half of it (the full triangle is exactly half) and windows never add keys.
    m = TOY.model_copy(update={"layers": layers, "sliding_window": w, "full_attention_every": every})
    keys, causal = m.attention_keys(s), m.attention_keys(s, causal=True)
    assert 0 < causal <= keys <= s
    assert causal >= keys / 2 - 1e-9
    assert keys <= TOY.attention_keys(s) and causal <= TOY.attention_keys(s, causal=True) + 1e-9
