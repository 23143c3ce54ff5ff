"""``autotune export``: a stored layout becomes a framework's launch configuration.

The layout is rebuilt from the study's evaluation row (:func:`autotune.config.derive` with the stored
fields, cluster nodes from the row) and the model, cluster and training of the study's stored spec,
so the exported batch arithmetic is checked again against the spec.
"""

from __future__ import annotations

from pathlib import Path

import typer

from autotune.commands.study import SERVER_HELP, STORAGE_HELP
from autotune.config import DERIVED_FIELDS, ParallelConfig, derive, layout_kwargs
from autotune.errors import InfeasibleConfig, SpecError
from autotune.export import EXPORTERS, get_exporter, launch_script
from autotune.results.best import FIDELITY_RANK, best_report
from autotune.search.objectives import objective_for
from autotune.spec import ClusterSpec, StudySpec, parse_spec
from autotune.store.storage import EvaluationRecord, Storage
from autotune.study.resolve import Problem, resolve

__all__ = ["export_cmd", "export_texts", "load_layout"]

#: ParallelConfig fields :func:`derive` computes; the stored values must agree.


def _row(store: Storage, study: str, trial: int | None, spec: StudySpec) -> EvaluationRecord:
    """The evaluation row to export: ``trial``'s best-fidelity successful row, or the study's best."""
    if trial is None:
        trial = best_report(store, study, objective_for(spec))["trial"]
        if trial is None:
            raise InfeasibleConfig(f"study: {study!r} has no layout that fits (see `autotune best {study}`)")
    rows = [r for r in store.evaluations(study) if r.trial == trial]
    if not rows:
        raise SpecError(f"trial: study {study!r} has no trial {trial} (see `autotune trials {study}`)")
    ok = [r for r in rows if r.status == "ok" and r.metrics.get("fits", True)]
    if not ok:
        r = rows[-1]
        raise InfeasibleConfig(f"trial: trial {trial} of {study!r} is {r.status} ({r.reason or 'does not fit'}); "
                               "only successful trials can be exported")
    return max(ok, key=lambda r: FIDELITY_RANK.get(r.fidelity, 0))


def load_layout(store: Storage, study: str, trial: int | None) -> tuple[Problem, ClusterSpec, ParallelConfig, int]:
    """The problem, cluster, rebuilt layout and trial number of a stored trial (default: the best).

    Raises :class:`StorageError` for an unknown study, :class:`SpecError` for an unknown trial and
    :class:`InfeasibleConfig` when the trial failed or its layout no longer derives from the spec.
    """
    saved = store.require_spec(study)
    spec = parse_spec(saved)
    problem = resolve(spec, storage=store.url)
    row = _row(store, study, trial, spec)
    layout = row.layout
    cluster = spec.cluster.model_copy(update={"nodes": layout["nodes"]})
    cfg = derive(problem.model, problem.training, cluster.gpus, **layout_kwargs(layout))
    stored = {k: layout.get(k) for k in DERIVED_FIELDS}
    if stored != {k: getattr(cfg, k) for k in DERIVED_FIELDS}:
        raise InfeasibleConfig(f"trial {row.trial}: stored {stored} disagrees with the spec's "
                               f"dp={cfg.dp} grad_accum={cfg.grad_accum}")
    return problem, cluster, cfg, row.trial


def export_cmd(
    study: str = typer.Argument(..., help="Study name."),
    fmt: str = typer.Option(..., "--format", "-f", help=f"Launch format: {' | '.join(EXPORTERS)}."),
    trial: int | None = typer.Option(None, "--trial", help="Trial number [default: the best layout that fits]."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
    launcher: Path | None = typer.Option(
        None, "--launcher", help="deepspeed: write the launch script here [default: FILE with the suffix .sh]."),
    force: bool = typer.Option(False, "--force", help="deepspeed: overwrite an existing launch script."),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    server: str | None = typer.Option(None, help=SERVER_HELP),
) -> None:
    """Write a trial's layout as a Megatron-LM, DeepSpeed or torchtitan launch configuration.

    megatron, torchtitan: a bash launch script (torchrun with nodes and GPUs per node, environment,
    every flag; its own arguments are passed on). deepspeed: the ds_config.json on stdout (or FILE) and
    the matching Megatron-DeepSpeed launch script (.sh) on stderr, or in --launcher PATH, by default
    FILE with the suffix .sh (ds_config.json -> ds_config.sh, whose --deepspeed_config names FILE); an
    existing launch script is kept unless --force.
    """
    get_exporter(fmt)
    if launcher is not None and fmt != "deepspeed":
        raise SpecError(f"launcher: only the deepspeed format writes a separate launch script (got --format {fmt})")
    if launcher is not None and output is None:
        raise SpecError("launcher: --launcher needs --output for the ds_config.json it names")
    config_path = str(output) if output else "ds_config.json"
    if server:
        from autotune.service.client import Client

        text, script = Client.from_env(server).export(study, fmt, trial, config_path)
    else:
        text, script = export_texts(Storage(storage, create=False), study, fmt, trial, config_path)
    if script is None:
        _emit(output, text)
        return
    script_path = launcher or (output.with_suffix(".sh") if output else None)
    if output is not None and script_path == output:
        raise SpecError(f"output: {output} would be overwritten by the launch script; use a .json name")
    if script_path is not None and script_path.exists() and not force:
        raise SpecError(f"launcher: {script_path} exists; pass --force to overwrite it or --launcher PATH")
    if output is None:
        typer.echo(text, nl=False)
        typer.echo(script, err=True, nl=False)
        return
    _write(output, text)
    _write(script_path, script, f" (launch script for {output})")


def export_texts(store: Storage, study: str, fmt: str, trial: int | None,
                 config_path: str = "ds_config.json") -> tuple[str, str | None]:
    """A stored trial's launch configuration in format ``fmt`` (default: the best layout) and, for deepspeed,
    the Megatron-DeepSpeed launch script whose ``--deepspeed_config`` names ``config_path`` (else None)."""
    exporter = get_exporter(fmt)
    problem, cluster, cfg, _ = load_layout(store, study, trial)
    text = exporter.render(problem.model, problem.training, cluster, cfg)
    if fmt != "deepspeed":
        return text, None
    return text, launch_script(problem.model, problem.training, cluster, cfg, config_path)


def _emit(output: Path | None, text: str) -> None:
    if output is None:
        typer.echo(text, nl=False)
    else:
        _write(output, text)


def _write(path: Path, text: str, note: str = "") -> None:
    try:
        path.write_text(text)
    except OSError as e:
        raise SpecError(f"output: cannot write {path}: {e.strerror}") from e
    typer.echo(f"wrote {path}{note}", err=True)
