"""A study's evaluations as ``autotune trials`` lists them: sort keys, the JSON item, the table row.

Shared by the command (local storage) and the service's ``/evaluations`` endpoint, so both list the same.
"""

from __future__ import annotations

from typing import Any

from autotune.errors import SpecError
from autotune.evaluation import STATUSES
from autotune.results.best import fidelity_labels
from autotune.results.render import layout_summary
from autotune.store.storage import EvaluationRecord

__all__ = ["SORT_KEYS", "check_filters", "sort_key", "sort_rows", "trial_item", "table_row"]

SORT_KEYS = ("trial", "tokens_per_s", "step_time_s", "memory", "mfu")
"""Orders a listing can take: trial number, then best first by each figure."""


def check_filters(status: str | None, sort: str) -> None:
    """One-line :class:`SpecError` for a status or sort key that does not exist."""
    if status is not None and status not in STATUSES:
        raise SpecError(f"status: {status!r} is not one of {', '.join(STATUSES)}")
    if sort not in SORT_KEYS:
        raise SpecError(f"sort: {sort!r} is not one of {', '.join(SORT_KEYS)}")


def sort_key(sort: str, trial: int, metrics: dict[str, Any]) -> float:
    """Where a row with ``trial`` and ``metrics`` goes in order ``sort`` (smallest first): the trial number,
    or a figure negated where more is better; a missing figure goes last."""
    m = metrics
    if sort == "trial":
        return trial
    if sort == "tokens_per_s":
        return -(m.get("tokens_per_s") or 0.0)
    if sort == "step_time_s":
        return m.get("step_time_s") or float("inf")
    if sort == "memory":
        return (m.get("memory_gib") or {}).get("total", float("inf"))
    return -(m.get("mfu") or 0.0)


def sort_rows(rows: list[EvaluationRecord], sort: str) -> list[EvaluationRecord]:
    """``rows`` in the order ``sort`` (one of :data:`SORT_KEYS`) asks for; ties keep trial order."""
    return sorted(rows, key=lambda r: sort_key(sort, r.trial, r.metrics))


def trial_item(r: EvaluationRecord) -> dict[str, Any]:
    """One evaluation as ``autotune trials --json`` prints it."""
    return {"trial": r.trial, "status": r.status, "fidelity": r.fidelity, **fidelity_labels(r.fidelity, r.metrics),
            "config": r.layout, "reason": r.reason, "cached": r.cached, "wall_s": r.wall_s, "host": r.host,
            "metrics": r.metrics}


def table_row(item: dict[str, Any]) -> tuple[int, str, dict[str, Any], str, dict[str, Any], str | None]:
    """A :func:`trial_item` as a row of :func:`autotune.results.render.print_trials`."""
    layout = item["config"]
    labels = {k: item[k] for k in ("memory_fidelity", "time_fidelity")}
    return (item["trial"], item["status"], labels, layout_summary(layout) if "dp" in layout else str(layout),
            item["metrics"], item["reason"])
