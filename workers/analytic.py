"""The ``analytic`` evaluator: the cost model (memory + time), thousands of layouts a second."""

from __future__ import annotations

import time

from autotune.costmodel import estimate
from autotune.costmodel.estimate import memory_reason
from autotune.evaluation import EvalTask, TrialResult
from autotune.spec import ClusterSpec

__all__ = ["AnalyticEvaluator"]


class AnalyticEvaluator:
    """Scores a layout with :func:`autotune.costmodel.estimate`; a layout over memory is ``oom``."""

    fidelity = "analytic"

    def evaluate(self, task: EvalTask) -> TrialResult:
        """Estimate one layout."""
        start = time.perf_counter()
        cluster = ClusterSpec(gpu=task.gpu.name, gpus_per_node=task.gpus_per_node,
                              nodes=max(1, task.config.world // task.gpus_per_node),
                              price_per_gpu_hour=task.options.get("price_per_gpu_hour"))
        metrics = estimate(task.model, task.training, task.gpu, cluster, task.config)
        wall = time.perf_counter() - start
        if not metrics["fits"]:
            reason = memory_reason(metrics['memory_gib']['total'], metrics['capacity_gib'])
            return TrialResult(status="oom", fidelity=self.fidelity, metrics=metrics, reason=reason, wall_s=wall)
        return TrialResult(status="ok", fidelity=self.fidelity, metrics=metrics, wall_s=wall)
