"""Study objectives: what Optuna optimises, read from an evaluation's metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autotune.errors import SpecError
from autotune.spec import StudySpec

__all__ = ["Objective", "objective_for"]


@dataclass(frozen=True)
class Objective:
    """Names, directions and extraction of the optimised values."""

    name: str
    keys: tuple[str, ...]
    directions: tuple[str, ...]

    @property
    def multi(self) -> bool:
        """True for a Pareto (multi-objective) study."""
        return len(self.keys) > 1

    def values(self, metrics: dict[str, Any]) -> list[float]:
        """The objective values of one evaluation."""
        return [float(metrics[k]) for k in self.keys]

    def better(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        """Whether metrics ``a`` beat ``b`` on the first objective."""
        va, vb = float(a[self.keys[0]]), float(b[self.keys[0]])
        return va > vb if self.directions[0] == "maximize" else va < vb


def objective_for(spec: StudySpec) -> Objective:
    """The objective a spec asks for; checks it has the data it needs.

    ``time_to_train`` and ``pareto`` minimise the expected days (and cost) with failures, checkpoints and
    restarts (:mod:`autotune.costmodel.reliability`) unless ``cluster.reliability`` is off, then the ideal ones.
    """
    has_size = spec.training.total_samples() is not None
    if spec.objective == "throughput":
        return Objective("throughput", ("tokens_per_s",), ("maximize",))
    if not has_size:
        raise SpecError(f"objective: {spec.objective} needs training.tokens or training.samples (+ epochs)")
    expected = spec.cluster.reliability_on
    days = "expected_training_days" if expected else "training_days"
    if spec.objective == "time_to_train":
        return Objective("time_to_train", (days,), ("minimize",))
    if spec.cluster.price_per_gpu_hour is None:
        return Objective("pareto", (days, "gpus"), ("minimize", "minimize"))
    return Objective("pareto", (days, "expected_cost" if expected else "cost"), ("minimize", "minimize"))
