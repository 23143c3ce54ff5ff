"""MoE memory and FLOPs against hand-worked numbers: expert-state sharding over ep and ZeRO over edp, routed-token
activations, dispatcher buffers and router logits, the combine's copies, active-parameter FLOPs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.catalog import get_gpu, get_model
from autotune.config import derive
from autotune.costmodel.flops import layer_linear_flops
from autotune.costmodel.layout import layout_scalars
from autotune.costmodel.memory import GIB, activation_bytes_per_layer, memory_breakdown
from autotune.costmodel.moe import DROPLESS_IMBALANCE, expert_shard, expert_stage_params
from autotune.spec import ModelSpec, TrainingSpec

T = TrainingSpec(seq_len=1024, global_batch=16)
#: 4 MoE layers, 8 experts of width 512, top-2, h 1024, GQA 4 kv heads, vocab 32000, untied, bf16 Adam.
SMALL = ModelSpec(name="small-moe", layers=4, hidden=1024, heads=16, kv_heads=4, ffn_hidden=4096, vocab=32000,
                  activation="swiglu", norm="rmsnorm", experts=8, experts_per_token=2, expert_ffn_hidden=512)


def _mem(model: ModelSpec, gpus: int, **kw) -> dict:
    return memory_breakdown(model, T, get_gpu("h100-sxm"), layout_scalars(derive(model, T, gpus, **kw)))


def test_expert_states_on_ep2_edp2() -> None:
    # 4 GPUs, dp 4, ep 2 -> edp = 4/2 = 2. Experts per rank per layer 8/2 = 4 of 3·1024·512 = 1,572,864:
    # 6,291,456 per layer, 25,165,824 on the 4 layers. Dense part: attention 2·1024² + 2·1024·256 = 2,621,440,
    # norms 2,048, router 1024·8 = 8,192: 2,631,680 per layer, 10,526,720 in all, + embedding and output
    # 2·32000·1024 = 65,536,000 + final norm 1,024 = 76,063,744.
    # zero 1, bf16 with fp32 main grads (2 + 4 + 12 B): weights 2·(76,063,744 + 25,165,824) = 202,459,136;
    # gradients 4·101,229,568 = 404,918,272; optimizer 12/4·76,063,744 + 12/2·25,165,824 = 228,191,232
    # + 150,994,944 = 379,186,176.
    L = layout_scalars(derive(SMALL, T, 4, ep=2, zero=1))
    assert (expert_shard(L), expert_stage_params(SMALL, L)[::2]) == (2.0, (25_165_824, 25_165_824))  # first, last
    mem = _mem(SMALL, 4, ep=2, zero=1)
    assert mem["weights"] * GIB == 202_459_136
    assert mem["gradients"] * GIB == 404_918_272
    assert mem["optimizer"] * GIB == 379_186_176


def test_expert_states_fold_over_tp() -> None:
    # 8 GPUs, tp 2, dp 4: stage ranks 8 = etp 2 · ep 4 · edp 1. Experts per rank 8/4 = 2, each over etp 2:
    # 2·1,572,864/2 = 1,572,864 per layer, 6,291,456 on 4 layers; ZeRO over edp 1 leaves the 12 B optimizer
    # states whole: 75,497,472 bytes of expert optimizer state.
    L = layout_scalars(derive(SMALL, T, 8, tp=2, ep=4, etp=2, zero=1, sequence_parallel=True))
    assert (expert_shard(L), expert_stage_params(SMALL, L)[0]) == (1.0, 6_291_456)


def test_moe_layer_activations_by_hand() -> None:
    # s = 1024, b = 1, tp 1, no SP, FlashAttention, no dropout. Per token: attention Q 2h + projection input
    # 2h + K, V 4·256 = 5,120; norm inputs, QKV input, router/MLP input 8h = 8,192; log-sum-exp 4·16 = 64;
    # router logits 4·8 = 32; routed copies 1.25·2 = 2.5, each 2h in + SwiGLU 6·512: 2.5·(2,048 + 3,072)
    # = 12,800; the combine's 4h for each of the token's own 2 copies: 8,192. Sum 34,400 bytes per token.
    L = layout_scalars(derive(SMALL, T, 1))
    assert DROPLESS_IMBALANCE == 1.25
    assert activation_bytes_per_layer(SMALL, T, L, moe=True)[0] == 1024 * 34_400
    # etp 2 (ep 1, 2 GPUs): each rank takes both ranks' copies at half width: 5·(2,048 + 1,536) = 17,920,
    # and combines its own 2 copies per token (8,192).
    L2 = layout_scalars(derive(SMALL, T, 2, etp=2))
    assert activation_bytes_per_layer(SMALL, T, L2, moe=True)[0] == 1024 * (34_400 - 12_800 + 17_920)
    # A capacity factor of 1.0 bounds the busiest rank at the balanced load: 2·5,120 = 10,240.
    capped = SMALL.model_copy(update={"capacity_factor": 1.0})
    assert activation_bytes_per_layer(capped, T, L, moe=True)[0] == 1024 * (34_400 - 12_800 + 10_240)


def test_active_flops_are_twice_the_active_matmul_weights() -> None:
    # SMALL: attention 2·(2,621,440) + router 2·8,192 + 2 experts 2·2·1,572,864 = 11,550,720 per token per layer.
    assert layer_linear_flops(SMALL) == 11_550_720
    # DeepSeek-V3 (MLA, 3 dense layers): 2 FLOPs per active weight, norms and embeddings aside.
    m = get_model("deepseek-v3")
    norms = m.layers * (2 * m.hidden + 1536 + 512)
    matmul = m.active_param_count() - m.embedding_params() - m.head_params() - norms
    assert layer_linear_flops(m) * m.layers == pytest.approx(2 * matmul, rel=1e-12)


def test_deepseek_v3_expert_states_dominate_per_rank() -> None:
    """DeepSeek-V3 on 64 GPUs, ep 64, pp 1 (no uneven stages yet): each rank holds 4 of the 256 experts of
    each of the 58 MoE layers: 4·58·3·7168·2048 = 10.22e9 parameters, 20.4 GB of bf16 weights."""
    m = get_model("deepseek-v3")
    t = TrainingSpec(seq_len=4096, global_batch=64)
    L = layout_scalars(derive(m, t, 64, ep=64, zero=1))
    assert expert_stage_params(m, L)[0] == 4 * 58 * 3 * 7168 * 2048


@settings(max_examples=40, deadline=None)
@given(ep=st.sampled_from([1, 2, 4, 8]), zero=st.sampled_from([0, 1, 2, 3]))
def test_more_expert_parallelism_never_adds_state(ep, zero) -> None:
    """Physical limit: doubling ep halves the experts a rank holds, so weights + gradients + optimizer never
    grow (8 GPUs, ep and 2·ep)."""
    if ep == 8:
        return
    a, b = _mem(SMALL, 8, ep=ep, zero=zero), _mem(SMALL, 8, ep=2 * ep, zero=zero)
    states = ("weights", "gradients", "optimizer")
    assert sum(b[k] for k in states) <= sum(a[k] for k in states) + 1e-12


def test_dense_model_has_no_expert_terms() -> None:
    dense = get_model("llama3-8b")
    L = layout_scalars(derive(dense, T, 8))
    assert expert_stage_params(dense, L) == (0.0, 0.0, 0.0)
