"""A spec file (or an empty spec) with command-line overrides applied at dotted field paths.

``submit`` and ``estimate`` take the same spec files; their flags override fields such as
``search.n_trials`` or ``training.seq_len``. ``gpus`` (estimate's total GPU count) is split into
``cluster.gpus_per_node`` x ``cluster.nodes``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autotune.errors import SpecError
from autotune.spec import read_mapping

__all__ = ["spec_with_overrides"]


def _put(d: dict[str, Any], path: str, value: Any) -> None:
    if value is None:
        return
    *parents, leaf = path.split(".")
    for p in parents:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise SpecError(f"{p}: must be a mapping")
    d[leaf] = value


def spec_with_overrides(spec: Path | None, overrides: dict[str, Any], name: str = "estimate") -> dict[str, Any]:
    """Spec file contents (or an empty spec) with the non-None ``overrides`` (dotted paths) applied."""
    data = read_mapping(spec) if spec else {"name": name}
    if not isinstance(data.get("cluster", {}), dict):
        raise SpecError(f"cluster: must be a mapping (gpu, gpus_per_node, nodes), got {data['cluster']!r}")
    gpus = overrides.pop("gpus", None)
    gpn = overrides.get("cluster.gpus_per_node")
    gpn = data.get("cluster", {}).get("gpus_per_node", 8) if gpn is None else gpn
    if gpus is not None:
        if not isinstance(gpn, int) or isinstance(gpn, bool) or gpn < 1:
            raise SpecError(f"cluster.gpus_per_node: must be a positive integer (got {gpn!r})")
        if gpus < 1:
            raise SpecError(f"gpus: must be >= 1 (got {gpus})")
        if gpus <= gpn:
            overrides["cluster.gpus_per_node"], overrides["cluster.nodes"] = gpus, 1
        elif gpus % gpn:
            raise SpecError(f"gpus: {gpus} is not a multiple of gpus_per_node={gpn}")
        else:
            overrides["cluster.gpus_per_node"], overrides["cluster.nodes"] = gpn, gpus // gpn
    for path, value in overrides.items():
        _put(data, path, value)
    return data
