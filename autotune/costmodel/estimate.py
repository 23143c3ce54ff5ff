"""Layouts in, :class:`Estimate`-shaped dicts out: memory breakdown, verdict and (with the time model)
step time, throughput, MFU and training time.

:func:`estimate_many` scores any number of layouts in one vectorised pass and builds one JSON-ready dict
per layout; :func:`estimate` is the same path for a single layout, so a layout scored in a study and the
same layout given to ``autotune estimate`` produce identical figures.

``training_days``, ``gpu_hours`` and ``cost`` are the ideal figures (steps × step time). Unless
``cluster.reliability`` is off, each row adds a ``reliability`` block (:mod:`autotune.costmodel.reliability`:
job MTBF, checkpoint size and times, interval, goodput) and the expected figures with failures beside them:
``goodput``, ``expected_training_days``, ``expected_gpu_hours``, ``expected_failures``, ``expected_cost``.
A mixture-of-experts model's rows add ``moe_time_s`` (:data:`autotune.costmodel.time.MOE_DETAIL`): the routed
blocks' parts of the breakdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from autotune.catalog import resolve_stack
from autotune.config import ParallelConfig
from autotune.costmodel.compute import gemm_precision
from autotune.costmodel.layout import Layout, layout_arrays
from autotune.costmodel.memory import memory_breakdown
from autotune.costmodel.reliability import RELIABILITY_KEYS, expected_figures, reliability_arrays
from autotune.costmodel.time import BREAKDOWN, MOE_DETAIL, step_time
from autotune.spec import ClusterSpec, GPUSpec, ModelSpec, StackSpec, TrainingSpec

__all__ = ["estimate", "estimate_many", "estimate_arrays", "memory_reason", "MEMORY_KEYS", "TIME_KEYS",
           "COST_MODEL_VERSION"]

MEMORY_KEYS = ("weights", "gradients", "optimizer", "activations", "other", "total")
TIME_KEYS = BREAKDOWN
#: Bumped whenever a formula changes, so cached evaluations of an older model are not reused.
COST_MODEL_VERSION = "6"
_TIME_SCALARS = ("step_time_s", "tokens_per_s", "tflops_per_gpu", "hw_tflops_per_gpu", "mfu", "hfu")


def memory_reason(total_gib: float, capacity_gib: float, digits: int = 1) -> str:
    """The one wording of a memory rejection: ``memory: X GiB > Y GiB usable``."""
    return f"memory: {total_gib:.{digits}f} GiB > {capacity_gib:.{digits}f} GiB usable"


def estimate_arrays(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, gpus_per_node: int,
                    L: Layout, nics_per_node: int | None = None, stack: StackSpec | None = None) -> dict[str, Any]:
    """Memory (GiB) and time figures for one layout (ints) or many (numpy arrays), on ``stack`` (default
    ``training.stack``)."""
    stack = resolve_stack(stack if stack is not None else training.stack)
    return {"memory": memory_breakdown(model, training, gpu, L),
            "time": step_time(model, training, gpu, gpus_per_node, L, nics_per_node=nics_per_node, stack=stack)}


def _column(x: Any, n: int) -> list[float]:
    """A result field as ``n`` Python floats (a scalar broadcasts)."""
    return np.broadcast_to(np.asarray(x, dtype=np.float64), (n,)).tolist()


def estimate_many(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, cluster: ClusterSpec,
                  configs: Sequence[ParallelConfig], stack: StackSpec | None = None) -> list[dict[str, Any]]:
    """JSON-ready estimates of ``configs`` (the ``autotune estimate --json`` object each), from one
    vectorised pass of the cost model, on ``stack`` (default: ``training.stack``, else plain eager)."""
    n = len(configs)
    if n == 0:
        return []
    L = layout_arrays(configs)
    stack = resolve_stack(stack if stack is not None else training.stack)
    raw = estimate_arrays(model, training, gpu, cluster.gpus_per_node, L, cluster.nics_per_node, stack)
    mem, tm = raw["memory"], raw["time"]
    memory = {k: _column(mem[k], n) for k in MEMORY_KEYS}
    breakdown = {k: _column(tm[k], n) for k in TIME_KEYS}
    scalars = {k: _column(tm[k], n) for k in _TIME_SCALARS}
    moe = {k: _column(tm[f"moe_{k}"], n) for k in MOE_DETAIL} if model.is_moe else None
    capacity = _column(mem["capacity"], n)
    fits = np.broadcast_to(np.asarray(mem["fits"], dtype=bool), (n,)).tolist()
    worst = np.broadcast_to(np.asarray(mem["worst_stage"], dtype=np.int64), (n,)).tolist()
    slowest = np.broadcast_to(np.asarray(tm["slowest_stage"], dtype=np.int64), (n,)).tolist()
    params = model.param_count()
    steps = training.total_steps()
    rel = None
    if cluster.reliability_on:
        rel_raw = reliability_arrays(model, training, cluster.reliability, cluster.gpus_per_node, L, tm["step_time_s"])
        rel = {k: _column(rel_raw[k], n) for k in RELIABILITY_KEYS}
    out = []
    for i, cfg in enumerate(configs):
        row: dict[str, Any] = {
            "model": model.name, "gpu": gpu.name, "stack": stack.name,
            "precision": training.precision, "gemm_precision": gemm_precision(gpu, stack, training),
            "gpus": cfg.world,
            "config": cfg.to_dict() | {"dp_replicate": cfg.dp_replicate}, "params": params,
            "memory_gib": {k: memory[k][i] for k in MEMORY_KEYS}, "capacity_gib": capacity[i],
            "fits": fits[i], "worst_stage": worst[i], "slowest_stage": slowest[i],
            "step_time_s": scalars["step_time_s"][i],
            "time_breakdown_s": {k: breakdown[k][i] for k in TIME_KEYS},
        } | {k: scalars[k][i] for k in _TIME_SCALARS[1:]}
        if moe is not None:
            row["moe_time_s"] = {k: moe[k][i] for k in MOE_DETAIL}
        if steps is not None:
            seconds = steps * row["step_time_s"]
            row["training_steps"] = int(steps)
            row["training_days"] = seconds / 86400.0
            row["gpu_hours"] = seconds / 3600.0 * cfg.world
            if cluster.price_per_gpu_hour is not None:
                row["cost"] = row["gpu_hours"] * cluster.price_per_gpu_hour
        if rel is not None:
            row["reliability"] = {k: rel[k][i] for k in RELIABILITY_KEYS}
            row |= expected_figures(row, row["reliability"], cluster.price_per_gpu_hour)
        out.append(row)
    return out


def estimate(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, cluster: ClusterSpec,
             cfg: ParallelConfig, stack: StackSpec | None = None) -> dict[str, Any]:
    """A JSON-ready estimate of one layout (the ``autotune estimate --json`` object)."""
    return estimate_many(model, training, gpu, cluster, [cfg], stack)[0]
