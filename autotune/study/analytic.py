"""The analytic stage: every layout of a study's space scored in one vectorised pass and stored in bulk.

This is how an ``analytic`` study with ``sampler: auto`` runs (and the first stage of a multi-fidelity
study): at microseconds a layout no sampler beats enumeration, so there is no Optuna trial per layout.
For each case (cluster size × global batch) every point of the specialised space is validated
(``derive``: invalid -> ``infeasible`` with its reason), checked against the framework's capability table
(``unsupported``) and scored by :func:`autotune.costmodel.estimate_many` (over capacity -> ``infeasible``
with reason kind ``memory`` and its estimate; else ``ok``). The rows, in one deterministic order, are
appended in chunks of :data:`CHUNK`, one transaction each (:meth:`Storage.append_stage`), so a killed
driver leaves whole chunks, ``resume`` appends the rest, and concurrent drivers never store a row twice.
A plain analytic study numbers its rows 0, 1, ... (``autotune export --trial N`` takes them); a
multi-fidelity stage stores them unnumbered (trial -1), beside the later stages' Optuna trials.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autotune.config import ParallelConfig
from autotune.costmodel.estimate import memory_reason
from autotune.search.enumerate import score_space
from autotune.store.storage import EvaluationRecord, Storage
from autotune.study.plan import StudyPlan
from autotune.study.run_options import Progress
from autotune.study.trial_outcome import reason_kind

__all__ = ["CHUNK", "Stage", "stage_records", "run_analytic"]

CHUNK = 2000
"""Rows per transaction."""


@dataclass(frozen=True)
class Stage:
    """The rows of an analytic stage and, for each, the point a sampler would have proposed."""

    rows: list[EvaluationRecord]
    params: list[dict[str, Any]]
    """Active params of each row's point, with ``nodes`` / ``global_batch`` when the study has several."""
    configs: list[ParallelConfig | None]
    """Each row's validated layout (None when the layout rules reject it)."""

    def ranked(self, plan: StudyPlan) -> list[int]:
        """Indices of the rows that fit, best first by the study's objective."""
        ok = [i for i, r in enumerate(self.rows) if r.status == "ok"]
        reverse = plan.objective.directions[0] == "maximize"
        return sorted(ok, key=lambda i: plan.objective.values(self.rows[i].metrics)[0], reverse=reverse)


def stage_records(plan: StudyPlan, numbered: bool) -> Stage:
    """Every layout of every case as its evaluation row, in the stage's one order."""
    rows: list[EvaluationRecord] = []
    params: list[dict[str, Any]] = []
    configs: list[ParallelConfig | None] = []
    name = plan.spec.name
    for case in plan.cases:
        cluster, training = plan.cluster(case.nodes), plan.training(case.global_batch)
        tags = plan.tags(case)
        sampled = plan.sampled(case)
        scored = score_space(plan.problem, plan.space, cluster=cluster, training=training, estimates=True)
        assert scored.estimates is not None
        for point, kw, cfg, rejection, est in zip(scored.points, scored.kwargs, scored.derived, scored.rejections,
                                                  scored.estimates, strict=True):
            params.append(point | sampled)
            configs.append(cfg)
            trial = len(rows) if numbered else -1
            if rejection is not None:
                status, reason = rejection
                layout = (kw if cfg is None else cfg.to_dict()) | tags
                rows.append(EvaluationRecord(study=name, trial=trial, fidelity="analytic", layout=layout,
                                             metrics={}, status=status, reason=reason,
                                             reason_kind=reason_kind(reason)))
                continue
            assert cfg is not None and est is not None
            metrics: dict[str, Any] = est | {"gpus": cluster.gpus}
            fits = bool(metrics["fits"])
            reason = None if fits else memory_reason(metrics["memory_gib"]["total"], metrics["capacity_gib"])
            rows.append(EvaluationRecord(
                study=name, trial=trial, fidelity="analytic", layout=cfg.to_dict() | tags, metrics=metrics,
                status="ok" if fits else "infeasible", reason=reason, reason_kind=None if fits else "memory",
                value=plan.objective.values(metrics)[0]))
    return Stage(rows=rows, params=params, configs=configs)


def run_analytic(plan: StudyPlan, storage: Storage, *, numbered: bool = True,
                 on_progress: Callable[[Progress], None] | None = None) -> tuple[Progress, Stage]:
    """Score and store the whole stage (the rows another driver or an earlier run stored are kept, not
    written again); returns the progress and the stage."""
    stage = stage_records(plan, numbered)
    rows = stage.rows
    progress = Progress(done=0, total=len(rows))
    best: dict[str, Any] | None = None
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        new = storage.append_stage(plan.spec.name, start, chunk, numbered=numbered)
        progress.done += len(chunk)
        progress.cached += len(chunk) - new
        progress.infeasible += sum(r.status != "ok" for r in chunk)
        for r in chunk:
            if r.status == "ok" and (best is None or plan.objective.better(r.metrics, best)):
                best = r.metrics
        progress.best = None if best is None else plan.objective.values(best)[0]
        if on_progress:
            on_progress(progress)
    return progress, stage
