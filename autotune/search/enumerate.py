"""Exhaustive analytic scoring of a whole search space with the vectorised cost model.

Every point is validated (:func:`derive`), checked against the space's framework, and the valid ones
are scored in one numpy pass (:func:`autotune.costmodel.estimate_many`). Spaces of tens of thousands of
layouts take a fraction of a second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from autotune.config import ParallelConfig, derive, layout_kwargs
from autotune.costmodel import estimate_arrays, layout_arrays
from autotune.costmodel.estimate import estimate_many
from autotune.errors import InfeasibleConfig
from autotune.search.frameworks import unsupported_reason
from autotune.search.space import SearchSpace
from autotune.spec import ClusterSpec, TrainingSpec
from autotune.study.resolve import Problem

__all__ = ["ScoredSpace", "score_space", "point_key"]


def point_key(params: dict[str, Any]) -> str:
    """A canonical key of a space point (active params only, as Optuna records them)."""
    return json.dumps(params, sort_keys=True)


@dataclass(frozen=True)
class ScoredSpace:
    """Every point of a space for one problem: valid layouts with their metrics, and the rejections."""

    points: list[dict[str, Any]]
    """Active params of each point (what a sampler proposes)."""
    kwargs: list[dict[str, Any]]
    """The :func:`derive` arguments of each point (its full layout before validation)."""
    derived: list[ParallelConfig | None]
    """The validated layout of each point, None when the layout rules reject it."""
    configs: list[ParallelConfig | None]
    """The validated layout of each point, None when invalid or unsupported."""
    rejections: list[tuple[str, str] | None]
    """(status, reason) of each point the layout rules (``infeasible``) or the framework (``unsupported``)
    reject; None for a valid layout."""
    tokens_per_s: np.ndarray
    """Throughput of each point; NaN when invalid."""
    fits: np.ndarray
    """Whether each point fits memory (False when invalid)."""
    memory_gib: np.ndarray
    """Worst-rank memory of each point; NaN when invalid."""
    estimates: list[dict[str, Any] | None] | None = None
    """With ``estimates=True``: each valid point's full estimate dict (None for a rejected point)."""

    def best(self) -> int:
        """Index of the fastest point that fits."""
        score = np.where(self.fits, self.tokens_per_s, -np.inf)
        return int(np.argmax(score))


def score_space(problem: Problem, space: SearchSpace, *, cluster: ClusterSpec | None = None,
                training: TrainingSpec | None = None, estimates: bool = False) -> ScoredSpace:
    """Validate and score every point of ``space`` on ``cluster`` with ``training`` (default: the problem's,
    i.e. its first cluster size and global batch); ``estimates`` also returns each valid layout's estimate."""
    cluster = cluster or problem.cluster
    training = training or problem.training
    points, kwargs, derived, configs, rejections = [], [], [], [], []
    for point, active in space.points_with_params():
        points.append(active)
        kw = layout_kwargs(point)
        kwargs.append(kw)
        try:
            cfg = derive(problem.model, training, cluster.gpus, **kw)
        except InfeasibleConfig as e:
            derived.append(None)
            configs.append(None)
            rejections.append(("infeasible", str(e)))
            continue
        derived.append(cfg)
        why = unsupported_reason(space.framework, cfg, training, layers=problem.model.layers) \
            if space.framework != "any" else None
        configs.append(None if why else cfg)
        rejections.append(("unsupported", why) if why else None)
    valid = [i for i, c in enumerate(configs) if c is not None]
    n = len(points)
    tps, mem, fits = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool)
    rows: list[dict[str, Any] | None] | None = None
    chosen = [configs[i] for i in valid]
    if valid and estimates:
        rows = [None] * n
        for i, est in zip(valid, estimate_many(problem.model, training, problem.gpu, cluster, chosen), strict=True):
            rows[i] = est
            tps[i], mem[i], fits[i] = est["tokens_per_s"], est["memory_gib"]["total"], est["fits"]
    elif valid:
        out = estimate_arrays(problem.model, training, problem.gpu, cluster.gpus_per_node, layout_arrays(chosen))
        tps[valid] = out["time"]["tokens_per_s"]
        mem[valid] = out["memory"]["total"]
        fits[valid] = out["memory"]["fits"]
    elif estimates:
        rows = [None] * n
    return ScoredSpace(points=points, kwargs=kwargs, derived=derived, configs=configs, rejections=rejections,
                       tokens_per_s=tps, fits=fits, memory_gib=mem, estimates=rows)
