"""Attention-kernel and fp8 terms against hand-worked numbers (FlashAttention-2/-3 papers' figures)."""

from __future__ import annotations

import pytest

from autotune.catalog import get_gpu, get_model, get_stack
from autotune.config import derive
from autotune.costmodel.compute import (
    FLASH_BWD_RATIO,
    attention_efficiency,
    fp8_gemm_efficiency,
    gemm_efficiency,
    layer_backward_times,
    layer_forward_times,
)
from autotune.costmodel.layout import layout_scalars
from autotune.spec import TrainingSpec


def test_flash_attention_efficiency_curve() -> None:
    k = get_gpu("h100-sxm").attention["flash3"]  # fwd 0.70, bwd 0.52, k_seq 1250 (FlashAttention-3, H100)
    fwd, bwd = attention_efficiency(k, 16384, 128)
    assert fwd == pytest.approx(0.70 * 16384 / (16384 + 1250))  # 0.650: ~643 TFLOP/s, the paper's ~640
    fwd512, _ = attention_efficiency(k, 512, 128)
    assert fwd512 == pytest.approx(0.70 * 512 / 1762)  # 0.203: ~201 TFLOP/s
    fwd64, _ = attention_efficiency(k, 16384, 64)  # head dim 64: (64/80) / (128/144) = 0.9 of head dim 128
    assert fwd64 / fwd == pytest.approx(0.9)
    assert bwd < fwd


def test_flash_backward_over_forward_ratio() -> None:
    # Backward runs 2.5x the forward FLOPs at its own efficiency: time ratio 2.5 * fwd_eff / bwd_eff.
    model, gpu, stack = get_model("llama3-8b"), get_gpu("h100-sxm"), get_stack("megatron-te")
    t = TrainingSpec(seq_len=8192, global_batch=8, stack="megatron-te")
    L = layout_scalars(derive(model, t, 8))
    f = layer_forward_times(model, t, gpu, L, stack)
    b = layer_backward_times(model, t, gpu, L, stack, f)
    fwd_eff, bwd_eff = attention_efficiency(gpu.attention["cudnn"], 8192, 128)
    assert b["core"] / f["core"] == pytest.approx(FLASH_BWD_RATIO * fwd_eff / bwd_eff)  # 2.5 * 0.68/0.50 = 3.4
    assert b["core"] / f["core"] > 2.0
    assert b["linear"] / f["linear"] == pytest.approx(2.0)


def test_causal_flash_core_is_half_the_unfused_work() -> None:
    model, gpu, stack = get_model("llama3-8b"), get_gpu("a100-80gb"), get_stack("eager")
    flash = TrainingSpec(seq_len=4096, global_batch=8)
    L = layout_scalars(derive(model, flash, 8))
    core = layer_forward_times(model, flash, gpu, L, stack)["core"]
    # 1 x 4096 tokens x 4·s·h FLOPs x 1/2 (causal tiles skipped) at FA2's forward efficiency on A100 (0.64 x
    # 4096/(4096+575)) of 312 TFLOP/s
    eff = 0.64 * 4096 / (4096 + 575)
    assert core == pytest.approx(4096 * 4 * 4096 * 4096 * 0.5 / (312e12 * eff))


def test_fp8_gemm_speedup_grows_with_size_and_crosses_over() -> None:
    # H100: bf16 e 0.80 k 102; fp8 e 0.70 k 400 at twice the peak. Throughput ratio fp8/bf16 at width w:
    # 2 * (0.70 / (1 + 400/w)) / (0.80 / (1 + 102/w)): w = 8192 -> 1.73, w = 1024 -> 1.37, w = 128 -> 0.96.
    gpu = get_gpu("h100-sxm")

    def ratio(w: float) -> float:
        return 2 * fp8_gemm_efficiency(gpu, w, 1e9) / gemm_efficiency(gpu, w, 1e9)

    assert ratio(8192) == pytest.approx(2 * (0.70 / (1 + 400 / 8192)) / (0.80 / (1 + 102 / 8192)))
    assert ratio(8192) > ratio(1024) > 1.0 > ratio(128)
    # crossover where 2 * 0.70 (w + 102) = 0.80 (w + 400): w = (320 - 142.8) / 0.6 = 295.3
    assert ratio(295.3) == pytest.approx(1.0, abs=1e-3)


def test_fp8_layer_is_faster_but_well_below_twice() -> None:
    model, gpu, stack = get_model("llama3-8b"), get_gpu("h100-sxm"), get_stack("megatron-te")
    times = {}
    for p in ("bf16", "fp8"):
        t = TrainingSpec(seq_len=4096, global_batch=8, precision=p, stack="megatron-te")
        L = layout_scalars(derive(model, t, 8))
        f = layer_forward_times(model, t, gpu, L, stack)
        times[p] = sum(f.values()) + sum(layer_backward_times(model, t, gpu, L, stack, f).values())
        if p == "fp8":
            assert f["cast"] > 0.0
    assert 1.1 < times["bf16"] / times["fp8"] < 1.8


@pytest.mark.parametrize(("precision", "stack", "expect"), [
    ("fp8", "megatron-te", "fp8"),  # Transformer Engine runs the linear GEMMs in fp8
    ("fp8", "eager", "bf16"),  # a stack without fp8: the GEMMs stay bf16 and MFU divides by the bf16 peak
    ("fp32", "eager", "tf32"),  # fp32 training on TF32 tensor cores
    ("bf16", "megatron-te", "bf16"),
])
def test_estimate_says_which_dtype_the_gemms_ran_in(precision, stack, expect) -> None:
    from autotune.costmodel.estimate import estimate
    from autotune.spec import ClusterSpec

    model, gpu = get_model("llama3-8b"), get_gpu("h100-sxm")
    t = TrainingSpec(seq_len=4096, global_batch=8, precision=precision, stack=stack)
    row = estimate(model, t, gpu, ClusterSpec(gpu="h100-sxm", reliability="off"), derive(model, t, 8))
    assert (row["precision"], row["gemm_precision"]) == (precision, expect)
    # MFU divides by that dtype's dense peak (H100: bf16 989.4, tf32 494.7, fp8 1978.9 TFLOP/s)
    assert row["mfu"] == pytest.approx(row["tflops_per_gpu"] / gpu.peak(expect))


def test_op_level_selective_recompute_adds_no_hardware_flops() -> None:
    # torchtitan's op-level SAC re-runs element-wise ops only; Megatron's selective recompute re-runs the core.
    from autotune.costmodel.time import step_time

    model, gpu = get_model("llama3-8b"), get_gpu("h100-sxm")
    out = {}
    for stack in ("torchtitan-eager", "megatron-te"):
        t = TrainingSpec(seq_len=4096, global_batch=8, stack=stack)
        out[stack] = step_time(model, t, gpu, 8, layout_scalars(derive(model, t, 8, recompute="selective")))
    assert out["torchtitan-eager"]["hw_flops"] == pytest.approx(out["torchtitan-eager"]["model_flops"])
    assert out["megatron-te"]["hw_flops"] > out["megatron-te"]["model_flops"]
