"""Multi-fidelity studies: ``search.fidelities: [analytic, dryrun, measure]`` with ``search.top_k``.

1. ``analytic`` scores the whole space exhaustively with the vectorised cost model (no sampler beats
   enumeration when every layout costs microseconds; :mod:`autotune.study.analytic`); every layout is
   stored as an evaluation row (trial -1: not an Optuna trial).
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

from autotune.config import ParallelConfig
from autotune.errors import SpecError
from autotune.evaluation import EvalTask
from autotune.store.storage import EvaluationRecord
from autotune.study.analytic import run_analytic
from autotune.study.driver import Driver, Progress

__all__ = ["run_fidelities"]


def _analytic_stage(driver: Driver) -> list[tuple[dict[str, Any], ParallelConfig, dict[str, Any]]]:
    """(params, config, metrics) of every fitting layout, best first; stores every layout of the space
    (:mod:`autotune.study.analytic`, unnumbered rows)."""
    _, stage = run_analytic(driver.plan, driver.storage, numbered=False)
    return [(stage.params[i], stage.configs[i], stage.rows[i].metrics) for i in stage.ranked(driver.plan)]


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
    if len(driver.plan.cases) > 1:
        raise SpecError("search.fidelities: a multi-fidelity study takes one cluster size (cluster.nodes) and one "
                        "global batch (training.global_batch)")
    if driver.fidelity != fidelities[-1]:
        raise SpecError(f"search.evaluator: {driver.fidelity!r} must be the last fidelity {fidelities[-1]!r}")
    ranked = _analytic_stage(driver)
    for fidelity in fidelities[1:-1]:
        ranked = _middle_stage(driver, fidelity, ranked, top_k)
    if len(fidelities) == 1:
        return Progress(done=0, total=0)
    driver.warm_start([params for params, _, _ in ranked[:top_k]])
    return driver.run(study, on_progress)
