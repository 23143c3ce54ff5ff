"""Ray side of the driver: start or join Ray, run evaluation batches, map failures to typed results.

Analytic evaluations go out as a few batched tasks (not one tiny task per layout); other fidelities go
one layout per task. A task that raises, a worker that dies and a task past its deadline each become
a typed :class:`TrialResult` (error, crash, timeout) for every layout it carried — the study goes on.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from autotune.errors import AutotuneError
from autotune.evaluation import EvalTask, TrialResult

__all__ = ["RayPool", "MeasurePool", "join_ray", "data_plane", "DATA_PLANE"]

#: The data-plane functions the control plane calls directly (besides the evaluators of
#: ``workers.registry``): name -> "module:function", imported on first use (torch only where needed).
DATA_PLANE: dict[str, str] = {
    "device_info": "workers.microbench:device_info",
    "run_job": "workers.microbench:run_job",
    "measure_trial": "workers.measure:measure_trial",
    "dryrun_estimate": "workers.dryrun:dryrun_estimate",
    "evaluate_batch": "workers.registry:evaluate_batch",
    "evaluators": "workers.registry:EVALUATORS",
}


def data_plane(name: str) -> Any:
    """The data-plane function (or table) registered as ``name`` in :data:`DATA_PLANE`, imported lazily."""
    import importlib

    module, attr = DATA_PLANE[name].split(":")
    return getattr(importlib.import_module(module), attr)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:500]


def join_ray(address: str | None = None) -> bool:
    """Start a local Ray, or join ``address`` / $RAY_ADDRESS, unless Ray is up; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=True,
                 logging_level="ERROR")
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise AutotuneError(f"ray-address: cannot join Ray at {address!r}: {_short(e)}") from e
    return True


class RayPool:
    """Runs evaluator batches on Ray workers."""

    def __init__(self, evaluator: str, workers: int, address: str | None = None, task_timeout_s: float = 600.0):
        import ray

        self._ray = ray
        self.evaluator = evaluator
        self.workers = workers
        self.task_timeout_s = task_timeout_s
        self._owns = join_ray(address)
        self._remote = ray.remote(max_retries=0)(data_plane("evaluate_batch"))

    def run(self, tasks: Sequence[EvalTask],
            on_step: Callable[[EvalTask], Callable[[int, float], bool]] | None = None) -> list[TrialResult]:
        """Evaluate ``tasks`` (order kept); never raises for a worker-side failure.

        ``on_step`` is accepted for the pools' common signature; a batched Ray task reports only at its
        end, so per-step pruning needs :class:`MeasurePool`.
        """
        del on_step
        if not tasks:
            return []
        per_task = math.ceil(len(tasks) / self.workers) if self.evaluator == "analytic" else 1
        chunks = [list(tasks[i:i + per_task]) for i in range(0, len(tasks), per_task)]
        refs = [self._remote.remote(self.evaluator, chunk) for chunk in chunks]
        out: list[list[TrialResult]] = []
        deadline = time.monotonic() + self.task_timeout_s
        for ref, chunk in zip(refs, chunks, strict=True):
            out.append(self._collect(ref, chunk, deadline))
        return [r for chunk in out for r in chunk]

    def _collect(self, ref: Any, chunk: list[EvalTask], deadline: float) -> list[TrialResult]:
        ray = self._ray
        start = time.monotonic()
        try:
            return ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            status, reason = "timeout", f"no result within {self.task_timeout_s:.0f} s"
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayActorError,
                ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError) as e:
            status, reason = "crash", _short(e)
        except ray.exceptions.RayTaskError as e:
            status, reason = "error", _short(e.cause if e.cause is not None else e)
        wall = time.monotonic() - start
        return [TrialResult(status=status, fidelity=self.evaluator, reason=reason, wall_s=wall) for _ in chunk]

    def close(self) -> None:
        """Shut Ray down if this pool started it."""
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()


class MeasurePool:
    """Runs measured trials from the driver process, ``workers`` at a time, with per-step callbacks.

    Each trial is :func:`workers.measure.measure_trial` — its own Ray placement group and rank actors —
    called in a driver thread so that every timed step can be reported to the pruner as it happens.
    """

    def __init__(self, workers: int, address: str | None = None):
        import ray

        self._ray = ray
        self.workers = workers
        self._owns = join_ray(address)

    def run(self, tasks: Sequence[EvalTask],
            on_step: Callable[[EvalTask], Callable[[int, float], bool]] | None = None) -> list[TrialResult]:
        """Measure ``tasks`` (order kept); ``on_step(task)`` gives each trial's step callback."""
        from concurrent.futures import ThreadPoolExecutor

        measure_trial = data_plane("measure_trial")

        def one(task: EvalTask) -> TrialResult:
            try:
                return measure_trial(task, on_step(task) if on_step else None)
            except Exception as e:  # a driver-side failure of one trial must not end the study
                return TrialResult(status="error", fidelity="measure", reason=_short(e))

        with ThreadPoolExecutor(max_workers=self.workers) as ex:
            return list(ex.map(one, tasks))

    def close(self) -> None:
        """Shut Ray down if this pool started it."""
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
