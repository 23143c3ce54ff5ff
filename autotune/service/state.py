"""The state object of a study, as the API returns it and the progress stream sends it.

``{"name", "state", "evaluator", "budget", "done", "counts", "best_step_time_s", "started_at",
"finished_at", "error", "progress", "record"}``: the state is the service's (:mod:`autotune.service.runs`); a study
in the storage that the service never ran (submitted from the CLI) reads ``completed``. ``budget`` and
``done`` are the driver's progress figures while the service runs it (an enumerated analytic study's
budget is its number of layouts, known once its driver has planned it: null before); otherwise
``search.n_trials`` and the stored evaluation rows. ``counts`` holds every status of
:data:`autotune.evaluation.STATUSES` and ``failed``, the statuses the driver counts as failed
(Optuna state FAIL). ``progress`` holds the driver's last figures (:class:`autotune.study.run_options.Progress`: done,
total, best, infeasible, cached, failed, storage_s; null before the first). ``record`` is the study's
``autotune studies --json`` row (null until stored).
"""

from __future__ import annotations

import functools
from typing import Any

import optuna

from autotune.errors import AutotuneError
from autotune.evaluation import STATUSES
from autotune.results.best import best_report
from autotune.search.objectives import objective_for
from autotune.service.runs import ACTIVE, Run
from autotune.spec import StudySpec, parse_spec
from autotune.store.storage import Storage
from autotune.study.plan import enumerates
from autotune.study.trial_outcome import STATE_OF

__all__ = ["FAILED", "study_state", "status_counts"]

FAILED = tuple(s for s in STATUSES if STATE_OF[s] == optuna.trial.TrialState.FAIL)
"""Statuses counted as ``failed`` (the driver's failed count)."""


def status_counts(storage: Storage, study: str) -> dict[str, int]:
    """Evaluation rows of ``study`` by status, counted in the database, plus ``failed``."""
    total, reasons = storage.rejection_counts(study)
    counts = dict.fromkeys(STATUSES, 0)
    for key, n in reasons.items():
        counts[key.partition(":")[0]] += n
    counts["ok"] = total - sum(n for s, n in counts.items() if s != "ok")
    return counts | {"failed": sum(counts[s] for s in FAILED)}


@functools.lru_cache(maxsize=256)
def _best_step(url: str, study: str, rows: int, ok: int) -> float | None:
    """Step time of the study's best layout (cached per row count: a stream polls it)."""
    store = Storage(url, create=False)
    try:
        report = best_report(store, study, objective_for(parse_spec(store.require_spec(study))), top=0)
    except AutotuneError:
        return None
    finally:
        store.close()
    return (report.get("metrics") or {}).get("step_time_s")


def _spec(data: dict[str, Any] | None) -> StudySpec | None:
    try:
        return None if data is None else parse_spec(data)
    except AutotuneError:
        return None


def study_state(storage: Storage, name: str, run: Run | None, record: dict[str, Any] | None) -> dict[str, Any]:
    """The state object of study ``name`` from its service run and its storage record (either may be None)."""
    spec = _spec(run.spec if run else record["spec"] if record else None)
    counts = status_counts(storage, name) if record else dict.fromkeys((*STATUSES, "failed"), 0)
    rows = sum(counts[s] for s in STATUSES)
    progress = run.progress if run else {}
    whole = spec is not None and enumerates(spec.search)
    budget = progress.get("total") or (None if spec is None or (whole and run) else
                                       rows if whole else spec.search.n_trials)
    best = _best_step(storage.url, name, rows, counts["ok"]) if counts["ok"] else None
    return {
        "name": name,
        "state": run.state if run else "completed",
        "evaluator": spec.search.final_evaluator if spec else None,
        "budget": budget,
        "done": progress["done"] if run and run.state in ACTIVE and "done" in progress else rows,
        "counts": counts,
        "best_step_time_s": best,
        "started_at": run.started_at if run else record["created_at"] if record else None,
        "finished_at": run.finished_at if run else None,
        "error": run.error if run else None,
        "progress": progress or None,
        "record": record,
    }
