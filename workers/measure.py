"""The ``measure`` evaluator: real short training steps of one layout on a Ray placement group.

One trial = one placement group of ``world`` bundles (STRICT_PACK when one node can hold them all,
else PACK) with one :class:`~workers.measure_rank.RankWorker` actor per rank. Rank 0's actor picks a
free port; every actor joins the process group (nccl on CUDA, gloo otherwise), builds the model and the
layout, runs ``warmup_steps`` untimed steps, one untimed step under the memory tracker and then
``steps`` timed steps, one Ray call per step, each under a deadline of ``step_timeout_s``.

Options (``task.options``; defaults set here): ``warmup_steps`` 1 (at least 1: the first step
allocates optimizer states and runs lazy initialisation), ``steps`` 3, ``step_timeout_s``
120 (also bounds every collective), ``setup_timeout_s`` 180 (actor start, process group, model
build), ``placement_timeout_s`` 60, ``cpus_per_rank`` 0.25 (a scheduling token: 4 CPU ranks plus the
Ray task that runs the evaluator fit a 2-CPU machine), ``seed`` 0; ``fault`` / ``fault_rank`` inject
failures in tests (see :mod:`workers.measure_rank`).

Outcomes: ``ok``; ``oom`` (a caught CUDA OOM, or the worst rank's tracked peak over the per-rank
budget ``gpu.memory_gib · usable_fraction`` — on CPU too); ``timeout`` (a step, set-up or the
placement past its deadline); ``crash`` (a rank's actor died); ``nan`` (a non-finite loss);
``unsupported`` (:class:`~workers.parallel.UnsupportedLayout`, or a precision the ranks cannot run —
fp8 — refused before any placement group is asked for); ``infeasible`` (the Ray cluster can
never hold the group); ``error`` (a rank raised). Whatever the outcome, every actor is killed and the
placement group removed before the result is returned, so no process or group outlives its trial.

Labels: the metrics carry ``gemm_precision``, the dtype the ranks' GEMMs ran in (from rank 0's set-up,
:func:`workers.measure_rank.gemm_precision`), and the MFU divides by that dtype's peak
(:func:`measured_mfu`). Memory and time are both measured (the memory tracker's peak over a real step,
and the timed steps).
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

from autotune.evaluation import EvalTask, TrialResult
from autotune.spec import GPUSpec
from workers.measure_rank import MEMORY_KEYS, RankWorker, unmeasured_reason

__all__ = ["MeasureEvaluator", "measure_trial", "measured_mfu", "OnStep"]

#: Called after each timed step with (step index from 0, step seconds); returning True stops the trial.
OnStep = Callable[[int, float], bool]
_GIB = float(2**30)
FIDELITY = "measure"


class _Outcome(Exception):
    """A typed non-ok end of a trial, raised inside :func:`measure_trial` and turned into its result."""

    def __init__(self, status: str, reason: str, metrics: dict[str, Any] | None = None):
        super().__init__(reason)
        self.status, self.reason, self.metrics = status, reason, metrics or {}


def _short(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"[:500]


def _gather(refs: list[Any], timeout_s: float, what: str) -> list[dict[str, Any]]:
    """Results of one call per rank (rank order); the first failure, by time, ends the trial.

    A rank past the deadline -> ``timeout``; a dead actor -> ``crash``; a raising rank -> ``error``; a
    rank reporting a typed failure (oom, unsupported) -> that status.
    """
    import ray

    rank_of = {ref: r for r, ref in enumerate(refs)}
    out: dict[int, dict[str, Any]] = {}
    pending, deadline = list(refs), time.monotonic() + timeout_s
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            late = sorted(rank_of[ref] for ref in pending)
            raise _Outcome("timeout", f"{what}: ranks {late} gave no result within {timeout_s:g} s")
        rank = rank_of[ready[0]]
        try:
            value = ray.get(ready[0])
        except ray.exceptions.RayActorError as e:
            detail = re.search(r"Worker exit detail: ([^.]*)", str(e))
            why = detail.group(1) if detail else _short(e)
            raise _Outcome("crash", f"{what}: rank {rank}'s process died ({why})") from e
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if e.cause is not None else e
            raise _Outcome("error", f"{what}: rank {rank} raised {_short(cause)}") from e
        if value["status"] != "ok":
            raise _Outcome(value["status"], value["reason"])
        out[rank] = value
    return [out[r] for r in range(len(refs))]


def _strategy(world: int, cpus: float, gpus: int) -> str:
    """STRICT_PACK when one alive node holds every bundle, PACK when the cluster does, else raise."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= world * cpus and r.get("GPU", 0) >= world * gpus for r in nodes):
        return "STRICT_PACK"
    total = ray.cluster_resources()
    if total.get("CPU", 0) >= world * cpus and total.get("GPU", 0) >= world * gpus:
        return "PACK"
    raise _Outcome("infeasible", f"the Ray cluster cannot hold {world} ranks of {cpus:g} CPU + {gpus} GPU "
                                 f"(it has {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU)")


def _memory_metrics(task: EvalTask, peaks: list[dict[str, int]]) -> dict[str, Any]:
    """The worst rank's breakdown in GiB, the per-rank budget and whether it fits."""
    worst = max(range(len(peaks)), key=lambda r: peaks[r]["total"])
    memory = {k: peaks[worst][k] / _GIB for k in MEMORY_KEYS}
    capacity = task.gpu.memory_gib * task.gpu.usable_fraction
    return {"memory_gib": memory, "capacity_gib": capacity, "fits": memory["total"] <= capacity,
            "worst_rank": worst, "memory_gib_per_rank": [p["total"] / _GIB for p in peaks]}


def measured_mfu(model_flops: float, step_s: float, world: int, gpu: GPUSpec, gemm_precision: str) -> float:
    """Model FLOPs per second per rank over the profile's dense peak of ``gemm_precision``, the dtype the
    GEMMs actually ran in (fp32 GEMMs without TF32 divide by the fp32 peak, not the tf32 one)."""
    return model_flops / step_s / world / (gpu.peak(gemm_precision) * 1e12)


def _mfu(task: EvalTask, step_s: float, gemm_precision: str) -> float:
    """:func:`measured_mfu` of this trial's model FLOPs per iteration (Narayanan et al. 2021)."""
    from autotune.costmodel.flops import iteration_flops
    from autotune.costmodel.layout import layout_scalars

    model_flops, _ = iteration_flops(task.model, task.training, layout_scalars(task.config))
    return measured_mfu(float(model_flops), step_s, task.config.world, task.gpu, gemm_precision)


def _run(task: EvalTask, on_step: OnStep | None, actors: list[Any], pg: Any) -> dict[str, Any]:
    """Drive the ranks of one trial; returns the ``ok`` metrics or raises :class:`_Outcome`."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    opts, cfg, training = task.options, task.config, task.training
    warmup, steps = max(1, int(opts.get("warmup_steps", 1))), max(1, int(opts.get("steps", 3)))
    step_timeout = float(opts.get("step_timeout_s", 120))
    setup_timeout = float(opts.get("setup_timeout_s", 180))
    if not pg.wait(timeout_seconds=float(opts.get("placement_timeout_s", 60))):
        raise _Outcome("timeout", f"placement group of {cfg.world} bundles not ready within "
                                  f"{float(opts.get('placement_timeout_s', 60)):g} s")
    cuda = bool(pg.bundle_specs[0].get("GPU"))
    remote = ray.remote(RankWorker)
    for r in range(cfg.world):
        strategy = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=r)
        actors.append(remote.options(num_cpus=pg.bundle_specs[r]["CPU"], num_gpus=1 if cuda else 0,
                                     scheduling_strategy=strategy, name=None).remote())
    end = _gather([actors[0].endpoint.remote()], setup_timeout, "rendezvous")[0]
    setup = _gather([a.setup.remote(r, end["addr"], end["port"], task, step_timeout) for r, a in enumerate(actors)],
                    setup_timeout, "set-up")
    warm = _gather([a.warmup.remote(warmup) for a in actors], step_timeout * (warmup + 1), "warm-up")
    metrics: dict[str, Any] = {"world": cfg.world, "device": setup[0]["device"],
                               "gemm_precision": setup[0]["gemm_precision"]}
    metrics |= _memory_metrics(task, [w["memory"] for w in warm])
    if not math.isfinite(warm[0]["loss"]):
        raise _Outcome("nan", f"loss {warm[0]['loss']} in warm-up")
    if not metrics["fits"]:
        raise _Outcome("oom", f"memory: {metrics['memory_gib']['total']:.4g} GiB on rank {metrics['worst_rank']} > "
                              f"{metrics['capacity_gib']:.4g} GiB usable", metrics)
    times: list[float] = []
    loss, pruned = math.nan, False
    for i in range(steps):
        done = _gather([a.step.remote() for a in actors], step_timeout, f"step {i}")
        times.append(max(d["seconds"] for d in done))
        loss = done[0]["loss"]
        if not math.isfinite(loss):
            raise _Outcome("nan", f"loss {loss} at timed step {i}")
        if cuda:
            total = max(d["peak_bytes"] for d in done) / _GIB
            metrics["memory_gib"]["total"] = max(metrics["memory_gib"]["total"], total)
        if on_step is not None and on_step(i, times[-1]) and i < steps - 1:
            pruned = True
            break
    step_s = statistics.median(times)
    metrics |= {"step_time_s": step_s, "step_times_s": times, "tokens_per_s": training.global_batch
                * training.seq_len / step_s, "loss": loss, "pruned": pruned,
                "mfu": _mfu(task, step_s, metrics["gemm_precision"])}
    metrics["fits"] = metrics["memory_gib"]["total"] <= metrics["capacity_gib"]
    return metrics | _training_time(task, step_s)


def _training_time(task: EvalTask, step_s: float) -> dict[str, float]:
    """Whole-run figures at the measured step time (as the analytic estimate reports them)."""
    steps = task.training.total_steps()
    if steps is None:
        return {}
    out = {"training_steps": float(steps), "training_days": steps * step_s / 86400.0,
           "gpu_hours": steps * step_s / 3600.0 * task.config.world}
    price = task.options.get("price_per_gpu_hour")
    return out | ({"cost": out["gpu_hours"] * price} if price is not None else {})


def measure_trial(task: EvalTask, on_step: OnStep | None = None) -> TrialResult:
    """Measure one layout on Ray (joining or starting it); never raises for a failing layout.

    Callable from the driver process or from inside a Ray task. ``on_step(i, seconds)`` is called after
    each timed step; returning True stops the trial there: the result is ``ok`` with
    ``metrics["pruned"] = True`` and the steps done so far, for the caller to decide on.
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from autotune.study.dispatch import join_ray

    start = time.perf_counter()
    join_ray()
    cfg, opts = task.config, task.options
    cpus = float(opts.get("cpus_per_rank", 0.25))
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    actors: list[Any] = []
    pg = None
    try:
        why = unmeasured_reason(task.training.precision, "cuda" if gpus else "cpu", task.gpu)
        if why:
            raise _Outcome("unsupported", why)
        strategy = _strategy(cfg.world, cpus, gpus)
        bundle = {"CPU": cpus} | ({"GPU": 1} if gpus else {})
        pg = placement_group([dict(bundle) for _ in range(cfg.world)], strategy=strategy)
        metrics = _run(task, on_step, actors, pg)
        return TrialResult(status="ok", fidelity=FIDELITY, metrics=metrics, wall_s=time.perf_counter() - start)
    except _Outcome as o:
        return TrialResult(status=o.status, fidelity=FIDELITY, metrics=o.metrics, reason=o.reason,  # type: ignore[arg-type]
                           wall_s=time.perf_counter() - start)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if pg is not None:
            remove_placement_group(pg)


class MeasureEvaluator:
    """Runs real training steps of a layout (:func:`measure_trial`) for the registry path."""

    fidelity = FIDELITY

    def evaluate(self, task: EvalTask) -> TrialResult:
        """Measure one layout to the end (no pruning)."""
        return measure_trial(task)
