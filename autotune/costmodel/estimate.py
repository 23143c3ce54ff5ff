"""One layout in, an :class:`Estimate`-shaped dict out: memory breakdown, verdict and (with the time
model) step time, throughput, MFU and training time. ``estimate_arrays`` scores many layouts at once."""

from __future__ import annotations

from typing import Any

from autotune.config import ParallelConfig
from autotune.costmodel.layout import Layout, layout_scalars
from autotune.costmodel.memory import memory_breakdown
from autotune.spec import ClusterSpec, GPUSpec, ModelSpec, TrainingSpec

__all__ = ["estimate", "estimate_arrays", "MEMORY_KEYS"]

MEMORY_KEYS = ("weights", "gradients", "optimizer", "activations", "other", "total")


def estimate_arrays(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, gpus_per_node: int,
                    L: Layout) -> dict[str, Any]:
    """Memory (GiB) and time figures for one layout (ints) or many (numpy arrays)."""
    return {"memory": memory_breakdown(model, training, gpu, L)}


def _f(x: Any) -> float:
    return float(x)


def estimate(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, cluster: ClusterSpec,
             cfg: ParallelConfig) -> dict[str, Any]:
    """A JSON-ready estimate of one layout (the ``autotune estimate --json`` object)."""
    raw = estimate_arrays(model, training, gpu, cluster.gpus_per_node, layout_scalars(cfg))
    mem = raw["memory"]
    return {
        "model": model.name,
        "gpu": gpu.name,
        "gpus": cfg.world,
        "config": cfg.to_dict() | {"dp_replicate": cfg.dp_replicate},
        "params": model.param_count(),
        "memory_gib": {k: _f(mem[k]) for k in MEMORY_KEYS},
        "capacity_gib": _f(mem["capacity"]),
        "fits": bool(mem["fits"]),
        "worst_stage": int(mem["worst_stage"]),
    }
