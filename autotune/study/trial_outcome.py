"""One asked trial's outcome: screened before dispatch, recorded as an evaluation row, told to the sampler.

Per asked trial: space point -> :func:`derive` (invalid -> PRUNED, reason stored, never dispatched) ->
framework capability table (unsupported -> PRUNED) -> analytic memory screen (over capacity ->
COMPLETE with the estimate and a positive constraint, so constrained samplers learn; never
dispatched) -> evaluation cache (same model, cluster, training, layout, fidelity and cost-model
version -> reuse) -> Ray worker (dispatched by :mod:`autotune.study.driver`) -> :class:`TrialResult` ->
tell + one evaluation row. Outcome -> Optuna state: ok -> COMPLETE; oom/infeasible/unsupported/pruned
-> PRUNED; crash/timeout/nan/error -> FAIL. A measured trial the pruner stopped is recorded as
``pruned`` and never cached.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import optuna

from autotune.config import ParallelConfig, derive, layout_kwargs
from autotune.costmodel import estimate
from autotune.costmodel.estimate import COST_MODEL_VERSION, memory_reason
from autotune.costmodel.reliability import with_expected
from autotune.errors import InfeasibleConfig
from autotune.evaluation import TrialResult
from autotune.search.frameworks import unsupported_reason
from autotune.search.samplers import CONSTRAINT
from autotune.search.thompson import MEMORY_ATTR
from autotune.spec import ClusterSpec, TrainingSpec
from autotune.store.mirror import FinishedTrial
from autotune.store.storage import EvaluationRecord
from autotune.study.plan import StudyPlan
from autotune.study.run_options import RunOptions

__all__ = ["STATE_OF", "Asked", "Pending", "TrialOutcomes", "reason_kind", "trial_user_attrs"]

TrialState = optuna.trial.TrialState
#: Typed outcome -> Optuna state.
STATE_OF: dict[str, TrialState] = {
    "ok": TrialState.COMPLETE, "oom": TrialState.PRUNED, "infeasible": TrialState.PRUNED,
    "unsupported": TrialState.PRUNED, "crash": TrialState.FAIL, "timeout": TrialState.FAIL,
    "nan": TrialState.FAIL, "error": TrialState.FAIL, "pruned": TrialState.PRUNED,
}


@dataclass
class Asked:
    """A trial asked on the in-memory study and its RUNNING mirror in the DB study."""

    mem: optuna.trial.Trial
    db_id: int
    number: int
    """The DB trial number (the one users see)."""
    claimed: bool
    """Re-queued trial claimed from WAITING whose DB row already has params."""


@dataclass
class Pending:
    """A trial that passed the screen: its layout, cluster, evaluation-cache key and the screen's analytic
    estimate, to be evaluated."""

    trial: Asked
    params: dict[str, Any]
    cfg: ParallelConfig
    cluster: ClusterSpec
    training: TrainingSpec
    key: str
    estimate: dict[str, Any]


#: Estimate keys a dry run measures itself: never copied from the analytic estimate onto a dry-run result.
_MEASURED_BY_DRY_RUN = frozenset({"memory_gib", "capacity_gib", "fits", "worst_stage"})


def trial_user_attrs(rec: EvaluationRecord) -> dict[str, Any]:
    """The user attributes an evaluation row's Optuna trial carries (what optuna-dashboard shows)."""
    m = rec.metrics
    attrs: dict[str, Any] = {"status": rec.status, "fidelity": rec.fidelity, "layout": rec.layout}
    if rec.reason:
        attrs["reason"] = rec.reason
    if m:
        attrs |= {"memory_gib": round(m["memory_gib"]["total"], 3), "step_time_s": m.get("step_time_s"),
                  "tokens_per_s": m.get("tokens_per_s"), "mfu": m.get("mfu")}
    return attrs


def reason_kind(reason: str) -> str:
    """A reason with its numbers blanked, to group similar rejections."""
    return re.sub(r"\d+(\.\d+)?", "N", reason)[:200]


def _scored(status: str, kind: str | None, metrics: dict[str, Any]) -> bool:
    """Whether a record carries objective values: an ``ok`` result, or a layout rejected for memory (its
    analytic estimate; told to the sampler beside the memory constraint)."""
    return status == "ok" or (kind == "memory" and bool(metrics))


class TrialOutcomes:
    """Screens one study's proposals and turns each outcome into its evaluation row and its sampler tell."""

    def __init__(self, plan: StudyPlan, options: RunOptions):
        self.plan = plan
        self.spec = plan.spec
        self.problem = plan.problem
        self.objective = plan.objective
        self.space = plan.space
        self.options = options
        self.fidelity = options.evaluator

    def _cache_key(self, cfg: ParallelConfig, cluster: ClusterSpec, training: TrainingSpec) -> str:
        blob = json.dumps({
            "model": self.problem.model.model_dump(mode="json"), "gpu": self.problem.gpu.model_dump(mode="json"),
            "gpus_per_node": cluster.gpus_per_node, "nodes": cluster.nodes, "price": cluster.price_per_gpu_hour,
            "reliability": cluster.model_dump(mode="json", include={"reliability"}),
            "training": training.model_dump(mode="json"), "layout": cfg.to_dict(),
            "fidelity": self.fidelity, "cost_model": COST_MODEL_VERSION, "options": self.options.evaluator_options,
        }, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def screen(self, trial: Asked, params: dict[str, Any]) -> Pending | EvaluationRecord:
        """Validate and memory-screen one proposal; a rejection is returned as its record."""
        case = self.plan.case_of(params)
        cluster, training = self.plan.cluster(case.nodes), self.plan.training(case.global_batch)
        kwargs = layout_kwargs(params)
        layout = dict(params)
        try:
            cfg = derive(self.problem.model, training, cluster.gpus, **kwargs)
        except InfeasibleConfig as e:
            return self._record(trial, layout, "infeasible", {}, reason=str(e))
        layout = cfg.to_dict() | self.plan.tags(case)
        if self.space.framework != "any":
            why = unsupported_reason(self.space.framework, cfg, training, layers=self.problem.model.layers)
            if why:
                return self._record(trial, layout, "unsupported", {}, reason=why)
        est = estimate(self.problem.model, training, self.problem.gpu, cluster, cfg)
        est["gpus"] = cluster.gpus
        if not est["fits"]:
            reason = memory_reason(est["memory_gib"]["total"], est["capacity_gib"])
            return self._record(trial, layout, "infeasible", est, reason=reason, kind="memory")
        return Pending(trial, params, cfg, cluster, training, self._cache_key(cfg, cluster, training), est)

    def from_cache(self, p: Pending, hit: EvaluationRecord) -> EvaluationRecord:
        """The record of a screened trial whose evaluation is reused from the cache."""
        return self._record(p.trial, hit.layout, hit.status, hit.metrics, reason=hit.reason, fidelity=hit.fidelity,
                            host=hit.host, key=p.key, cached=True)

    def from_result(self, p: Pending, res: TrialResult) -> EvaluationRecord:
        """The record of a worker's result (a measured trial the pruner stopped becomes ``pruned``)."""
        metrics = self.with_time(p.cfg, p.cluster, res.metrics, p.estimate, p.training) if res.ok \
            else dict(res.metrics)
        metrics |= {"gpus": p.cluster.gpus} if metrics else {}
        status, reason = res.status, res.reason
        if status == "ok" and metrics.get("pruned"):
            steps = len(metrics.get("step_times_s", []))
            status, reason = "pruned", (f"pruned after {steps} timed step(s): tokens/s below the median of "
                                        "earlier trials at that step (MedianPruner)")
        return self._record(p.trial, p.cfg.to_dict() | self.plan.tags(self.plan.case_of(p.params)), status,
                            metrics,
                            reason=reason, fidelity=res.fidelity, wall_s=res.wall_s, host=res.host,
                            key=None if status == "pruned" else p.key)

    def _record(self, trial: Asked, layout: dict[str, Any], status: str, metrics: dict[str, Any],
                *, reason: str | None = None, kind: str | None = None, fidelity: str = "analytic",
                wall_s: float = 0.0, host: str = "", key: str | None = None,
                cached: bool = False) -> EvaluationRecord:
        value = self.objective.values(metrics)[0] if _scored(status, kind, metrics) else None
        return EvaluationRecord(
            study=self.spec.name, trial=trial.number, fidelity=fidelity, layout=layout, metrics=metrics,
            status=status, reason=reason, reason_kind=kind or (reason_kind(reason) if reason else None),
            value=value, wall_s=wall_s, host=host, cache_key=key, cached=cached)

    def tell(self, mem: optuna.Study, trial: Asked, rec: EvaluationRecord) -> FinishedTrial:
        """Tell the in-memory study ``mem``; return what to write for the DB trial."""
        m = rec.metrics
        attrs = trial_user_attrs(rec)
        if m:
            trial.mem.set_constraint(CONSTRAINT, m["memory_gib"]["total"] - m["capacity_gib"])
            trial.mem.set_user_attr(MEMORY_ATTR, m["memory_gib"]["total"])
        values = self.objective.values(m) if _scored(rec.status, rec.reason_kind, m) else None
        state = TrialState.COMPLETE if values is not None else STATE_OF[rec.status]
        if values is not None:
            mem.tell(trial.mem, values, skip_if_finished=True)
        else:
            mem.tell(trial.mem, state=state, skip_if_finished=True)
        frozen = mem.get_trials(deepcopy=False)[trial.mem.number]
        system = {k: v for k, v in frozen.system_attrs.items() if k.startswith("constraints")}
        return FinishedTrial(trial_id=trial.db_id, state=state, values=values, params=frozen.params,
                             distributions=frozen.distributions, user_attrs=attrs, system_attrs=system,
                             write_params=not trial.claimed)

    def with_time(self, cfg: ParallelConfig, cluster: ClusterSpec, metrics: dict[str, Any],
                  est: dict[str, Any] | None = None, training: TrainingSpec | None = None) -> dict[str, Any]:
        """A result that measured no time (the dry run: exact memory) gets every figure of the analytic
        estimate that it did not measure itself — the time figures and what follows from them (from ``est``,
        the screen's estimate of this layout, when given; else estimated at ``training``, default the
        problem's) — marked ``time_fidelity: analytic``; a result with its own step time keeps its figures and
        gets the expected ones with failures at that step time (:func:`autotune.costmodel.reliability.with_expected`).
        """
        est = est or estimate(self.problem.model, training or self.problem.training, self.problem.gpu, cluster, cfg)
        if "step_time_s" in metrics:
            return with_expected(metrics, est, cluster.price_per_gpu_hour)
        analytic = {k: v for k, v in est.items() if k not in metrics and k not in _MEASURED_BY_DRY_RUN}
        return dict(metrics) | analytic | {"time_fidelity": "analytic"}
