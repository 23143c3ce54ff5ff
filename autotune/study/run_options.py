"""How a study is run (:class:`RunOptions`) and what a run reports as it goes (:class:`Progress`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunOptions", "Progress"]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How to run a study (spec values after CLI overrides)."""

    n_trials: int
    timeout_s: float | None = None
    sampler: str = "tpe"
    evaluator: str = "analytic"
    workers: int = 2
    seed: int | None = None
    ray_address: str | None = None
    use_cache: bool = True
    batch: int = 16
    task_timeout_s: float = 600.0
    evaluator_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Progress:
    """What the progress bar shows."""

    done: int = 0
    total: int = 0
    best: float | None = None
    infeasible: int = 0
    cached: int = 0
    failed: int = 0
    storage_s: float = 0.0
    """Seconds spent reading and writing the database (Optuna mirror, evaluation rows, cache look-ups)."""
