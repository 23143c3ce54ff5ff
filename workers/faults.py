"""The ``faults`` evaluator: the analytic evaluator with failures injected at chosen trials (tests only).

``task.options['faults']`` maps a trial number to a fault kind:

- ``oom``: a typed ``oom`` result (as a measured trial that ran out of device memory reports it);
- ``nan``: a typed ``nan`` result (the loss went NaN);
- ``error``: raises ``RuntimeError`` inside the worker (the batch entry point records ``error``);
- ``crash``: ``os._exit(1)`` inside the Ray worker, as a rank dying in a collective (RayPool: ``crash``);
- ``hang``: sleeps ``options['hang_s']`` (default 3600 s), past RunOptions.task_timeout_s (``timeout``);
- ``kill``: writes the worker's pid to ``<options['pid_dir']>/<trial>.pid`` and sleeps like ``hang``,
  so a test can kill the worker process from outside (RayPool: ``crash``).

Any other trial is scored by :class:`workers.analytic.AnalyticEvaluator`. The registry dispatches
every evaluator but ``analytic`` one layout per Ray task, so a crash or hang takes down only its own
trial, never a batch of others. Not a spec choice (``search.evaluator`` lists the real fidelities);
tests select it through ``RunOptions(evaluator="faults", evaluator_options={"faults": {...}})``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from autotune.evaluation import EvalTask, TrialResult
from workers.analytic import AnalyticEvaluator

__all__ = ["FaultsEvaluator", "KINDS"]

KINDS = ("oom", "nan", "error", "crash", "hang", "kill")


class FaultsEvaluator:
    """Analytic scores, except at the trials named in ``options['faults']``."""

    fidelity = "faults"

    def evaluate(self, task: EvalTask) -> TrialResult:
        """Inject the fault planned for ``task.trial``, else estimate the layout."""
        faults = {int(k): v for k, v in task.options.get("faults", {}).items()}
        kind = faults.get(task.trial)
        hang_s = float(task.options.get("hang_s", 3600.0))
        if kind == "oom":
            return TrialResult(status="oom", fidelity=self.fidelity, reason=f"injected: CUDA out of memory in "
                               f"trial {task.trial} (tried to allocate 2.00 GiB)")
        if kind == "nan":
            return TrialResult(status="nan", fidelity=self.fidelity, reason=f"injected: loss is nan at step 3 "
                               f"of trial {task.trial}")
        if kind == "error":
            raise RuntimeError(f"injected exception in trial {task.trial}")
        if kind == "crash":
            os._exit(1)
        if kind == "kill":
            Path(task.options["pid_dir"], f"{task.trial}.pid").write_text(str(os.getpid()))
        if kind in ("hang", "kill"):
            time.sleep(hang_s)
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (allowed: {', '.join(KINDS)})")
        return dataclasses.replace(AnalyticEvaluator().evaluate(task), fidelity=self.fidelity)
