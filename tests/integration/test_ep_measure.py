"""A measured trial of an expert-parallel layout on Ray's CPU ranks (gloo): it runs, and each rank holds its
share of the experts."""

from __future__ import annotations

import math

import pytest

from autotune.catalog import get_gpu, get_model
from autotune.config import derive
from autotune.evaluation import EvalTask
from autotune.spec import TrainingSpec
from workers.measure import measure_trial

pytestmark = pytest.mark.slow

MOE = get_model("tiny-moe")
TRAIN = TrainingSpec(seq_len=64, global_batch=4, precision="fp32")


def _task(world: int, **layout: object) -> EvalTask:
    return EvalTask(model=MOE, training=TRAIN, gpu=get_gpu("cpu"), gpus_per_node=4,
                    config=derive(MOE, TRAIN, world, **layout), options={"steps": 2, "step_timeout_s": 60})


def test_ep2_over_4_ranks_measures_and_holds_half_the_experts(ray_local) -> None:
    res = measure_trial(_task(4, ep=2))
    assert res.status == "ok", res.reason
    assert math.isfinite(res.metrics["loss"]) and res.metrics["step_time_s"] > 0
    # tiny-moe (models.yaml): 1,474,688 parameters, of which 3 MoE layers x 8 experts x 3 x 128 x 96 = 884,736
    # routed-expert ones; ep 2 keeps 4 experts per layer: 1,474,688 - 442,368 = 1,032,320 fp32 parameters
    # = 4,129,280 B, plus the RoPE table buffer (64 positions x 16 pairs x 2 x 4 B = 8,192 B).
    assert res.metrics["memory_gib"]["weights"] * 2**30 == pytest.approx(4_129_280 + 8_192)


def test_zero1_with_ep_measures(ray_local) -> None:
    # ZeRO-1 shards the dense states over the 2 data-parallel ranks and the experts' over edp (1 here).
    res = measure_trial(_task(2, ep=2, zero=1))
    assert res.status == "ok", res.reason
