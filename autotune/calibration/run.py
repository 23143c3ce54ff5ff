"""The calibration run of ``autotune calibrate``: microbenchmarks on a Ray worker, then real training steps.

Both stages run on the data plane through :func:`autotune.study.dispatch.data_plane`; the fits are
:mod:`autotune.calibration.fit` (microbenchmarks) and :mod:`autotune.calibration.steps` (host costs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from autotune.calibration.fit import plan_jobs
from autotune.calibration.steps import STEP_OPTIONS, fit_steps, step_layouts, step_training
from autotune.catalog import get_model
from autotune.errors import AutotuneError
from autotune.evaluation import EvalTask
from autotune.results.render import console, layout_summary
from autotune.spec import GPUSpec
from autotune.study.dispatch import data_plane, join_ray

__all__ = ["LAYER_MODEL", "microbenchmarks", "training_steps"]

T = TypeVar("T")
#: The model whose transformer block the ``layer`` microbenchmark runs (the fixed per-layer host cost).
LAYER_MODEL = "tiny"


def _each(items: list[T], label: Callable[[T], str], quiet: bool) -> Iterator[T]:
    """Yield ``items`` one by one under a Rich progress bar showing ``label(item)``."""
    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False, disable=quiet) as bar:
        task = bar.add_task("calibrate", total=len(items))
        for item in items:
            bar.update(task, description=label(item))
            yield item
            bar.advance(task)


def microbenchmarks(gpus_per_node: int, quick: bool, threads: int, ray_address: str | None,
                     quiet: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the microbenchmark jobs on a Ray worker (one at a time, so they do not disturb each other)."""
    import ray

    device_info, run_job = data_plane("device_info"), data_plane("run_job")
    join_ray(ray_address)
    info = ray.get(ray.remote(num_cpus=0)(device_info).remote())
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    ranks = gpus_per_node if info["device"] == "cpu" else max(1, min(gpus_per_node, info["devices"]))
    jobs = plan_jobs(quick=quick, ranks=ranks, device=info["device"], threads=threads,
                     model=get_model(LAYER_MODEL).model_dump(mode="json"))
    remote = ray.remote(num_cpus=0, num_gpus=ranks if info["device"] == "cuda" else 0, max_retries=0)(run_job)
    rows: list[dict[str, Any]] = []
    for job in _each(jobs, lambda j: f"{j['name']} on {ranks} {info['device']} ranks", quiet):
        rows += ray.get(remote.remote(job))
    info |= {"ranks": ranks, "threads_per_rank": threads if info["device"] == "cpu" else None, "nodes": nodes,
             "quick": quick, "inter_node": f"not measured ({nodes} Ray node{'s' if nodes > 1 else ''}; the "
             "benchmark ranks are processes of one node): inter_node_gbps/latency are the base profile's"}
    return rows, info


def training_steps(gpu: GPUSpec, info: dict[str, Any], quick: bool, quiet: bool) -> tuple[GPUSpec, dict[str, Any]]:
    """Measure the calibration layouts (:mod:`autotune.calibration.steps`) on the benchmark's ranks and
    fit the per-layer and per-collective host costs to them."""
    measure_trial = data_plane("measure_trial")
    model, ranks = get_model(LAYER_MODEL), info["ranks"]
    training = step_training(info["device"], ranks)
    configs = step_layouts(model, training, ranks, quick)
    done: list[tuple[Any, float]] = []
    failed: list[str] = []
    for cfg in _each(configs, lambda c: f"training steps: {layout_summary(c.to_dict())}", quiet):
        res = measure_trial(EvalTask(model=model, training=training, gpu=gpu, gpus_per_node=ranks, config=cfg,
                                     options=dict(STEP_OPTIONS)))
        if res.status == "ok" and res.metrics.get("step_times_s"):
            done.append((cfg, min(res.metrics["step_times_s"])))
        else:
            failed.append(f"{res.status}: {res.reason}")
    if not done:
        raise AutotuneError(f"calibrate: none of the {len(configs)} calibration layouts ran a training step "
                            f"(first: {failed[0]}); `--no-steps` keeps the microbenchmark figures")
    gpu, report = fit_steps(gpu, model, training, ranks, [c for c, _ in done], [s for _, s in done])
    return gpu, report | {"model": LAYER_MODEL, "training": training.model_dump(mode="json"), "options": STEP_OPTIONS,
                          "failed": failed}
