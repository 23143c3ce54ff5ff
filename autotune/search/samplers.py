"""Optuna samplers by name. ``grid`` is exhaustive enumeration, driven by the driver itself."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna

from autotune.errors import SpecError
from autotune.search.space import SearchSpace
from autotune.search.thompson import ThompsonSampler
from autotune.spec import SAMPLERS

__all__ = ["SAMPLERS", "check_sampler", "make_sampler", "CONSTRAINT"]

#: Trial constraint (``Trial.set_constraint``): GiB over usable memory; <= 0 means the layout fits.
#: TPE, GP and NSGA-II rank constraint violators below every feasible trial.
CONSTRAINT = "memory_over_gib"


def check_sampler(name: str, multi_objective: bool) -> None:
    """Raise :class:`SpecError` when ``name`` is not a sampler or cannot run this kind of study."""
    if name not in SAMPLERS:
        raise SpecError(f"search.sampler: unknown sampler {name!r} (allowed: {', '.join(SAMPLERS)})")
    if name in ("gp", "thompson") and multi_objective:
        raise SpecError(f"search.sampler: {name} optimises one objective; use nsga2 or tpe for a pareto study")


def make_sampler(name: str, seed: int | None, multi_objective: bool,
                 space: SearchSpace | None = None) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, group, constant liar), GP, random, NSGA-II, (grid) random-with-enqueue, or
    Thompson sampling over the enumerated ``space`` (:mod:`autotune.search.thompson`)."""
    builders: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                                  n_startup_trials=10),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
        "grid": lambda: optuna.samplers.RandomSampler(seed=seed),
        "thompson": lambda: ThompsonSampler(space, CONSTRAINT, seed=seed),
    }
    check_sampler(name, multi_objective)
    name = "tpe" if name == "auto" else name  # a sampled study under ``auto`` (dryrun, measure) runs TPE
    if name == "thompson" and space is None:
        raise ValueError("the thompson sampler needs the search space")
    with warnings.catch_warnings():  # TPE's ``group`` is flagged experimental; it is what conditional spaces need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return builders[name]()
