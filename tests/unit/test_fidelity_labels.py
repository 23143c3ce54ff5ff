"""Honest labels: which fidelity a row's memory and time figures come from, which precisions a measured
trial may run, and the peak a measured MFU divides by (hand-worked numbers)."""

from __future__ import annotations

import pytest

from autotune.results.best import fidelity_labels
from autotune.results.render import fidelity_summary
from autotune.spec import GPUSpec
from workers.measure import measured_mfu
from workers.measure_rank import MEASURED_PRECISIONS, gemm_precision, unmeasured_reason

#: A100-like datasheet peaks (TFLOP/s); no fp8 tensor cores.
A100ISH = GPUSpec(name="a100ish", memory_gib=80, hbm_gbps=2039, intra_node_gbps=300, inter_node_gbps=25,
                  peak_tflops={"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0})
H100ISH = A100ISH.model_copy(update={"name": "h100ish", "peak_tflops": A100ISH.peak_tflops | {"fp8": 1978.9}})
MEM = {"weights": 1.0, "gradients": 1.0, "optimizer": 2.0, "activations": 3.0, "other": 0.5, "total": 7.5}


@pytest.mark.parametrize(("fidelity", "metrics", "memory", "time"), [
    ("analytic", {"memory_gib": MEM, "step_time_s": 1.0}, "analytic", "analytic"),
    # a dry run measures memory exactly and times nothing: trial_outcome adds the cost model's time
    ("dryrun", {"memory_gib": MEM, "step_time_s": 1.0, "time_fidelity": "analytic"}, "dryrun", "analytic"),
    ("measure", {"memory_gib": MEM, "step_time_s": 1.0, "step_times_s": [1.0]}, "measure", "measure"),
    # a measured trial over its memory budget ends before any timed step: memory only
    ("measure", {"memory_gib": MEM}, "measure", None),
    # a layout rejected before evaluation has no figures at all
    ("analytic", {}, None, None),
])
def test_fidelity_labels(fidelity, metrics, memory, time) -> None:
    assert fidelity_labels(fidelity, metrics) == {"memory_fidelity": memory, "time_fidelity": time}


def test_fidelity_summary_text() -> None:
    assert fidelity_summary({"memory_fidelity": "dryrun", "time_fidelity": "analytic"}) == \
        "memory: dryrun, time: analytic"
    assert fidelity_summary({"memory_fidelity": "measure", "time_fidelity": None}) == "memory: measure"
    assert fidelity_summary({"memory_fidelity": None, "time_fidelity": None}) == ""


def test_mfu_divides_by_the_peak_of_the_precision_that_ran() -> None:
    # 3.9e13 FLOPs per iteration in 2 s on 2 ranks = 9.75e12 FLOP/s per rank
    assert measured_mfu(3.9e13, 2.0, 2, A100ISH, "fp32") == pytest.approx(9.75 / 19.5)  # 0.5
    assert measured_mfu(3.9e13, 2.0, 2, A100ISH, "tf32") == pytest.approx(9.75 / 156.0)  # 0.0625
    assert measured_mfu(3.9e13, 2.0, 2, A100ISH, "bf16") == pytest.approx(9.75 / 312.0)  # 0.03125


def test_fp8_is_never_measured() -> None:
    assert "fp8" not in MEASURED_PRECISIONS
    for precision in ("fp32", "bf16", "fp16"):
        assert unmeasured_reason(precision, "cpu", A100ISH) is None
    cpu = unmeasured_reason("fp8", "cpu", A100ISH)
    assert cpu is not None and cpu.startswith("precision fp8 cannot be measured on cpu ranks")
    no_fp8 = unmeasured_reason("fp8", "cuda", A100ISH)
    assert no_fp8 is not None and "cuda" in no_fp8 and "GPU a100ish has no fp8 tensor cores" in no_fp8
    has_fp8 = unmeasured_reason("fp8", "cuda", H100ISH)
    assert has_fp8 is not None and "no fp8 GEMM kernels" in has_fp8 and "bf16 steps" in has_fp8


def test_gemm_precision_follows_torch_tf32_setting() -> None:
    import torch

    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    assert gemm_precision("bf16", "cuda") == "bf16" and gemm_precision("fp16", "cpu") == "fp16"
    assert gemm_precision("fp32", "cpu") == "fp32"
    try:
        matmul.fp32_precision = "ieee"
        assert gemm_precision("fp32", "cuda") == "fp32"
        matmul.fp32_precision = "tf32"
        assert gemm_precision("fp32", "cuda") == "tf32"
        assert gemm_precision("fp32", "cpu") == "fp32"  # CPU GEMMs have no TF32
    finally:
        matmul.fp32_precision = saved
