"""One layout in, an :class:`Estimate`-shaped dict out: memory breakdown, verdict and (with the time
model) step time, throughput, MFU and training time. ``estimate_arrays`` scores many layouts at once."""

from __future__ import annotations

from typing import Any

from autotune.config import ParallelConfig
from autotune.costmodel.layout import Layout, layout_scalars
from autotune.costmodel.memory import memory_breakdown
from autotune.costmodel.time import step_time
from autotune.spec import ClusterSpec, GPUSpec, ModelSpec, TrainingSpec

__all__ = ["estimate", "estimate_arrays", "MEMORY_KEYS", "TIME_KEYS", "COST_MODEL_VERSION"]

MEMORY_KEYS = ("weights", "gradients", "optimizer", "activations", "other", "total")
TIME_KEYS = ("compute", "recompute", "tp_comm", "cp_comm", "pp_bubble", "pp_p2p", "dp_comm_exposed", "optimizer")
#: Bumped whenever a formula changes, so cached evaluations of an older model are not reused.
COST_MODEL_VERSION = "4"


def estimate_arrays(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, gpus_per_node: int,
                    L: Layout) -> dict[str, Any]:
    """Memory (GiB) and time figures for one layout (ints) or many (numpy arrays)."""
    return {"memory": memory_breakdown(model, training, gpu, L),
            "time": step_time(model, training, gpu, gpus_per_node, L)}


def _f(x: Any) -> float:
    return float(x)


def estimate(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, cluster: ClusterSpec,
             cfg: ParallelConfig) -> dict[str, Any]:
    """A JSON-ready estimate of one layout (the ``autotune estimate --json`` object)."""
    raw = estimate_arrays(model, training, gpu, cluster.gpus_per_node, layout_scalars(cfg))
    mem, tm = raw["memory"], raw["time"]
    out = {
        "model": model.name,
        "gpu": gpu.name,
        "gpus": cfg.world,
        "config": cfg.to_dict() | {"dp_replicate": cfg.dp_replicate},
        "params": model.param_count(),
        "memory_gib": {k: _f(mem[k]) for k in MEMORY_KEYS},
        "capacity_gib": _f(mem["capacity"]),
        "fits": bool(mem["fits"]),
        "worst_stage": int(mem["worst_stage"]),
        "step_time_s": _f(tm["step_time_s"]),
        "time_breakdown_s": {k: _f(tm[k]) for k in TIME_KEYS},
        "tokens_per_s": _f(tm["tokens_per_s"]),
        "tflops_per_gpu": _f(tm["tflops_per_gpu"]),
        "hw_tflops_per_gpu": _f(tm["hw_tflops_per_gpu"]),
        "mfu": _f(tm["mfu"]),
        "hfu": _f(tm["hfu"]),
    }
    steps = training.total_steps()
    if steps is not None:
        seconds = steps * out["step_time_s"]
        out["training_steps"] = int(steps)
        out["training_days"] = seconds / 86400.0
        out["gpu_hours"] = seconds / 3600.0 * cfg.world
        if cluster.price_per_gpu_hour is not None:
            out["cost"] = out["gpu_hours"] * cluster.price_per_gpu_hour
    return out
