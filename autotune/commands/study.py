"""``autotune submit | resume | best | studies | trials``: run a study and read it back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from autotune.errors import StorageError
from autotune.overrides import spec_with_overrides
from autotune.results.best import best_report
from autotune.results.render import console, print_best, print_trials
from autotune.results.trials import SORT_KEYS, check_filters, sort_rows, table_row, trial_item
from autotune.search.objectives import objective_for
from autotune.spec import FIDELITIES, SAMPLERS, parse_spec
from autotune.store.storage import Storage
from autotune.study.plan import StudyPlan, enumerates, plan_study
from autotune.study.run import run_study
from autotune.study.run_options import Progress as StudyProgress
from autotune.study.run_options import RunOptions, options_for
from autotune.study.submission import plan_submission, preflight

__all__ = ["submit_cmd", "resume_cmd", "best_cmd", "studies_cmd", "trials_cmd"]

STORAGE_HELP = "SQLAlchemy URL [default: $AUTOTUNE_STORAGE or sqlite:///autotune.db]."
SERVER_HELP = "Talk to this `autotune serve` URL instead of a storage (token from $AUTOTUNE_TOKEN)."
optuna.logging.set_verbosity(optuna.logging.WARNING)


@contextmanager
def _bar(name: str, unit: str, total: int | None, quiet: bool) -> Iterator[Callable[[StudyProgress], None] | None]:
    """The progress bar's update function (None when ``quiet``)."""
    if quiet:
        yield None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("best {task.fields[best]}"), TextColumn("infeasible {task.fields[infeasible]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(name, total=total, best="-", infeasible=0)

        def update(p: StudyProgress) -> None:
            best = "-" if p.best is None else f"{p.best:,.4g} {unit}"
            bar.update(task, completed=p.done, total=p.total, best=best, infeasible=p.infeasible)

        yield update


def _run(plan: StudyPlan, store: Storage, options: RunOptions, create: bool, quiet: bool) -> StudyProgress:
    total = None if plan.enumerates else options.n_trials
    with _bar(plan.spec.name, plan.objective.keys[0], total, quiet) as update:
        return run_study(plan, store, options, create=create, on_progress=update)


def _finish(report: dict[str, Any], whole: bool, progress: StudyProgress, elapsed: float, where: str,
            json_out: bool) -> None:
    """Print what ``submit`` / ``resume`` end with: the best report as JSON, or a summary line and the report."""
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    if whole:
        console.print(f"{progress.done:,} layouts scored in {elapsed:.1f} s ({progress.cached:,} already stored, "
                      f"{progress.infeasible:,} rejected) -> {where}")
    else:
        console.print(f"{progress.done} trials in {elapsed:.1f} s ({progress.cached} from cache, "
                      f"{progress.infeasible} infeasible, {progress.failed} failed) -> {where}")
    print_best(report)


def _finish_local(store: Storage, plan: StudyPlan, progress: StudyProgress, elapsed: float, json_out: bool) -> None:
    report = best_report(store, plan.spec.name, plan.objective)
    _finish(report, plan.enumerates, progress, elapsed, store.display_url, json_out)


def _submit_remote(server: str, data: dict[str, Any], resume: bool, quiet: bool, json_out: bool) -> None:
    """``submit --server``: the server runs the study; its progress streams into the same bar and summary."""
    from autotune.service.client import Client, ServerError

    spec = parse_spec(data)
    client = Client.from_env(server)
    start = time.monotonic()
    name = client.submit(data, resume)["name"]
    total = None if enumerates(spec.search) else spec.search.n_trials
    with _bar(name, objective_for(spec).keys[0], total, quiet or json_out) as update:
        final = client.follow(name, None if update is None else
                              lambda s: s.get("progress") and update(StudyProgress(**s["progress"])))
    if final["state"] == "failed":
        raise ServerError(final["error"] or f"study: {name!r} failed on {server}")
    if final["state"] != "completed":
        raise ServerError(f"study: {name!r} was {final['state']} on {server}")
    progress = StudyProgress(**(final["progress"] or {"done": final["done"]}))
    _finish(client.best(name), enumerates(spec.search), progress, time.monotonic() - start,
            f"{client.url}/api/v1/studies/{name}", json_out)


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
    server: str | None = typer.Option(None, help=SERVER_HELP),
    stack_profile: str | None = typer.Option(None, help="Score with this stored stack profile (NAME or NAME@V, "
                                                        "`calibrate --from-study S --stack NAME`) instead of "
                                                        "training.stack."),
) -> None:
    """Run a tuning study and print the best layout that fits."""
    data = spec_with_overrides(spec, {
        "name": name, "search.n_trials": n_trials, "search.timeout_s": timeout, "search.sampler": sampler,
        "search.evaluator": evaluator, "search.workers": workers, "search.seed": seed, "cluster.profile": profile,
        "training.stack": stack_profile})
    if server:
        _submit_remote(server, data, resume, quiet, json_out)
        return
    plan = plan_submission(data, storage)
    preflight(plan)
    study_spec = plan.spec
    store = Storage(storage)
    exists = store.study_spec(study_spec.name) is not None
    if exists and not resume:
        raise StorageError(f"name: study {study_spec.name!r} already exists in {store.display_url} "
                           "(use --resume, `autotune resume`, or another --name)")
    start = time.monotonic()
    progress = _run(plan, store, options_for(study_spec.search, ray_address, cache), not exists, quiet or json_out)
    _finish_local(store, plan, progress, time.monotonic() - start, json_out)


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
    progress = _run(plan, store, options_for(study_spec.search, ray_address), False, quiet or json_out)
    _finish_local(store, plan, progress, time.monotonic() - start, json_out)


def _objective(store: Storage, study: str):
    return objective_for(parse_spec(store.require_spec(study)))


def best_cmd(
    study: str = typer.Argument(..., help="Study name."),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    top: int = typer.Option(5, min=0, help="Runners-up to show."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    server: str | None = typer.Option(None, help=SERVER_HELP),
) -> None:
    """The fastest layout that fits, its breakdowns, the runners-up and why they lost."""
    if server:
        from autotune.service.client import Client

        report = Client.from_env(server).best(study, top)
    else:
        store = Storage(storage, create=False)
        report = best_report(store, study, _objective(store, study), top=top)
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_best(report)


def studies_cmd(
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    server: str | None = typer.Option(None, help=SERVER_HELP),
) -> None:
    """List the studies in the database."""
    if server:
        from autotune.service.client import Client

        rows = [s["record"] for s in Client.from_env(server).studies() if s["record"] is not None]
    else:
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


def trials_cmd(
    study: str = typer.Argument(..., help="Study name."),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    status: str | None = typer.Option(None, help="Only this status (ok, oom, infeasible, unsupported, crash, "
                                                 "timeout, nan, error)."),
    sort: str = typer.Option("trial", help=f"Sort key: {' | '.join(SORT_KEYS)}."),
    limit: int | None = typer.Option(None, min=1, help="At most N rows."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    server: str | None = typer.Option(None, help=SERVER_HELP),
) -> None:
    """List a study's evaluations."""
    check_filters(status, sort)
    if server:
        from autotune.service.client import Client

        items = Client.from_env(server).evaluations(study, status, sort, limit)
    else:
        store = Storage(storage, create=False)
        _objective(store, study)
        items = [trial_item(r) for r in sort_rows(store.evaluations(study, status=status), sort)[:limit]]
    if json_out:
        typer.echo(json.dumps(items, indent=2))
    else:
        print_trials(study, [table_row(i) for i in items])
