"""Evaluators by fidelity name, and the batch entry point the Ray tasks run."""

from __future__ import annotations

import importlib
import traceback

from autotune.evaluation import EvalTask, Evaluator, TrialResult

__all__ = ["EVALUATORS", "get_evaluator", "evaluate_batch"]

#: fidelity name -> "module:Class"; modules are imported on first use (torch only where needed).
EVALUATORS: dict[str, str] = {
    "analytic": "workers.analytic:AnalyticEvaluator",
    "dryrun": "workers.dryrun:DryRunEvaluator",
    "measure": "workers.measure:MeasureEvaluator",
    "faults": "workers.faults:FaultsEvaluator",  # fault injection for tests; not a spec choice
}


def get_evaluator(name: str) -> Evaluator:
    """Instantiate the evaluator registered under ``name``."""
    module, cls = EVALUATORS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def evaluate_batch(name: str, tasks: list[EvalTask]) -> list[TrialResult]:
    """Evaluate tasks in order; an exception in one layout becomes its ``error`` result."""
    evaluator = get_evaluator(name)
    results = []
    for task in tasks:
        try:
            results.append(evaluator.evaluate(task))
        except Exception as e:  # a failing layout must not take the batch down with it
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            results.append(TrialResult(status="error", fidelity=name, reason=f"{last}"))
    return results
