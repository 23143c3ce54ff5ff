"""Measured trials on Ray (CPU, gloo): a real step time at world 4, every typed failure, no orphans.

Each test runs one trial of the tiny model (seq 64, a few sequences) and then checks that it left no
placement group and no rank process behind. Faults are injected through ``task.options``.
"""

from __future__ import annotations

import math
import time

import psutil
import pytest

from autotune.catalog import get_gpu, get_model
from autotune.config import derive
from autotune.evaluation import EvalTask
from autotune.spec import TrainingSpec
from workers.measure import measure_trial
from workers.registry import EVALUATORS, evaluate_batch

pytestmark = pytest.mark.slow

MODEL = get_model("tiny")
TRAIN = TrainingSpec(seq_len=64, global_batch=4, precision="fp32")
CPU = get_gpu("cpu")


def _task(world: int, gpu=CPU, training=TRAIN, **options: object) -> EvalTask:
    layout = {k: options.pop(k) for k in ("tp", "pp", "cp", "vpp", "zero") if k in options}
    cfg = derive(MODEL, training, world, **layout)
    return EvalTask(model=MODEL, training=training, gpu=gpu, gpus_per_node=4, config=cfg,
                    options={"steps": 2, "step_timeout_s": 60} | options)


def _rank_processes() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "RankWorker" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.fixture(autouse=True)
def no_orphans(ray_local):
    """After each trial: every placement group removed, no rank process alive (kills are asynchronous)."""
    yield
    from ray.util import placement_group_table

    assert {v["state"] for v in placement_group_table().values()} <= {"REMOVED"}
    deadline = time.monotonic() + 20
    while _rank_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _rank_processes() == []


def test_pp_dp_world4_reports_step_time_memory_and_loss() -> None:
    seen: list[tuple[int, float]] = []
    alive: list[int] = []

    def on_step(i: int, seconds: float) -> bool:
        seen.append((i, seconds))
        alive.append(len(_rank_processes()))
        return False

    res = measure_trial(_task(4, pp=2), on_step=on_step)
    assert res.status == "ok", res.reason
    m = res.metrics
    assert m["world"] == 4 and m["device"] == "cpu" and m["pruned"] is False
    assert alive == [4, 4]  # the orphan check below sees the rank processes while they run
    assert [i for i, _ in seen] == [0, 1] and m["step_times_s"] == [s for _, s in seen]
    assert m["step_time_s"] > 0 and m["tokens_per_s"] == pytest.approx(4 * 64 / m["step_time_s"])
    assert math.isfinite(m["loss"]) and 0 < m["mfu"] < 1
    assert m["gemm_precision"] == "fp32"  # CPU fp32 GEMMs: the MFU divides by the profile's fp32 peak
    mem = m["memory_gib"]
    assert set(mem) == {"weights", "gradients", "optimizer", "activations", "other", "total"}
    assert mem["weights"] > 0 and mem["optimizer"] > 0 and mem["total"] >= mem["weights"] + mem["optimizer"]
    assert m["capacity_gib"] == pytest.approx(CPU.memory_gib * CPU.usable_fraction) and m["fits"]


def test_on_step_true_stops_early_as_ok_pruned() -> None:
    res = measure_trial(_task(1, steps=5), on_step=lambda i, s: i >= 1)
    assert res.status == "ok" and res.metrics["pruned"] is True and len(res.metrics["step_times_s"]) == 2


def test_over_the_per_rank_budget_is_oom_on_cpu() -> None:
    res = measure_trial(_task(1, gpu=CPU.model_copy(update={"memory_gib": 0.001})))
    assert res.status == "oom" and res.reason.startswith("memory:") and "GiB usable" in res.reason
    assert res.metrics["fits"] is False and res.metrics["memory_gib"]["total"] > res.metrics["capacity_gib"]


def test_a_rank_that_exits_is_crash() -> None:
    res = measure_trial(_task(2, fault="crash", fault_rank=1))
    assert res.status == "crash" and "rank 1" in res.reason and "died" in res.reason


def test_a_hung_rank_is_timeout_and_the_group_is_killed() -> None:
    start = time.monotonic()
    res = measure_trial(_task(2, fault="hang", step_timeout_s=5))
    assert res.status == "timeout" and "step 0" in res.reason and "5 s" in res.reason
    assert time.monotonic() - start < 60


def test_poisoned_parameters_are_nan() -> None:
    res = measure_trial(_task(2, fault="nan", fault_rank=0))
    assert res.status == "nan" and "loss nan" in res.reason


def test_context_parallel_on_gloo_is_unsupported_through_the_registry_in_a_ray_task(ray_local) -> None:
    assert EVALUATORS["measure"] == "workers.measure:MeasureEvaluator"
    run = ray_local.remote(max_retries=0)(evaluate_batch)
    [res] = ray_local.get(run.remote("measure", [_task(2, cp=2)]), timeout=120)
    assert res.status == "unsupported" and res.fidelity == "measure"
    assert "context parallelism on cpu" in res.reason


FP8_REASON = "precision fp8 cannot be measured on cpu ranks: CPU ranks have no fp8 GEMM kernels"


def test_fp8_on_cpu_is_unsupported_before_any_placement_group() -> None:
    from ray.util import placement_group_table

    before = len(placement_group_table())
    res = measure_trial(_task(2, training=TRAIN.model_copy(update={"precision": "fp8"})))
    assert res.status == "unsupported" and res.fidelity == "measure" and res.metrics == {}
    assert res.reason.startswith(FP8_REASON) and "measured precisions: fp32, bf16, fp16" in res.reason
    assert len(placement_group_table()) == before  # refused before a placement group was asked for


def test_a_rank_refuses_fp8_before_joining_a_group() -> None:
    from workers.measure_rank import RankWorker

    task = _task(2, training=TRAIN.model_copy(update={"precision": "fp8"}))
    out = RankWorker().setup(0, "127.0.0.1", 1, task, timeout_s=1.0)  # no group on port 1: it must not try
    assert out["status"] == "unsupported" and out["reason"].startswith(FP8_REASON)
