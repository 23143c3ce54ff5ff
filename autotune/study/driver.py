"""The study driver: a thin Optuna ask/tell loop that dispatches layouts to Ray workers.

Each asked trial is screened, recorded and told by :class:`autotune.study.trial_outcome.TrialOutcomes`; the
screened trials the evaluation cache does not answer go to the workers (:mod:`autotune.study.dispatch`) as
one batch per step. The driver is the only DB writer.
Measured trials report each timed step's throughput to a MedianPruner (2 start-up trials, 1 warm-up
step; benchmarks/measure_pruning.py), which stops a layout clearly slower than the median of earlier
trials at the same step.

Sampling runs on an in-memory Optuna study (a sampler re-reads the trial history on every suggest,
which over an RDB costs tens of milliseconds per parameter); every trial is mirrored into the study
in the database — created RUNNING when asked, completed with params and attributes when done —
so the DB is the record (dashboard, resume, other drivers) and the sampler stays fast; outcomes are
written a batch per transaction (:mod:`autotune.store.mirror`), each trial's outcome and evaluation row in
the same transaction. On open, the DB's finished trials seed the in-memory study.

Budget and several drivers: ``n_trials`` counts the study's trials in the DB, whichever driver ran
them. Trials are taken through :func:`autotune.store.budget.reserve`, which locks the study and never goes
past the budget, so any number of drivers on one study stop at exactly ``n_trials`` trials. When the
budget is taken, a driver waits for the trials still RUNNING: another driver's finish; a dead
driver's (heartbeat older than GRACE_S) are failed and re-queued (Optuna's
RetryHeartbeatStaleTrialCallback) and claimed as new evaluations (a heartbeat-failed trial is not a
study trial). A driver returns when every study trial has finished, so ``resume`` right after a
crash retries the dead driver's trials and reaches the budget.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from autotune.evaluation import EvalTask
from autotune.search.objectives import Objective
from autotune.search.samplers import make_sampler
from autotune.search.space import SearchSpace
from autotune.spec import StudySpec
from autotune.store.budget import Slot, requeue_orphans, reserve, usage
from autotune.store.mirror import record_finished
from autotune.store.optuna_adapter import study_id
from autotune.store.storage import HEARTBEAT_S, EvaluationRecord, Storage
from autotune.study.db_study import open_db_study
from autotune.study.plan import CASE_KEYS, StudyPlan, plan_study
from autotune.study.resolve import Problem
from autotune.study.run_options import Progress, RunOptions
from autotune.study.trial_outcome import STATE_OF, Asked, Pending, TrialOutcomes

__all__ = ["RunOptions", "Progress", "Driver", "STATE_OF"]

TrialState = optuna.trial.TrialState
#: MedianPruner settings for measured trials (benchmarks/measure_pruning.py replays them).
PRUNER_STARTUP_TRIALS = 2
PRUNER_WARMUP_STEPS = 1


def _fail_stale(study: optuna.Study, settle: bool = False) -> None:
    """Fail (and re-queue) trials whose heartbeat is older than the grace period, and re-queue those a
    killed driver failed without re-queuing (:func:`autotune.store.budget.requeue_orphans`); with ``settle``,
    wait (at most HEARTBEAT_S) for orphans too recent to tell from a live driver's, and re-queue them."""
    with warnings.catch_warnings():  # Optuna marks heartbeat helpers experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
        _, wait_s = requeue_orphans(study, min_age_s=HEARTBEAT_S)
        if settle and wait_s > 0:
            time.sleep(wait_s)
            requeue_orphans(study, min_age_s=HEARTBEAT_S)


class Driver:
    """Runs one study: asks Optuna, screens, dispatches to Ray, tells, records."""

    def __init__(self, spec: StudySpec, storage: Storage, options: RunOptions, plan: StudyPlan | None = None):
        self.spec = spec
        self.storage = storage
        self.options = options
        self.plan = plan or plan_study(spec, storage=storage.url)
        self.problem: Problem = self.plan.problem
        self.objective: Objective = self.plan.objective
        self.node_counts = self.plan.node_counts
        self.space: SearchSpace = self.plan.space
        self.fidelity = options.evaluator
        self.outcomes = TrialOutcomes(self.plan, options)
        self._sampler = make_sampler(options.sampler, options.seed, self.objective.multi, self.space)
        self._in_flight: set[int] = set()
        self._lock = threading.Lock()
        self._seen: set[int] = set()
        self._mem: optuna.Study

    # study lifecycle -----------------------------------------------------------------------------
    def open(self, create: bool) -> optuna.Study:
        """Create (``create``) or load the study in the DB; seed the in-memory sampling study from it."""
        directions = list(self.objective.directions)
        study = open_db_study(self.plan, self.storage, create)
        if not create:
            _fail_stale(study, settle=True)
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

    def _ask(self, slot: Slot, progress: Progress) -> tuple[Asked, dict[str, Any]]:
        """Ask the sampler for a reserved DB trial (a claimed one with params replays them)."""
        t0 = time.perf_counter()
        params = self.storage.optuna().get_trial(slot.trial_id).params if slot.claimed else {}
        progress.storage_s += time.perf_counter() - t0
        if params:
            self._mem.enqueue_trial(params, skip_if_exists=False)
        mem = self._mem.ask()
        self._seen.add(slot.number)
        return Asked(mem=mem, db_id=slot.trial_id, number=slot.number, claimed=bool(params)), self._propose(mem)

    def _propose(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        params = self.space.sample(lambda name, choices: trial.suggest_categorical(name, list(choices)))
        for key in CASE_KEYS:
            if len(self.plan.values_of(key)) > 1:
                params[key] = trial.suggest_categorical(key, self.plan.values_of(key))
        params["nodes"] = params.get("nodes", self.node_counts[0])
        return params

    # loop ----------------------------------------------------------------------------------------
    def _grid_queue(self, study: optuna.Study) -> list[dict[str, Any]]:
        """Grid: every point of the space not yet tried, as the params Optuna will record."""
        seen = {json.dumps(t.params, sort_keys=True) for t in study.get_trials(deepcopy=False)}
        queue = []
        for point in self.space.points():
            for case in self.plan.cases:
                rec = self.space.active_params(point) | self.plan.sampled(case)
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
        from autotune.study.dispatch import MeasurePool, RayPool

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
            taken, running = usage(ostore, study_id(study))
            progress.done = taken - running
            if taken < self.options.n_trials or not running:
                return taken < self.options.n_trials
            time.sleep(HEARTBEAT_S)
        return False

    def _step(self, study: optuna.Study, pool: Any, k: int, progress: Progress) -> int:
        """Reserve, screen, evaluate and record up to ``k`` trials; return how many were reserved."""
        t0 = time.perf_counter()
        slots = reserve(self.storage.optuna(), study_id(study), self.options.n_trials, k)
        progress.storage_s += time.perf_counter() - t0
        asked: dict[int, Asked] = {}
        done: list[EvaluationRecord] = []
        pending: list[Pending] = []
        for slot in slots:
            trial, params = self._ask(slot, progress)
            asked[trial.number] = trial
            with self._lock:
                self._in_flight.add(trial.db_id)
            out = self.outcomes.screen(trial, params)
            (pending if isinstance(out, Pending) else done).append(out)
        t0 = time.perf_counter()
        hits = self.storage.cached([p.key for p in pending]) if self.options.use_cache else {}
        progress.storage_s += time.perf_counter() - t0
        todo = [p for p in pending if p.key not in hits]
        done += [self.outcomes.from_cache(p, hits[p.key]) for p in pending if p.key in hits]
        tasks = [EvalTask(model=self.problem.model, training=p.training, gpu=self.problem.gpu,
                          gpus_per_node=p.cluster.gpus_per_node, config=p.cfg, trial=p.trial.number,
                          options=self.options.evaluator_options
                          | {"price_per_gpu_hour": p.cluster.price_per_gpu_hour}) for p in todo]
        for p, res in zip(todo, pool.run(tasks, self._step_hook(asked)), strict=True):
            done.append(self.outcomes.from_result(p, res))
        finished = [self.outcomes.tell(self._mem, asked[rec.trial], rec) for rec in done]
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

    def _step_hook(self, asked: dict[int, Asked]) -> Callable[[EvalTask], Callable[[int, float], bool]] | None:
        """Per-step reports of measured trials to the pruner (single-objective studies only)."""
        if self.objective.multi:
            return None
        def hook(task: EvalTask) -> Callable[[int, float], bool]:
            trial = asked[task.trial].mem
            tokens = task.training.global_batch * task.training.seq_len

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
