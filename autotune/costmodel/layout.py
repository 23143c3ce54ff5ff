"""Layouts as numbers: the cost model's functions take a mapping of ints or numpy arrays.

Every cost-model function is plain arithmetic over these fields, so the same code scores one layout
(Python ints) or a million (numpy arrays broadcast together).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from autotune.config import LAYOUT_FIELDS, PP_SCHEDULES, RECOMPUTE_MODES, ParallelConfig

__all__ = ["FIELDS", "Layout", "layout_scalars", "layout_arrays"]

#: Field order of a layout; ``recompute`` is coded 0 none, 1 selective, 2 full; ``recompute_layers`` 0 = all;
#: ``pp_schedule`` 0 = 1f1b (interleaved when vpp > 1), 1 = gpipe; ``pp_first_layers``/``pp_last_layers``
#: 0 = as many as a middle stage (:func:`autotune.pipeline.stage_layers`).
FIELDS = LAYOUT_FIELDS

Layout = Mapping[str, Any]


def _numeric(cfg: ParallelConfig) -> dict[str, int]:
    d = cfg.to_dict()
    d["recompute"] = RECOMPUTE_MODES.index(cfg.recompute)
    d["recompute_layers"] = cfg.recompute_layers or 0
    d["pp_first_layers"] = cfg.pp_first_layers or 0
    d["pp_last_layers"] = cfg.pp_last_layers or 0
    d["pp_schedule"] = PP_SCHEDULES.index(cfg.pp_schedule)
    return {k: int(d[k]) for k in FIELDS}


def layout_scalars(cfg: ParallelConfig) -> dict[str, int]:
    """One layout as Python ints (the scalar path)."""
    return _numeric(cfg)


def layout_arrays(configs: Iterable[ParallelConfig]) -> dict[str, np.ndarray]:
    """Many layouts as int64 arrays (the vectorised path)."""
    rows = [_numeric(c) for c in configs]
    return {k: np.array([r[k] for r in rows], dtype=np.int64) for k in FIELDS}
