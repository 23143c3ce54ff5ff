"""The state object of a study, as the API returns it and the progress stream sends it.

``{"name", "state", "evaluator", "budget", "done", "counts", "best_step_time_s", "started_at",
"finished_at", "error"}``, and on one study's state (``GET /studies/{name}``, the stream) ``progress``:
the state is the service's (:mod:`autotune.service.runs`); a study in the storage that the service never
ran (submitted from the CLI) reads ``completed``. ``budget`` and ``done`` are the driver's progress
figures while the service runs it (an enumerated analytic study's budget is its number of layouts, known
once its driver has planned it: null before); otherwise ``search.n_trials`` and the stored evaluation
rows. ``counts`` holds every status of :data:`autotune.evaluation.STATUSES` and ``failed``, the statuses
the driver counts as failed (Optuna state FAIL). ``progress`` holds the driver's last figures
(:class:`autotune.study.run_options.Progress`: done, total, best, infeasible, cached, failed, storage_s;
null before the first). The list asked with ``records`` adds ``record``, the study's ``autotune studies
--json`` row (null until stored).

:class:`States` reads them with a few aggregate queries per call, whatever the number of rows: the
counts by ``GROUP BY``, each spec parsed once per text, the best step time from
:class:`autotune.service.best_step.BestSteps`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import optuna

from autotune.errors import AutotuneError
from autotune.evaluation import STATUSES
from autotune.search.objectives import Objective, objective_for
from autotune.service.best_step import BestSteps
from autotune.service.runs import ACTIVE, Run
from autotune.spec import parse_spec
from autotune.store.storage import Storage
from autotune.study.plan import enumerates
from autotune.study.trial_outcome import STATE_OF

__all__ = ["FAILED", "States", "counts_of"]

FAILED = tuple(s for s in STATUSES if STATE_OF[s] == optuna.trial.TrialState.FAIL)
"""Statuses counted as ``failed`` (the driver's failed count)."""


def counts_of(by_status: dict[str, int]) -> dict[str, int]:
    """Every status of :data:`STATUSES` (0 when absent) and ``failed``, from rows counted by status."""
    counts = {s: by_status.get(s, 0) for s in STATUSES}
    return counts | {"failed": sum(counts[s] for s in FAILED)}


@dataclass(frozen=True)
class _Facts:
    evaluator: str
    whole: bool
    n_trials: int
    objective: Objective | None


@functools.lru_cache(maxsize=1024)
def _facts(spec_text: str) -> _Facts | None:
    """What a state needs of a spec (its JSON text), parsed once per text."""
    try:
        spec = parse_spec(json.loads(spec_text))
    except AutotuneError:
        return None
    try:
        objective = objective_for(spec)
    except AutotuneError:
        objective = None
    return _Facts(spec.search.final_evaluator, enumerates(spec.search), spec.search.n_trials, objective)


class States:
    """State objects of the studies over one storage and its service runs (one per app)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.best = BestSteps(storage)

    def one(self, name: str, run: Run | None) -> dict[str, Any] | None:
        """Study ``name``'s state with its ``progress`` (None when neither the storage nor ``run`` has it)."""
        entries = self.storage.study_entries(name)
        if run is None and not entries:
            return None
        by_status = self.storage.status_counts(name).get(name, {})
        state = self._state(name, run, entries[0] if entries else None, by_status)
        return state | {"progress": (run.progress if run else None) or None}

    def all(self, runs: dict[str, Run], records: bool = False) -> list[dict[str, Any]]:
        """Every stored study's state, then those only the service knows of; with its ``record`` when
        ``records``."""
        entries = {e["name"]: e for e in self.storage.study_entries()}
        counts = self.storage.status_counts()
        names = list(entries) + [n for n in runs if n not in entries]
        out = []
        for n in names:
            state = self._state(n, runs.get(n), entries.get(n), counts.get(n, {}))
            if records:
                state["record"] = self._record(entries.get(n), counts.get(n, {}))
            out.append(state)
        return out

    @staticmethod
    def _record(entry: dict[str, Any] | None, by_status: dict[str, int]) -> dict[str, Any] | None:
        """The :meth:`autotune.store.storage.Storage.studies` row of a stored study (its keys in that order)."""
        if entry is None:
            return None
        return {"name": entry["name"], "created_at": entry["created_at"], "evaluations": sum(by_status.values()),
                "ok": by_status.get("ok", 0), "autotune_version": entry["autotune_version"],
                "cost_model_version": entry["cost_model_version"], "spec": entry["spec"]}

    def _state(self, name: str, run: Run | None, entry: dict[str, Any] | None,
               by_status: dict[str, int]) -> dict[str, Any]:
        data = run.spec if run else entry["spec"] if entry else None
        facts = None if data is None else _facts(json.dumps(data, sort_keys=True))
        counts = counts_of(by_status)
        rows = sum(counts[s] for s in STATUSES)
        progress = run.progress if run else {}
        budget = progress.get("total") or (None if facts is None or (facts.whole and run) else
                                           rows if facts.whole else facts.n_trials)
        best = None
        if counts["ok"] and facts is not None and facts.objective is not None:
            best = self.best.get(name, facts.objective, counts["ok"])
        return {
            "name": name,
            "state": run.state if run else "completed",
            "evaluator": facts.evaluator if facts else None,
            "budget": budget,
            "done": progress["done"] if run and run.state in ACTIVE and "done" in progress else rows,
            "counts": counts,
            "best_step_time_s": best,
            "started_at": run.started_at if run else entry["created_at"] if entry else None,
            "finished_at": run.finished_at if run else None,
            "error": run.error if run else None,
        }
