"""How a study is run (:class:`RunOptions`) and what a run reports as it goes (:class:`Progress`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autotune.spec import SearchSpec

__all__ = ["RunOptions", "Progress", "options_for"]


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


def options_for(search: SearchSpec, ray_address: str | None, use_cache: bool = True) -> RunOptions:
    """How ``submit``, ``resume`` and the service run a study with these search settings."""
    return RunOptions(n_trials=search.n_trials, timeout_s=search.timeout_s, sampler=search.sampler,
                      evaluator=search.final_evaluator, workers=search.workers, seed=search.seed,
                      ray_address=ray_address, use_cache=use_cache)
