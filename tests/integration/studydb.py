"""A small study database written by the real :class:`Driver`, with Ray replaced by an in-process pool.

The analytic evaluator runs in this process (``workers.registry.evaluate_batch``), so building a study
takes a few seconds (mostly Optuna's SQLite writes). :func:`make_study_db` also adds a crashed row whose
reason is a script tag and a copy of the evaluation rows (not the Optuna trials) under a script-tag
name, for the HTML-escaping tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from autotune.evaluation import EvalTask, TrialResult
from autotune.spec import parse_spec
from autotune.store.storage import EvaluationRecord, Storage
from autotune.study.driver import Driver, RunOptions
from workers.registry import evaluate_batch

EVIL = "<script>alert(1)</script>"
STUDY = "mini"
SPEC = {
    "name": STUDY,
    "model": {"name": EVIL, "layers": 8, "hidden": 1024, "heads": 16, "vocab": 32000},
    "cluster": {"gpu": "h100-sxm", "gpus_per_node": 8, "nodes": [1, 2]},
    "training": {"seq_len": 2048, "global_batch": 64, "precision": "bf16", "tokens": 1e9},
    "search": {"space": "megatron", "sampler": "tpe", "n_trials": 40, "workers": 1, "seed": 0},
    "objective": "throughput",
}


class LocalPool:
    """Stands in for :class:`autotune.study.dispatch.RayPool`: evaluates batches in this process."""

    def __init__(self, evaluator: str, workers: int, address: str | None = None, task_timeout_s: float = 0.0):
        self.evaluator = evaluator

    def run(self, tasks: Sequence[EvalTask], on_step: object = None) -> list[TrialResult]:
        """Evaluate ``tasks`` in order (no per-step reports, like a batched Ray task)."""
        del on_step
        return evaluate_batch(self.evaluator, list(tasks))

    def close(self) -> None:
        """Nothing to release."""


def make_study_db(path: Path) -> str:
    """Write the ``mini`` study (40 trials) and its script-named copy to ``path``; return the URL."""
    url = f"sqlite:///{path}"
    store = Storage(url)
    spec = parse_spec(SPEC)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("autotune.study.dispatch.RayPool", LocalPool)
        driver = Driver(spec, store, RunOptions(n_trials=40, evaluator="analytic", workers=1, seed=0))
        driver.run(driver.open(create=True))
    rows = store.evaluations(STUDY)
    crash = EvaluationRecord(study=STUDY, trial=len(rows), fidelity="analytic", layout={"tp": 1}, metrics={},
                             status="crash", reason=EVIL, reason_kind=EVIL)
    store.add_evaluations([crash])
    store.add_study(EVIL, SPEC, "test", "test")
    store.add_evaluations([dataclasses.replace(r, study=EVIL) for r in store.evaluations(STUDY)])
    store.close()
    return url
