"""The MoE layer's expert backward working set (autotune.costmodel.moe.expert_backward_bytes) and where the memory
model counts it, against bytes worked out by hand from what workers.moe._GroupedMM's backward allocates."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.catalog import get_model
from autotune.config import derive
from autotune.costmodel.layout import layout_scalars
from autotune.costmodel.memory import activation_bytes
from autotune.costmodel.moe import expert_backward_bytes
from autotune.spec import ModelSpec, TrainingSpec

T = TrainingSpec(seq_len=1024, global_batch=16)
#: 4 MoE layers, 8 experts of width 512, top-2, h 1024, GQA 4 kv heads, vocab 32000, untied, bf16 Adam.
SMALL = ModelSpec(name="small-moe", layers=4, hidden=1024, heads=16, kv_heads=4, ffn_hidden=4096, vocab=32000,
                  activation="swiglu", norm="rmsnorm", experts=8, experts_per_token=2, expert_ffn_hidden=512)
T4K = TrainingSpec(seq_len=4096, global_batch=256)


def test_mixtral_expert_backward_is_its_fc2_moment() -> None:
    # Mixtral 8x7B at 4 layers, 16 GPUs, ep 8, pp 2: 4,096 tokens, n = 1.25·2·4,096 = 10,240 copies of the one
    # local expert (h 4,096, f 14,336). fc2: arriving gradient 2h·n = 83,886,080 + input gradient 2f·n
    # = 293,601,280 + the expert's GEMM result 2f·n = 293,601,280 + stacked weight gradient 2·1·14,336·4,096
    # = 117,440,512: 788,529,152 (the dry run's 0.736 GiB of "other" at this stage's peak, in w2's backward).
    # fc1: n·(2f + 4h − 6f) + 2h·n + W < 0. Less the combine's 4h·2·4,096 = 134,217,728: 654,311,424.
    m = get_model("mixtral-8x7b").model_copy(update={"layers": 4})
    L = layout_scalars(derive(m, T4K, 16, ep=8, pp=2, zero=1))
    assert expert_backward_bytes(m, T4K, L) == 654_311_424


def test_deepseek_shaped_expert_backward_is_its_fc1_moment() -> None:
    # DeepSeek-V3's experts (256 of 2048, top-8, h 7168) at 4 layers, 64 GPUs, ep 32: n = 1.25·8·4,096 = 40,960
    # copies over 8 local experts (slice 5,120), W = 2·8·2,048·7,168 = 234,881,024.
    # fc2: n·(2h + 2f) = 754,974,720 + 5,120·2f = 20,971,520 + W = 1,010,827,264.
    # fc1: n·(2f + 4h − 6f) = 40,960·20,480 = 838,860,800 + 5,120·2h = 73,400,320 + W = 1,147,142,144.
    # Less the combine's 4·7,168·8·4,096 = 939,524,096: 207,618,048.
    m = get_model("mixtral-8x7b").model_copy(update={
        "layers": 4, "hidden": 7168, "heads": 56, "kv_heads": 8, "ffn_hidden": 18432, "vocab": 129280,
        "experts": 256, "experts_per_token": 8, "expert_ffn_hidden": 2048, "shared_experts": 1,
        "first_dense_layers": 1})
    L = layout_scalars(derive(m, T4K, 64, ep=32, pp=2, zero=1))
    assert expert_backward_bytes(m, T4K, L) == 207_618_048


def test_first_stage_carries_the_expert_backward() -> None:
    # SMALL on 2 GPUs, pp 2 (2 MoE layers a stage), m = 16: 1F1B keeps 2 micro-batches on the first stage.
    # One MoE layer stores 34,400 bytes per token (test_moe_memory), ·1,024 = 35,225,600. Expert backward:
    # n = 2,560 over 8 experts (slice 320), W = 2·8·512·1,024 = 8,388,608; fc2 2,560·3,072 + 320·1,024 + W
    # = 16,580,608, fc1 2,560·2,048 + 320·2,048 + W = 14,286,848; less 4·1,024·2·1,024: 8,192,000.
    # First stage: 2·2·35,225,600 + 8,192,000 = 149,094,400 (no logits there).
    L = layout_scalars(derive(SMALL, T, 2, pp=2))
    assert expert_backward_bytes(SMALL, T, L) == 8_192_000
    assert activation_bytes(SMALL, T, L)[0] == 149_094_400
    # The last stage's fp32 + bf16 logits 6·1,024·32,000 = 196,608,000 are larger: one micro-batch of 2
    # layers + the logits.
    assert activation_bytes(SMALL, T, L)[1] == 2 * 35_225_600 + 196_608_000
    # Full recompute: 2 micro-batches of 2 checkpoints of 2h·1,024 = 2,097,152, the re-run MoE layer
    # (35,225,600) and its expert backward on top: 8,388,608 + 35,225,600 + 8,192,000 = 51,806,208.
    R = layout_scalars(derive(SMALL, T, 2, pp=2, recompute="full"))
    assert activation_bytes(SMALL, T, R)[0] == 51_806_208


@settings(max_examples=60, deadline=None)
@given(ep=st.sampled_from([1, 2, 4]), etp=st.sampled_from([1, 2]), mb=st.sampled_from([1, 2]),
       k=st.sampled_from([1, 2, 4]), f=st.sampled_from([128, 512, 4096]))
def test_expert_backward_is_bounded(ep, etp, mb, k, f) -> None:
    """Physical limits: never negative, and never more than every gradient the expert backward allocates
    (n·(2h + 2f) + n·(2f + 4h) + 2·2f·n per-expert results + two stacked weight gradients)."""
    m = SMALL.model_copy(update={"experts_per_token": k, "expert_ffn_hidden": f})
    L = layout_scalars(derive(m, T, 8, ep=ep, etp=etp, micro_batch=mb))
    n = 1.25 * k * etp * 1024 * mb
    h, fl = 1024, f / etp
    bound = n * (2 * h + 2 * fl) + n * (2 * fl + 4 * h) + 2 * n * (2 * fl + 2 * h) + 2 * 2 * (8 / ep) * fl * h
    assert 0.0 <= expert_backward_bytes(m, T, L) <= bound
