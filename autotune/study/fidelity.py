"""Multi-fidelity studies: ``search.fidelities: [analytic, dryrun, measure]`` with ``search.top_k``.

1. ``analytic`` scores the whole space exhaustively with the vectorised cost model (no sampler beats
   enumeration when every layout costs microseconds); each valid layout is stored as an evaluation row
   (trial -1: not an Optuna trial).
2. Each middle fidelity (e.g. ``dryrun``) evaluates the ``top_k`` layouts of the stage before, ranked
   by its objective among those that fit, and stores them.
3. The last fidelity runs as an Optuna study (the usual driver, ``search.n_trials`` trials) warm-started
   with the previous stage's ranking enqueued first, so its first trials are already good ones; the
   sampler then explores from there.
``best`` ranks by the highest fidelity and reports where the cheaper ones disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autotune.costmodel import estimate
from autotune.errors import SpecError
from autotune.evaluation import EvalTask
from autotune.search.enumerate import score_space
from autotune.store.storage import EvaluationRecord
from autotune.study.driver import Driver, Progress

__all__ = ["run_fidelities"]


def _analytic_stage(driver: Driver) -> list[tuple[dict[str, Any], Any, dict[str, Any]]]:
    """(params, config, metrics) of every fitting layout, best first; stores every valid layout."""
    p = driver.problem
    scored = score_space(p, driver.space)
    rows, ranked = [], []
    for i, cfg in enumerate(scored.configs):
        if cfg is None:
            continue
        metrics = estimate(p.model, p.training, p.gpu, p.cluster, cfg) | {"gpus": p.gpus}
        fits = bool(scored.fits[i])
        rows.append(EvaluationRecord(
            study=driver.spec.name, trial=-1, fidelity="analytic", layout=cfg.to_dict() | {"nodes": p.cluster.nodes},
            metrics=metrics, status="ok" if fits else "infeasible",
            reason=None if fits else f"memory: {metrics['memory_gib']['total']:.1f} GiB > "
                                     f"{metrics['capacity_gib']:.1f} GiB usable",
            reason_kind=None if fits else "memory", value=driver.objective.values(metrics)[0]))
        if fits:
            ranked.append((scored.points[i], cfg, metrics))
    driver.storage.add_evaluations(rows)
    reverse = driver.objective.directions[0] == "maximize"
    ranked.sort(key=lambda item: driver.objective.values(item[2])[0], reverse=reverse)
    return ranked


def _middle_stage(driver: Driver, fidelity: str, ranked: list[Any], top_k: int) -> list[Any]:
    """Evaluate the top ``top_k`` layouts at ``fidelity``; return the ones that fit, best first."""
    from autotune.study.dispatch import RayPool

    p = driver.problem
    chosen = ranked[:top_k]
    tasks = [EvalTask(model=p.model, training=p.training, gpu=p.gpu, gpus_per_node=p.cluster.gpus_per_node,
                      config=cfg, options=dict(driver.options.evaluator_options)) for _, cfg, _ in chosen]
    pool = RayPool(fidelity, driver.options.workers, driver.options.ray_address, driver.options.task_timeout_s)
    try:
        results = pool.run(tasks)
    finally:
        pool.close()
    rows, kept = [], []
    for (params, cfg, _), res in zip(chosen, results, strict=True):
        metrics = driver.outcomes.with_time(cfg, p.cluster, res.metrics) if res.ok else dict(res.metrics)
        rows.append(EvaluationRecord(
            study=driver.spec.name, trial=-1, fidelity=fidelity, layout=cfg.to_dict() | {"nodes": p.cluster.nodes},
            metrics=metrics, status=res.status, reason=res.reason, wall_s=res.wall_s, host=res.host,
            value=driver.objective.values(metrics)[0] if res.ok and "step_time_s" in metrics else None))
        if res.ok:
            kept.append((params, cfg, metrics))
    driver.storage.add_evaluations(rows)
    if all("step_time_s" in m for _, _, m in kept):
        reverse = driver.objective.directions[0] == "maximize"
        kept.sort(key=lambda item: driver.objective.values(item[2])[0], reverse=reverse)
    return kept


def run_fidelities(driver: Driver, study: Any, fidelities: list[str], top_k: int,
                   on_progress: Callable[[Progress], None] | None = None) -> Progress:
    """Run the stages of a multi-fidelity study; ``driver`` is set up for the last fidelity."""
    if fidelities[0] != "analytic":
        raise SpecError(f"search.fidelities: must start with analytic (got {fidelities})")
    if len(driver.node_counts) > 1:
        raise SpecError("search.fidelities: a multi-fidelity study takes one cluster size (cluster.nodes)")
    if driver.fidelity != fidelities[-1]:
        raise SpecError(f"search.evaluator: {driver.fidelity!r} must be the last fidelity {fidelities[-1]!r}")
    ranked = _analytic_stage(driver)
    for fidelity in fidelities[1:-1]:
        ranked = _middle_stage(driver, fidelity, ranked, top_k)
    if len(fidelities) == 1:
        return Progress(done=0, total=0)
    driver.warm_start([params for params, _, _ in ranked[:top_k]])
    return driver.run(study, on_progress)
