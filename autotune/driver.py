"""The study driver: a thin Optuna ask/tell loop that dispatches layouts to Ray workers.

Per asked trial: space point -> :func:`derive` (invalid -> PRUNED, reason stored, never dispatched) ->
framework capability table (unsupported -> PRUNED) -> analytic memory screen (over capacity ->
COMPLETE with the estimate and a positive constraint, so constrained samplers learn; never
dispatched) -> evaluation cache (same model, cluster, training, layout, fidelity and cost-model
version -> reuse) -> Ray worker -> :class:`TrialResult` -> tell + one evaluation row. The driver is the
only DB writer. Outcome -> Optuna state: ok -> COMPLETE; oom/infeasible/unsupported/pruned -> PRUNED;
crash/timeout/nan/error -> FAIL. Measured trials report each timed step's throughput to a
MedianPruner (2 start-up trials, 1 warm-up step; benchmarks/measure_pruning.py), which stops a
layout clearly slower than the median of earlier trials at the same step.

Sampling runs on an in-memory Optuna study (a sampler re-reads the trial history on every suggest,
which over an RDB costs tens of milliseconds per parameter); every trial is mirrored into the study
in the database — created RUNNING when asked, completed with params and attributes when done —
so the DB is the record (dashboard, resume, other drivers) and the sampler stays fast; outcomes are
written a batch per transaction (:mod:`autotune.mirror`), each trial's outcome and evaluation row in
the same transaction. On open, the DB's finished trials seed the in-memory study.

Budget and several drivers: ``n_trials`` counts the study's trials in the DB, whichever driver ran
them. Trials are taken through :func:`autotune.budget.reserve`, which locks the study and never goes
past the budget, so any number of drivers on one study stop at exactly ``n_trials`` trials. When the
budget is taken, a driver waits for the trials still RUNNING: another driver's finish; a dead
driver's (heartbeat older than GRACE_S) are failed and re-queued (Optuna's
RetryHeartbeatStaleTrialCallback) and claimed as new evaluations (a heartbeat-failed trial is not a
study trial). A driver returns when every study trial has finished, so ``resume`` right after a
crash retries the dead driver's trials and reaches the budget.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from autotune import __version__
from autotune.budget import Slot, reserve, usage
from autotune.config import ParallelConfig, derive, layout_kwargs
from autotune.costmodel import estimate
from autotune.costmodel.estimate import COST_MODEL_VERSION
from autotune.errors import InfeasibleConfig
from autotune.frameworks import unsupported_reason
from autotune.mirror import FinishedTrial, record_finished
from autotune.objectives import Objective, objective_for
from autotune.resolve import Problem, resolve
from autotune.samplers import CONSTRAINT, make_sampler
from autotune.space import SearchSpace, load_space
from autotune.spec import ClusterSpec, StudySpec
from autotune.storage import HEARTBEAT_S, EvaluationRecord, Storage
from workers.evaluator import EvalTask

__all__ = ["RunOptions", "Progress", "Driver", "STATE_OF"]

TrialState = optuna.trial.TrialState
#: Typed outcome -> Optuna state.
STATE_OF: dict[str, TrialState] = {
    "ok": TrialState.COMPLETE, "oom": TrialState.PRUNED, "infeasible": TrialState.PRUNED,
    "unsupported": TrialState.PRUNED, "crash": TrialState.FAIL, "timeout": TrialState.FAIL,
    "nan": TrialState.FAIL, "error": TrialState.FAIL, "pruned": TrialState.PRUNED,
}
#: MedianPruner settings for measured trials (benchmarks/measure_pruning.py replays them).
PRUNER_STARTUP_TRIALS = 2
PRUNER_WARMUP_STEPS = 1


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How to run a study (spec values after CLI overrides)."""

    n_trials: int
    timeout_s: float | None = None
    sampler: str = "tpe"
    evaluator: str = "analytic"
    workers: int = 2
    seed: int | None = None
    ray_address: str | None = None
    use_cache: bool = True
    batch: int = 16
    task_timeout_s: float = 600.0
    evaluator_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Progress:
    """What the progress bar shows."""

    done: int = 0
    total: int = 0
    best: float | None = None
    infeasible: int = 0
    cached: int = 0
    failed: int = 0
    storage_s: float = 0.0
    """Seconds spent reading and writing the database (Optuna mirror, evaluation rows, cache look-ups)."""


@dataclass
class _Asked:
    """A trial asked on the in-memory study and its RUNNING mirror in the DB study."""

    mem: optuna.trial.Trial
    db_id: int
    number: int
    """The DB trial number (the one users see)."""
    claimed: bool
    """Re-queued trial claimed from WAITING whose DB row already has params."""


@dataclass
class _Pending:
    trial: _Asked
    params: dict[str, Any]
    cfg: ParallelConfig
    cluster: ClusterSpec
    key: str


def _fail_stale(study: optuna.Study) -> None:
    """Fail (and re-queue) trials whose heartbeat is older than the grace period."""
    with warnings.catch_warnings():  # Optuna marks heartbeat helpers experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def reason_kind(reason: str) -> str:
    """A reason with its numbers blanked, to group similar rejections."""
    return re.sub(r"\d+(\.\d+)?", "N", reason)[:200]


class Driver:
    """Runs one study: asks Optuna, screens, dispatches to Ray, tells, records."""

    def __init__(self, spec: StudySpec, storage: Storage, options: RunOptions, problem: Problem | None = None):
        self.spec = spec
        self.storage = storage
        self.options = options
        self.problem = problem or resolve(spec)
        self.objective: Objective = objective_for(spec)
        self.node_counts = spec.cluster.node_counts
        m, t = self.problem.model, self.problem.training
        self.space: SearchSpace = load_space(spec.search.space).specialise(
            layers=m.layers, heads=m.heads, seq_len=t.seq_len, global_batch=t.global_batch,
            gpu_counts=[n * spec.cluster.gpus_per_node for n in self.node_counts])
        self.fidelity = options.evaluator
        self._sampler = make_sampler(options.sampler, options.seed, self.objective.multi)
        self._in_flight: set[int] = set()
        self._lock = threading.Lock()
        self._seen: set[int] = set()
        self._mem: optuna.Study

    # study lifecycle -----------------------------------------------------------------------------
    def open(self, create: bool) -> optuna.Study:
        """Create (``create``) or load the study in the DB; seed the in-memory sampling study from it."""
        ostore = self.storage.optuna()
        directions = list(self.objective.directions)
        recorder = optuna.samplers.RandomSampler()
        if create:
            study = optuna.create_study(study_name=self.spec.name, storage=ostore, directions=directions,
                                        sampler=recorder, load_if_exists=True)  # a concurrent driver may win
            self.storage.add_study(self.spec.name, self.spec.model_dump(mode="json"), __version__,
                                   COST_MODEL_VERSION)
        else:
            study = optuna.load_study(study_name=self.spec.name, storage=ostore, sampler=recorder)
            _fail_stale(study)
        pruner = None if self.objective.multi else optuna.pruners.MedianPruner(
            n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_STEPS)
        self._mem = optuna.create_study(directions=directions, sampler=self._sampler, pruner=pruner)
        self._sync(study)
        return study

    def _sync(self, study: optuna.Study) -> None:
        """Copy finished DB trials (other drivers', earlier runs') the sampler has not seen yet."""
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        trials = study.get_trials(deepcopy=False)
        new = [t for t in trials if t.state in finished and t.number not in self._seen]
        for t in new:
            self._seen.add(t.number)
        if new:
            self._mem.add_trials(new)

    def _ask(self, slot: Slot, progress: Progress) -> tuple[_Asked, dict[str, Any]]:
        """Ask the sampler for a reserved DB trial (a claimed one with params replays them)."""
        t0 = time.perf_counter()
        params = self.storage.optuna().get_trial(slot.trial_id).params if slot.claimed else {}
        progress.storage_s += time.perf_counter() - t0
        if params:
            self._mem.enqueue_trial(params, skip_if_exists=False)
        mem = self._mem.ask()
        self._seen.add(slot.number)
        return _Asked(mem=mem, db_id=slot.trial_id, number=slot.number, claimed=bool(params)), self._propose(mem)

    # one trial -----------------------------------------------------------------------------------
    def _cluster(self, nodes: int) -> ClusterSpec:
        return self.spec.cluster.model_copy(update={"nodes": nodes})

    def _cache_key(self, cfg: ParallelConfig, cluster: ClusterSpec) -> str:
        blob = json.dumps({
            "model": self.problem.model.model_dump(mode="json"), "gpu": self.problem.gpu.model_dump(mode="json"),
            "gpus_per_node": cluster.gpus_per_node, "nodes": cluster.nodes, "price": cluster.price_per_gpu_hour,
            "training": self.problem.training.model_dump(mode="json"), "layout": cfg.to_dict(),
            "fidelity": self.fidelity, "cost_model": COST_MODEL_VERSION, "options": self.options.evaluator_options,
        }, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _propose(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        params = self.space.sample(lambda name, choices: trial.suggest_categorical(name, list(choices)))
        if len(self.node_counts) > 1:
            params["nodes"] = trial.suggest_categorical("nodes", self.node_counts)
        else:
            params["nodes"] = self.node_counts[0]
        return params

    def _screen(self, trial: _Asked, params: dict[str, Any]) -> _Pending | EvaluationRecord:
        """Validate and memory-screen one proposal; a rejection is returned as its record."""
        cluster = self._cluster(params["nodes"])
        kwargs = layout_kwargs(params)
        layout = dict(params)
        try:
            cfg = derive(self.problem.model, self.problem.training, cluster.gpus, **kwargs)
        except InfeasibleConfig as e:
            return self._record(trial, layout, "infeasible", {}, reason=str(e))
        layout = cfg.to_dict() | {"nodes": cluster.nodes}
        if self.space.framework != "any":
            why = unsupported_reason(self.space.framework, cfg, self.problem.training)
            if why:
                return self._record(trial, layout, "unsupported", {}, reason=why)
        est = estimate(self.problem.model, self.problem.training, self.problem.gpu, cluster, cfg)
        est["gpus"] = cluster.gpus
        if not est["fits"]:
            reason = f"memory: {est['memory_gib']['total']:.1f} GiB > {est['capacity_gib']:.1f} GiB usable"
            return self._record(trial, layout, "infeasible", est, reason=reason, kind="memory")
        return _Pending(trial, params, cfg, cluster, self._cache_key(cfg, cluster))

    def _record(self, trial: _Asked, layout: dict[str, Any], status: str, metrics: dict[str, Any],
                *, reason: str | None = None, kind: str | None = None, fidelity: str = "analytic",
                wall_s: float = 0.0, host: str = "", key: str | None = None,
                cached: bool = False) -> EvaluationRecord:
        value = None
        if status == "ok" or (kind == "memory" and metrics):
            value = self.objective.values(metrics)[0]
        return EvaluationRecord(
            study=self.spec.name, trial=trial.number, fidelity=fidelity, layout=layout, metrics=metrics,
            status=status, reason=reason, reason_kind=kind or (reason_kind(reason) if reason else None),
            value=value, wall_s=wall_s, host=host, cache_key=key, cached=cached)

    def _tell(self, trial: _Asked, rec: EvaluationRecord) -> FinishedTrial:
        """Tell the in-memory study; return what to write for the DB trial."""
        m = rec.metrics
        attrs: dict[str, Any] = {"status": rec.status, "fidelity": rec.fidelity, "layout": rec.layout}
        if rec.reason:
            attrs["reason"] = rec.reason
        if m:
            attrs |= {"memory_gib": round(m["memory_gib"]["total"], 3), "step_time_s": m.get("step_time_s"),
                      "tokens_per_s": m.get("tokens_per_s"), "mfu": m.get("mfu")}
            trial.mem.set_constraint(CONSTRAINT, m["memory_gib"]["total"] - m["capacity_gib"])
        memory_rejected = rec.status == "infeasible" and rec.reason_kind == "memory"
        values = self.objective.values(m) if rec.status == "ok" or memory_rejected else None
        state = TrialState.COMPLETE if values is not None else STATE_OF[rec.status]
        if values is not None:
            self._mem.tell(trial.mem, values, skip_if_finished=True)
        else:
            self._mem.tell(trial.mem, state=state, skip_if_finished=True)
        frozen = self._mem._storage.get_trial(trial.mem._trial_id)
        system = {k: v for k, v in frozen.system_attrs.items() if k.startswith("constraints")}
        return FinishedTrial(trial_id=trial.db_id, state=state, values=values, params=frozen.params,
                             distributions=frozen.distributions, user_attrs=attrs, system_attrs=system,
                             write_params=not trial.claimed)

    # loop ----------------------------------------------------------------------------------------
    def _grid_queue(self, study: optuna.Study) -> list[dict[str, Any]]:
        """Grid: every point of the space not yet tried, as the params Optuna will record."""
        seen = {json.dumps(t.params, sort_keys=True) for t in study.get_trials(deepcopy=False)}
        queue = []
        for point in self.space.points():
            for nodes in self.node_counts:
                rec: dict[str, Any] = {}
                self.space.sample(lambda n, ch, p=point, r=rec: r.setdefault(n, p[n]))
                if len(self.node_counts) > 1:
                    rec["nodes"] = nodes
                key = json.dumps(rec, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    queue.append(rec)
        return queue

    def _done(self) -> int:
        rows = self.storage.evaluations(self.spec.name)
        return len({r.trial for r in rows if r.trial >= 0})

    def warm_start(self, points: list[dict[str, Any]]) -> None:
        """Queue these space points (active params, e.g. a cheaper fidelity's ranking) before sampling."""
        for params in points:
            self._mem.enqueue_trial(params, skip_if_exists=False)

    def _heartbeat(self, study: optuna.Study, stop: threading.Event) -> None:
        ostore = self.storage.optuna()
        while not stop.wait(HEARTBEAT_S):
            with self._lock:
                ids = list(self._in_flight)
            for trial_id in ids:
                ostore.record_heartbeat(trial_id)

    def run(self, study: optuna.Study, on_progress: Callable[[Progress], None] | None = None) -> Progress:
        """Run until the budget, the timeout or (grid) the space is exhausted."""
        from autotune.dispatch import MeasurePool, RayPool

        opts = self.options
        start = time.monotonic()
        progress = Progress(done=self._done(), total=opts.n_trials)
        grid = self._grid_queue(study) if opts.sampler == "grid" else None
        if grid is not None:
            progress.total = min(opts.n_trials, progress.done + len(grid))
        if self.fidelity == "measure":
            pool: Any = MeasurePool(opts.workers, opts.ray_address)
        else:
            pool = RayPool(self.fidelity, opts.workers, opts.ray_address, opts.task_timeout_s)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(study, stop), daemon=True)
        beat.start()
        try:
            while progress.done < progress.total:
                if opts.timeout_s is not None and time.monotonic() - start > opts.timeout_s:
                    break
                k = min(opts.batch if self.fidelity == "analytic" else opts.workers, progress.total - progress.done)
                if grid is not None:
                    for params in grid[:k]:
                        self._mem.enqueue_trial(params, skip_if_exists=False)
                    del grid[:k]
                self._sync(study)
                if not self._step(study, pool, k, progress) and not self._await_slots(study, progress, start):
                    break
                if on_progress:
                    on_progress(progress)
        finally:
            stop.set()
            pool.close()
        return progress

    def _await_slots(self, study: optuna.Study, progress: Progress, start: float) -> bool:
        """The budget is taken: poll until a slot frees (True) or every study trial has finished (False)."""
        ostore, deadline = self.storage.optuna(), self.options.timeout_s
        while deadline is None or time.monotonic() - start <= deadline:
            _fail_stale(study)
            taken, running = usage(ostore, study._study_id)
            progress.done = taken - running
            if taken < self.options.n_trials or not running:
                return taken < self.options.n_trials
            time.sleep(HEARTBEAT_S)
        return False

    def _step(self, study: optuna.Study, pool: Any, k: int, progress: Progress) -> int:
        """Reserve, screen, evaluate and record up to ``k`` trials; return how many were reserved."""
        t0 = time.perf_counter()
        slots = reserve(self.storage.optuna(), study._study_id, self.options.n_trials, k)
        progress.storage_s += time.perf_counter() - t0
        asked: dict[int, _Asked] = {}
        done: list[EvaluationRecord] = []
        pending: list[_Pending] = []
        for slot in slots:
            trial, params = self._ask(slot, progress)
            asked[trial.number] = trial
            with self._lock:
                self._in_flight.add(trial.db_id)
            out = self._screen(trial, params)
            (pending if isinstance(out, _Pending) else done).append(out)
        t0 = time.perf_counter()
        hits = self.storage.cached([p.key for p in pending]) if self.options.use_cache else {}
        progress.storage_s += time.perf_counter() - t0
        todo = [p for p in pending if p.key not in hits]
        for p in pending:
            if p.key in hits:
                c = hits[p.key]
                done.append(self._record(p.trial, c.layout, c.status, c.metrics, reason=c.reason,
                                         fidelity=c.fidelity, host=c.host, key=p.key, cached=True))
        tasks = [EvalTask(model=self.problem.model, training=self.problem.training, gpu=self.problem.gpu,
                          gpus_per_node=p.cluster.gpus_per_node, config=p.cfg, trial=p.trial.number,
                          options=self.options.evaluator_options
                          | {"price_per_gpu_hour": p.cluster.price_per_gpu_hour}) for p in todo]
        for p, res in zip(todo, pool.run(tasks, self._step_hook(asked)), strict=True):
            metrics = self.with_time(p.cfg, p.cluster, res.metrics) if res.ok else dict(res.metrics)
            metrics |= {"gpus": p.cluster.gpus} if metrics else {}
            status, reason = res.status, res.reason
            if status == "ok" and metrics.get("pruned"):
                steps = len(metrics.get("step_times_s", []))
                status, reason = "pruned", (f"pruned after {steps} timed step(s): tokens/s below the median of "
                                            "earlier trials at that step (MedianPruner)")
            done.append(self._record(p.trial, p.cfg.to_dict() | {"nodes": p.cluster.nodes}, status, metrics,
                                     reason=reason, fidelity=res.fidelity, wall_s=res.wall_s, host=res.host,
                                     key=None if status == "pruned" else p.key))
        finished = [self._tell(asked[rec.trial], rec) for rec in done]
        t0 = time.perf_counter()

        def rows(session: Any, written: set[int]) -> None:
            self.storage.add_evaluations([r for r in done if asked[r.trial].db_id in written], session=session)

        written = record_finished(self.storage.optuna(), finished, rows)
        progress.storage_s += time.perf_counter() - t0
        with self._lock:
            self._in_flight.difference_update(t.db_id for t in asked.values())
        for rec in done:
            if asked[rec.trial].db_id in written:
                self._count(progress, rec)
        return len(slots)

    def with_time(self, cfg: ParallelConfig, cluster: ClusterSpec, metrics: dict[str, Any]) -> dict[str, Any]:
        """A result that measured no time (the dry run: exact memory) gets the analytic time figures,
        marked ``time_fidelity: analytic``; a result with its own step time is returned as it is."""
        if "step_time_s" in metrics:
            return dict(metrics)
        est = estimate(self.problem.model, self.problem.training, self.problem.gpu, cluster, cfg)
        keys = ("step_time_s", "time_breakdown_s", "tokens_per_s", "tflops_per_gpu", "hw_tflops_per_gpu", "mfu",
                "hfu", "training_steps", "training_days", "gpu_hours", "cost")
        return dict(metrics) | {k: est[k] for k in keys if k in est} | {"time_fidelity": "analytic"}

    def _step_hook(self, asked: dict[int, _Asked]) -> Callable[[EvalTask], Callable[[int, float], bool]] | None:
        """Per-step reports of measured trials to the pruner (single-objective studies only)."""
        if self.objective.multi:
            return None
        tokens = self.problem.training.global_batch * self.problem.training.seq_len

        def hook(task: EvalTask) -> Callable[[int, float], bool]:
            trial = asked[task.trial].mem

            def on_step(step: int, seconds: float) -> bool:
                trial.report(tokens / seconds if self.objective.keys[0] == "tokens_per_s" else seconds, step)
                return trial.should_prune()

            return on_step

        return hook

    def _count(self, progress: Progress, rec: EvaluationRecord) -> None:
        progress.done += 1
        progress.cached += int(rec.cached)
        if rec.status == "ok":
            if rec.value is not None and (progress.best is None or self._improves(rec.value, progress.best)):
                progress.best = rec.value
        elif STATE_OF[rec.status] == TrialState.PRUNED:
            progress.infeasible += 1
        else:
            progress.failed += 1

    def _improves(self, value: float, best: float) -> bool:
        return value > best if self.objective.directions[0] == "maximize" else value < best
