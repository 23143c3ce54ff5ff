"""``thompson``: Thompson sampling over the enumerated search space with Bayesian linear models.

A parallel layout's throughput and memory are close to products of per-dimension factors (memory
falls as 1/tp·1/pp, grows with the micro-batch; the step time's terms scale likewise), so their
logarithms are close to *linear* in the dimensions' one-hot and log2 features — with pairwise
products of the log2 features (tp·pp, tp·micro_batch, …) for the interactions. Three Bayesian ridge
regressions are fitted to the trials so far:

- log objective (tokens/s, or −log time to train) on the layouts that were evaluated,
- log memory (GiB, the ``memory_gib`` user attribute) on the same layouts, against the capacity that
  the memory constraint implies (memory − constraint),
- validity (1 evaluated, 0 rejected: pruned or failed) on every trial (a linear probability model).

Each trial draws one weight vector from each posterior (Thompson sampling: the draw's spread is the
exploration) and proposes the not yet tried point of the space (``SearchSpace.points``, enumerated
once) with the best drawn objective among those the draws say fit and are valid; when none does, the
one with the least drawn memory. The first ``n_startup_trials`` valid trials are uniform over the
untried points. Only the space's definition and the observed trials are used, as by any sampler.

Why: on the three large example spaces (``benchmarks/search_efficiency.py``, median of 10 seeds) it
came within 1 % of the optimum in 175, 124.5 and 52 trials (1.18 %, 0.48 % and 0.47 % of the spaces;
TPE 784, 174 and 508.5; random 6,956, 1,476 and 685.5). TPE treats the joint tp/pp/cp mesh as
unrelated categories and never learns that memory is a product.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from autotune.errors import SpecError
from autotune.search.enumerate import point_key
from autotune.search.space import SearchSpace

__all__ = ["ThompsonSampler", "features", "MAX_POINTS", "MEMORY_ATTR"]

MAX_POINTS = 500_000
"""Largest space the sampler enumerates (a bigger one is an error that names the other samplers)."""
MEMORY_ATTR = "memory_gib"
"""User attribute of a trial holding its worst-rank memory, GiB (set by the driver)."""


def features(space: SearchSpace, points: Sequence[dict[str, Any]]) -> np.ndarray:
    """Design matrix of ``points`` (full points, inactive dimensions at their default): an intercept,
    one-hot of every dimension's value (a joint dimension's components one by one), log2 of every
    positive integer value, and the pairwise products of the log2 columns."""
    rows: list[dict[str, float]] = []
    for p in points:
        f: dict[str, float] = {}
        for d in space.dimensions:
            for name in d.expands or (d.name,):
                v = p[name]
                f[f"{name}={v}"] = 1.0
                if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                    f[f"log2 {name}"] = math.log2(v)
        rows.append(f)
    names = sorted({k for f in rows for k in f})
    x = np.array([[f.get(k, 0.0) for k in names] for f in rows])
    logs = [i for i, k in enumerate(names) if k.startswith("log2 ")]
    pairs = [x[:, i] * x[:, j] for a, i in enumerate(logs) for j in logs[a:]]
    return np.column_stack([np.ones(len(x)), x, *pairs])


class ThompsonSampler(optuna.samplers.BaseSampler):
    """Thompson sampling with Bayesian linear models over every point of ``space`` (single objective);
    ``constraint`` names the trial constraint (``Trial.set_constraint``) that holds GiB over capacity."""

    def __init__(self, space: SearchSpace, constraint: str, seed: int | None = None, n_startup_trials: int = 10,
                 prior_precision: float = 0.1):
        points = list(itertools.islice(space.points(), MAX_POINTS + 1))
        if len(points) > MAX_POINTS:
            raise SpecError(f"search.sampler: thompson enumerates the space, and this one has more than "
                            f"{MAX_POINTS:,} points; use tpe, gp or random")
        self._constraint = f"constraints:{constraint}"
        self._params = [space.active_params(p) for p in points]
        self._index = {point_key(p): i for i, p in enumerate(self._params)}
        self._x = features(space, points)
        self._rng = np.random.default_rng(seed)
        self._startup = n_startup_trials
        self._alpha = prior_precision
        self._chosen: dict[int, dict[str, Any]] = {}
        self._point_of: dict[int, int | None] = {}  # finished trial number -> its point's index
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        """Reseed the random generators (Optuna calls this for parallel workers)."""
        self._rng = np.random.default_rng()
        self._fallback.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """Nothing is sampled jointly through Optuna: the whole point is chosen at the first suggestion."""
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """No relative parameters (see :meth:`infer_relative_search_space`)."""
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """The chosen point's value of ``param_name`` (the point is chosen at the trial's first call)."""
        if trial.number not in self._chosen:
            self._chosen[trial.number] = self._choose(study, trial)
        point = self._chosen[trial.number]
        if param_name in point:
            return point[param_name]
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        """Forget the finished trial's chosen point."""
        self._chosen.pop(trial.number, None)

    # model -------------------------------------------------------------------------------------------
    def _choose(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        seen = np.zeros(len(self._params), dtype=bool)
        seen[[i for i in (self._index.get(point_key(p)) for p in self._chosen.values()) if i is not None]] = True
        tried, valid, score, memory, capacity = [], [], [], [], None
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        for t in study.get_trials(deepcopy=False):
            if t.number == trial.number:
                continue
            i = self._point_of[t.number] if t.number in self._point_of else self._index.get(point_key(t.params))
            if t.state.is_finished():
                self._point_of[t.number] = i
            if i is None:
                continue
            seen[i] = True
            if t.state == TrialState.COMPLETE and t.value is not None and t.value > 0:
                tried.append(i)
                valid.append(1.0)
                score.append(sign * math.log(t.value))
                mem, over = t.user_attrs.get(MEMORY_ATTR), t.system_attrs.get(self._constraint)
                memory.append(math.log(max(mem, 1e-6)) if mem is not None else math.nan)
                if mem is not None and over is not None:
                    capacity = mem - over
            elif t.state in (TrialState.PRUNED, TrialState.FAIL):
                tried.append(i)
                valid.append(0.0)
                score.append(math.nan)
                memory.append(math.nan)
        free = np.flatnonzero(~seen)
        if len(free) == 0:
            return {}
        ok = np.isfinite(score)
        if ok.sum() < self._startup:
            return self._params[int(self._rng.choice(free))]
        x, idx = self._x[free], np.array(tried)
        obj = x @ self._draw(self._x[idx[ok]], np.array(score)[ok])
        allowed = x @ self._draw(self._x[idx], np.array(valid)) > 0.5
        has_mem = ok & np.isfinite(memory)
        if capacity is not None and has_mem.sum() >= self._startup:
            pred_mem = x @ self._draw(self._x[idx[has_mem]], np.array(memory)[has_mem])
            fits = pred_mem <= math.log(max(capacity, 1e-6))
            if not (fits & allowed).any():
                return self._params[int(free[np.argmin(pred_mem)])]
            allowed &= fits
        if not allowed.any():
            allowed[:] = True
        return self._params[int(free[np.argmax(np.where(allowed, obj, -np.inf))])]

    def _draw(self, a: np.ndarray, y: np.ndarray) -> np.ndarray:
        """One draw of the weights of a Bayesian ridge regression of ``y`` on ``a`` (prior precision
        ``prior_precision``, noise variance from the residuals of the posterior mean)."""
        precision = a.T @ a + self._alpha * np.eye(a.shape[1])
        chol = np.linalg.cholesky(precision)
        mean = np.linalg.solve(precision, a.T @ y)
        resid = y - a @ mean
        noise = max(float(resid @ resid) / max(len(y) - 1, 1), 1e-4)
        z = self._rng.standard_normal(a.shape[1])
        return mean + math.sqrt(noise) * np.linalg.solve(chol.T, z)

