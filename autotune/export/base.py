"""The exporter contract: a ParallelConfig becomes a framework's launch configuration text (a launch
script, or a config file the launch script reads)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from autotune.config import ParallelConfig
from autotune.errors import InfeasibleConfig
from autotune.search.frameworks import require_supported
from autotune.spec import ClusterSpec, ModelSpec, TrainingSpec

__all__ = ["Exporter", "check_exportable"]


@runtime_checkable
class Exporter(Protocol):
    """Renders one layout as the launch configuration of one framework."""

    name: str
    """Framework name, a key of :data:`autotune.search.frameworks.RULES`."""
    suffix: str
    """File suffix of the rendered text, with the dot (".json")."""

    def render(
        self, model: ModelSpec, training: TrainingSpec, cluster: ClusterSpec, cfg: ParallelConfig
    ) -> str:
        """The launch configuration; raises :class:`InfeasibleConfig` when the framework cannot run it."""
        ...


def check_exportable(
    framework: str, training: TrainingSpec, cluster: ClusterSpec, cfg: ParallelConfig, *, layers: int | None = None
) -> None:
    """Raise :class:`InfeasibleConfig` unless ``cfg`` fills the cluster, meets the global batch and
    ``framework`` supports it (its pipeline split of ``layers`` decoder layers included)."""
    if cfg.world != cluster.gpus:
        raise InfeasibleConfig(
            f"{framework}: layout tp*pp*cp*dp={cfg.tp}*{cfg.pp}*{cfg.cp}*{cfg.dp}={cfg.world}"
            f" does not match the cluster's {cluster.gpus} GPUs"
        )
    if cfg.micro_batch * cfg.grad_accum * cfg.dp != training.global_batch:
        raise InfeasibleConfig(
            f"{framework}: micro_batch*grad_accum*dp={cfg.micro_batch}*{cfg.grad_accum}*{cfg.dp}"
            f" does not equal global_batch={training.global_batch}"
        )
    require_supported(framework, cfg, training, layers=layers)
