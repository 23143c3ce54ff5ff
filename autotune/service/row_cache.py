"""Values computed from all of a study's rows (its best report, its HTML report), kept while its row count
stays the same.

Evaluation rows are only ever added (the driver appends them; nothing deletes them), so a study whose
row count is unchanged holds the same rows and a value computed from them still holds: a completed
study's best layout is computed once, not once per request. A running study's count changes with each
stored chunk, so it is computed again then. At most ``size`` values are kept, the least recently used
dropped first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from autotune.store.storage import Storage

__all__ = ["RowCountCache"]


class RowCountCache:
    """Values keyed by (study, key), each valid for the study's row count it was computed at (thread-safe)."""

    def __init__(self, storage: Storage, size: int) -> None:
        self.storage, self.size = storage, size
        self._values: OrderedDict[tuple[str, Hashable], tuple[int, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, study: str, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value of ``(study, key)``: kept, or ``compute()`` when the study's row count changed."""
        rows = self.storage.evaluation_count(study)
        with self._lock:
            kept = self._values.get((study, key))
            if kept is not None and kept[0] == rows:
                self._values.move_to_end((study, key))
                return kept[1]
        value = compute()
        with self._lock:
            self._values[(study, key)] = (rows, value)
            self._values.move_to_end((study, key))
            while len(self._values) > self.size:
                self._values.popitem(last=False)
        return value
