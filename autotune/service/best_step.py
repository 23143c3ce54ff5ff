"""The step time of each study's best layout, kept up to date from the rows stored since the last look.

The best layout is the one :func:`autotune.results.best.best_report` names: among the ``ok`` rows that
fit, at the highest fidelity that has any (:data:`autotune.results.best.FIDELITY_RANK`), the best first
objective value, ties going to the lowest (trial, row id), the order ``best_report`` ranks rows in.
:class:`BestSteps` folds each study's ``ok`` rows into its best once: a look reads only the rows with an
id above the highest it has folded, and none at all when the study's ``ok`` count has not changed. When
the rows read do not add up to that count (rows deleted, or rows committed out of id order by two
writers), it folds the study's rows again from the first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from autotune.results.best import FIDELITY_RANK
from autotune.search.objectives import Objective
from autotune.store.storage import Storage

__all__ = ["BestSteps"]


@dataclass
class _Fold:
    objective: Objective
    ok: int = 0
    """``ok`` rows folded."""
    last_id: int = 0
    """Highest row id folded."""
    best: dict[int, tuple[tuple[float, int, int], float | None]] = field(default_factory=dict)
    """Per fidelity rank: (sort key, step time) of the best row so far."""

    def add(self, rows: list[tuple[int, int, str, dict[str, Any]]]) -> None:
        sign = -1.0 if self.objective.directions[0] == "maximize" else 1.0
        for row_id, trial, fidelity, metrics in rows:
            self.ok += 1
            self.last_id = max(self.last_id, row_id)
            if not metrics.get("fits", True):
                continue
            rank = FIDELITY_RANK.get(fidelity, 0)
            key = (sign * self.objective.values(metrics)[0], trial, row_id)
            if rank not in self.best or key < self.best[rank][0]:
                self.best[rank] = (key, metrics.get("step_time_s"))

    def step(self) -> float | None:
        return self.best[max(self.best)][1] if self.best else None


class BestSteps:
    """Best step times of the studies of one storage (thread-safe; one per app)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._folds: dict[str, _Fold] = {}
        self._lock = threading.Lock()

    def get(self, study: str, objective: Objective, ok: int) -> float | None:
        """The best layout's step time of ``study``, whose ``ok`` rows number ``ok`` (None: none fits)."""
        with self._lock:
            fold = self._folds.get(study)
        if fold is not None and fold.objective == objective and fold.ok == ok:
            return fold.step()
        if fold is None or fold.objective != objective or fold.ok > ok:
            fold = _Fold(objective)
        new = _Fold(objective, fold.ok, fold.last_id, dict(fold.best))
        new.add(self.storage.evaluation_metrics(study, status="ok", after_id=new.last_id))
        if new.ok < ok:  # rows below the last id folded were committed since: fold every row again
            new = _Fold(objective)
            new.add(self.storage.evaluation_metrics(study, status="ok"))
        with self._lock:
            self._folds[study] = new
        return new.step()
