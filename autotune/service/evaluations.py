"""Pages of a study's evaluations (``GET /studies/{name}/evaluations``), read a page at a time.

Filters (status, fidelity) are in the query. In trial order a page is one ``LIMIT``/``OFFSET`` query. In
another order (:data:`autotune.results.trials.SORT_KEYS`) the row ids are ranked once from the rows'
metrics alone, by :func:`autotune.results.trials.sort_key` (the order ``autotune trials`` lists), and kept
while the filtered row count stays the same (:data:`ORDERS_KEPT` rankings, least recently used dropped);
a page then reads only its rows by id.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from autotune.results.trials import sort_key, trial_item
from autotune.store.storage import Storage

__all__ = ["Pages", "ORDERS_KEPT"]

ORDERS_KEPT = 64
"""Rankings kept (one per study, filter and sort key)."""


class Pages:
    """Evaluation pages of the studies of one storage (thread-safe; one per app)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._orders: OrderedDict[tuple[str, str | None, str | None, str], list[int]] = OrderedDict()
        self._lock = threading.Lock()

    def _ranked(self, study: str, status: str | None, fidelity: str | None, sort: str) -> list[int]:
        key = (study, status, fidelity, sort)
        count = self.storage.evaluation_count(study, status, fidelity)
        with self._lock:
            ids = self._orders.get(key)
            if ids is not None and len(ids) == count:
                self._orders.move_to_end(key)
                return ids
        rows = self.storage.evaluation_metrics(study, status, fidelity)  # trial order: ties keep it
        ids = [row_id for row_id, trial, _, metrics in sorted(rows, key=lambda r: sort_key(sort, r[1], r[3]))]
        with self._lock:
            self._orders[key] = ids
            self._orders.move_to_end(key)
            while len(self._orders) > ORDERS_KEPT:
                self._orders.popitem(last=False)
        return ids

    def page(self, study: str, status: str | None, fidelity: str | None, sort: str, offset: int,
             limit: int) -> dict[str, Any]:
        """``{"total", "offset", "limit", "items"}``: the ``autotune trials --json`` items of one page."""
        if sort == "trial":
            total = self.storage.evaluation_count(study, status, fidelity)
            rows = self.storage.evaluation_page(study, status, fidelity, offset=offset, limit=limit)
        else:
            ids = self._ranked(study, status, fidelity, sort)
            total, rows = len(ids), self.storage.evaluations_by_id(ids[offset:offset + limit])
        return {"total": total, "offset": offset, "limit": limit, "items": [trial_item(r) for r in rows]}
