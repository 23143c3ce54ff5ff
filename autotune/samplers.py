"""Optuna samplers by name. ``grid`` is exhaustive enumeration, driven by the driver itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import optuna

from autotune.errors import SpecError

__all__ = ["SAMPLERS", "make_sampler", "CONSTRAINT_ATTR", "constraints"]

SAMPLERS = ("tpe", "gp", "random", "nsga2", "grid")
#: User attribute holding [GiB over usable memory] (<= 0 means it fits).
CONSTRAINT_ATTR = "memory_over_gib"


def constraints(trial: optuna.trial.FrozenTrial) -> Sequence[float]:
    """constraints_func for Optuna: violation = GiB over usable capacity (<= 0 is feasible)."""
    return [float(trial.user_attrs.get(CONSTRAINT_ATTR, 0.0))]


def make_sampler(name: str, seed: int | None, multi_objective: bool) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, group, constant liar), GP, random, NSGA-II or (grid) random-with-enqueue."""
    builders: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                                  n_startup_trials=10, constraints_func=constraints),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed, constraints_func=constraints),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints),
        "grid": lambda: optuna.samplers.RandomSampler(seed=seed),
    }
    if name not in builders:
        raise SpecError(f"search.sampler: unknown sampler {name!r} (allowed: {', '.join(SAMPLERS)})")
    if name == "gp" and multi_objective:
        raise SpecError("search.sampler: gp optimises one objective; use nsga2 or tpe for a pareto study")
    return builders[name]()
