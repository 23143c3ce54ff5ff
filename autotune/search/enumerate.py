"""Exhaustive analytic scoring of a whole search space with the vectorised cost model.

Every point is validated (:func:`derive`), checked against the space's framework, and the valid ones
are scored in one numpy pass. Spaces of tens of thousands of layouts take about a second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from autotune.config import ParallelConfig, derive, layout_kwargs
from autotune.costmodel import estimate_arrays, layout_arrays
from autotune.errors import InfeasibleConfig
from autotune.search.frameworks import unsupported_reason
from autotune.search.space import SearchSpace
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
    configs: list[ParallelConfig | None]
    """The validated layout of each point, None when invalid or unsupported."""
    tokens_per_s: np.ndarray
    """Throughput of each point; NaN when invalid."""
    fits: np.ndarray
    """Whether each point fits memory (False when invalid)."""
    memory_gib: np.ndarray
    """Worst-rank memory of each point; NaN when invalid."""

    def best(self) -> int:
        """Index of the fastest point that fits."""
        score = np.where(self.fits, self.tokens_per_s, -np.inf)
        return int(np.argmax(score))



def score_space(problem: Problem, space: SearchSpace) -> ScoredSpace:
    """Validate and score every point of ``space`` (one GPU count: the cluster's first)."""
    gpus = problem.cluster.gpus
    points, configs = [], []
    for point in space.points():
        points.append(space.active_params(point))
        try:
            cfg = derive(problem.model, problem.training, gpus, **layout_kwargs(point))
        except InfeasibleConfig:
            configs.append(None)
            continue
        if space.framework != "any" and unsupported_reason(space.framework, cfg, problem.training):
            cfg = None
        configs.append(cfg)
    valid = [i for i, c in enumerate(configs) if c is not None]
    tps = np.full(len(points), np.nan)
    mem = np.full(len(points), np.nan)
    fits = np.zeros(len(points), dtype=bool)
    if valid:
        out = estimate_arrays(problem.model, problem.training, problem.gpu, problem.cluster.gpus_per_node,
                              layout_arrays([configs[i] for i in valid]))
        tps[valid] = out["time"]["tokens_per_s"]
        mem[valid] = out["memory"]["total"]
        fits[valid] = out["memory"]["fits"]
    return ScoredSpace(points=points, configs=configs, tokens_per_s=tps, fits=fits, memory_gib=mem)
