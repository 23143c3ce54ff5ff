"""``autotune submit | resume | best | studies | trials``: run a study and read it back."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import optuna
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from autotune.errors import SpecError, StorageError
from autotune.overrides import spec_with_overrides
from autotune.results.best import best_report, fidelity_labels
from autotune.results.render import console, layout_summary, print_best, print_trials
from autotune.search.objectives import objective_for
from autotune.spec import FIDELITIES, SAMPLERS, StudySpec, parse_spec
from autotune.store.profiles import load_profile
from autotune.store.storage import Storage
from autotune.study.plan import StudyPlan, plan_study
from autotune.study.resolve import pin_stack
from autotune.study.run import run_study
from autotune.study.run_options import Progress as StudyProgress
from autotune.study.run_options import RunOptions

__all__ = ["submit_cmd", "resume_cmd", "best_cmd", "studies_cmd", "trials_cmd"]

STORAGE_HELP = "SQLAlchemy URL [default: $AUTOTUNE_STORAGE or sqlite:///autotune.db]."
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _run(plan: StudyPlan, store: Storage, options: RunOptions, create: bool, quiet: bool) -> StudyProgress:
    if quiet:
        return run_study(plan, store, options, create=create)
    unit = plan.objective.keys[0]
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("best {task.fields[best]}"), TextColumn("infeasible {task.fields[infeasible]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(plan.spec.name, total=None if plan.enumerates else options.n_trials, best="-",
                            infeasible=0)

        def update(p: StudyProgress) -> None:
            best = "-" if p.best is None else f"{p.best:,.4g} {unit}"
            bar.update(task, completed=p.done, total=p.total, best=best, infeasible=p.infeasible)

        return run_study(plan, store, options, create=create, on_progress=update)


def _options(spec: StudySpec, ray_address: str | None, use_cache: bool) -> RunOptions:
    s = spec.search
    return RunOptions(n_trials=s.n_trials, timeout_s=s.timeout_s, sampler=s.sampler, evaluator=s.final_evaluator,
                      workers=s.workers, seed=s.seed, ray_address=ray_address, use_cache=use_cache)


def _finish(storage: Storage, plan: StudyPlan, progress: StudyProgress, elapsed: float, json_out: bool) -> None:
    report = best_report(storage, plan.spec.name, plan.objective)
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    if plan.enumerates:
        console.print(f"{progress.done:,} layouts scored in {elapsed:.1f} s ({progress.cached:,} already stored, "
                      f"{progress.infeasible:,} rejected) -> {storage.display_url}")
    else:
        console.print(f"{progress.done} trials in {elapsed:.1f} s ({progress.cached} from cache, "
                      f"{progress.infeasible} infeasible, {progress.failed} failed) -> {storage.display_url}")
    print_best(report)


def submit_cmd(
    spec: Path = typer.Argument(..., help="Study spec (YAML/TOML)."),
    name: str | None = typer.Option(None, help="Study name [default: the spec's name]."),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    n_trials: int | None = typer.Option(None, help="Trial budget."),
    timeout: float | None = typer.Option(None, help="Wall-clock budget, seconds."),
    sampler: str | None = typer.Option(None, help=f"{' | '.join(SAMPLERS)} (auto: an analytic study scores every "
                                                  "layout at once; tpe at the other fidelities)."),
    evaluator: str | None = typer.Option(None, help=f"{' | '.join(FIDELITIES)}."),
    workers: int | None = typer.Option(None, help="Parallel Ray evaluations."),
    ray_address: str | None = typer.Option(None, envvar="RAY_ADDRESS", help="Join this Ray cluster."),
    seed: int | None = typer.Option(None, help="Sampler seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue the study if the name exists."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse earlier identical evaluations."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print the best layout as JSON."),
    profile: str | None = typer.Option(None, help="Score with this stored calibrated profile (NAME or NAME@V) "
                                                  "instead of cluster.gpu's."),
    stack_profile: str | None = typer.Option(None, help="Score with this stored stack profile (NAME or NAME@V, "
                                                        "`calibrate --from-study S --stack NAME`) instead of "
                                                        "training.stack."),
) -> None:
    """Run a tuning study and print the best layout that fits."""
    data = spec_with_overrides(spec, {
        "name": name, "search.n_trials": n_trials, "search.timeout_s": timeout, "search.sampler": sampler,
        "search.evaluator": evaluator, "search.workers": workers, "search.seed": seed})
    study_spec = parse_spec(data)
    ref = profile or study_spec.cluster.profile
    gpu = load_profile(ref, storage) if ref else None
    if gpu is not None:  # pin the exact version in the stored spec, for resume, report and export
        study_spec = study_spec.model_copy(update={"cluster": study_spec.cluster.model_copy(
            update={"profile": gpu.name})})
    study_spec = pin_stack(study_spec, stack_profile, storage)
    plan = plan_study(study_spec, gpu=gpu, storage=storage)
    store = Storage(storage)
    exists = store.study_spec(study_spec.name) is not None
    if exists and not resume:
        raise StorageError(f"name: study {study_spec.name!r} already exists in {store.display_url} "
                           "(use --resume, `autotune resume`, or another --name)")
    start = time.monotonic()
    progress = _run(plan, store, _options(study_spec, ray_address, cache), not exists, quiet or json_out)
    _finish(store, plan, progress, time.monotonic() - start, json_out)


def resume_cmd(
    study: str = typer.Argument(..., help="Study name."),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    n_trials: int | None = typer.Option(None, help="New total trial budget."),
    timeout: float | None = typer.Option(None, help="Wall-clock budget, seconds."),
    workers: int | None = typer.Option(None, help="Parallel Ray evaluations."),
    ray_address: str | None = typer.Option(None, envvar="RAY_ADDRESS", help="Join this Ray cluster."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print the best layout as JSON."),
) -> None:
    """Continue a study (retrying trials a dead driver left running) up to its budget."""
    store = Storage(storage, create=False)
    saved = store.require_spec(study)
    for key, value in {"n_trials": n_trials, "timeout_s": timeout, "workers": workers}.items():
        if value is not None:
            saved.setdefault("search", {})[key] = value
    study_spec = parse_spec(saved)
    plan = plan_study(study_spec, storage=store.url)
    start = time.monotonic()
    progress = _run(plan, store, _options(study_spec, ray_address, True), False, quiet or json_out)
    _finish(store, plan, progress, time.monotonic() - start, json_out)


def _objective(store: Storage, study: str):
    return objective_for(parse_spec(store.require_spec(study)))


def best_cmd(
    study: str = typer.Argument(..., help="Study name."),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    top: int = typer.Option(5, min=0, help="Runners-up to show."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """The fastest layout that fits, its breakdowns, the runners-up and why they lost."""
    store = Storage(storage, create=False)
    report = best_report(store, study, _objective(store, study), top=top)
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_best(report)


def studies_cmd(
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the studies in the database."""
    rows = Storage(storage, create=False).studies()
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="Studies")
    for col in ("name", "model", "gpus", "evaluations", "ok", "created"):
        table.add_column(col)
    for r in rows:
        c = r["spec"]["cluster"]
        nodes = c.get("nodes", 1)
        gpus = "/".join(str(n * c.get("gpus_per_node", 8)) for n in (nodes if isinstance(nodes, list) else [nodes]))
        model = r["spec"]["model"] if isinstance(r["spec"]["model"], str) else r["spec"]["model"].get("name")
        table.add_row(r["name"], str(model), f"{gpus} x {c['gpu']}", str(r["evaluations"]), str(r["ok"]),
                      str(r["created_at"]))
    console.print(table)


SORT_KEYS = ("trial", "tokens_per_s", "step_time_s", "memory", "mfu")


def trials_cmd(
    study: str = typer.Argument(..., help="Study name."),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    status: str | None = typer.Option(None, help="Only this status (ok, oom, infeasible, unsupported, crash, "
                                                 "timeout, nan, error)."),
    sort: str = typer.Option("trial", help=f"Sort key: {' | '.join(SORT_KEYS)}."),
    limit: int | None = typer.Option(None, min=1, help="At most N rows."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List a study's evaluations."""
    from autotune.evaluation import STATUSES

    if status is not None and status not in STATUSES:
        raise SpecError(f"status: {status!r} is not one of {', '.join(STATUSES)}")
    if sort not in SORT_KEYS:
        raise SpecError(f"sort: {sort!r} is not one of {', '.join(SORT_KEYS)}")
    store = Storage(storage, create=False)
    _objective(store, study)
    rows = store.evaluations(study, status=status)

    def key(r: Any) -> float:
        m = r.metrics
        return {"trial": r.trial, "tokens_per_s": -(m.get("tokens_per_s") or 0.0),
                "step_time_s": m.get("step_time_s") or float("inf"),
                "memory": (m.get("memory_gib") or {}).get("total", float("inf")), "mfu": -(m.get("mfu") or 0.0)}[sort]

    rows = sorted(rows, key=key)[:limit]
    if json_out:
        typer.echo(json.dumps([{"trial": r.trial, "status": r.status, "fidelity": r.fidelity,
                                **fidelity_labels(r.fidelity, r.metrics), "config": r.layout, "reason": r.reason,
                                "cached": r.cached, "wall_s": r.wall_s, "host": r.host, "metrics": r.metrics}
                               for r in rows], indent=2))
    else:
        print_trials(study, [(r.trial, r.status, fidelity_labels(r.fidelity, r.metrics), layout_summary(r.layout)
                              if "dp" in r.layout else str(r.layout), r.metrics, r.reason) for r in rows])
