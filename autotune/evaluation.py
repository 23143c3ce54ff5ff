"""The Evaluator contract: a layout in, a typed :class:`TrialResult` out.

Evaluators run inside Ray workers. They never open the database and never import optuna; the driver
turns each result into an Optuna trial state and the only DB write.
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from autotune.config import ParallelConfig
from autotune.spec import GPUSpec, ModelSpec, TrainingSpec

__all__ = ["Status", "STATUSES", "EvalTask", "TrialResult", "Evaluator"]

Status = Literal["ok", "oom", "infeasible", "timeout", "crash", "nan", "unsupported", "error", "pruned"]
#: Every outcome a trial can have. ``ok`` is the only success; ``pruned`` is a measured trial the
#: driver's pruner stopped early because it was clearly slower than earlier ones.
STATUSES: tuple[str, ...] = get_args(Status)


@dataclass(frozen=True, kw_only=True)
class EvalTask:
    """Everything an evaluator needs for one layout (plain data, cheap to ship to a Ray worker)."""

    model: ModelSpec
    training: TrainingSpec
    gpu: GPUSpec
    gpus_per_node: int
    config: ParallelConfig
    trial: int = -1
    """Trial number in the study (-1 outside a study)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Evaluator-specific options (steps, timeouts, fault injection in tests)."""


@dataclass(frozen=True, kw_only=True)
class TrialResult:
    """The outcome of evaluating one layout."""

    status: Status
    """Typed outcome; anything but ``ok`` carries a ``reason``."""
    fidelity: str
    """analytic | dryrun | measure."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Estimate or measurement: step_time_s, tokens_per_s, mfu, memory_gib{...}, time_breakdown_s{...}."""
    reason: str | None = None
    """Why the trial did not succeed."""
    wall_s: float = 0.0
    """Seconds the evaluation took."""
    host: str = dataclasses.field(default_factory=socket.gethostname)
    """Worker host that ran it."""

    @property
    def ok(self) -> bool:
        """True for a successful evaluation."""
        return self.status == "ok"


@runtime_checkable
class Evaluator(Protocol):
    """Turns an :class:`EvalTask` into a :class:`TrialResult`; must never raise for a bad layout."""

    fidelity: str

    def evaluate(self, task: EvalTask) -> TrialResult:
        """Evaluate one layout."""
        ...
