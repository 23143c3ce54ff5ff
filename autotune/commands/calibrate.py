"""``autotune calibrate`` (microbenchmarks or a study's measured trials -> a stored GPU profile; a study's
measured trials -> a stored stack profile with ``--stack``) and ``autotune profiles`` (list, show, export)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from autotune.calibration.fit import fit_profile
from autotune.calibration.refit import PARAMS, check_fields, config_of, fit_measured, measured_rows
from autotune.calibration.run import microbenchmarks, training_steps
from autotune.calibration.stack_refit import STACK_FIELDS, stack_from_study
from autotune.catalog import resolve_gpu
from autotune.errors import SpecError
from autotune.results.render import console
from autotune.spec import GPUSpec, parse_spec
from autotune.store.profiles import ProfileStore, parse_ref, to_yaml
from autotune.store.storage import Storage
from autotune.study.resolve import resolve

__all__ = ["calibrate_cmd", "profiles_app"]

STORAGE_HELP = "SQLAlchemy URL [default: $AUTOTUNE_STORAGE or sqlite:///autotune.db]."


def _base_gpu(ref: str, profiles: ProfileStore) -> GPUSpec:
    """A stored profile (NAME or NAME@V) if there is one by that name, else a catalog GPU or GPU file."""
    if "/" not in ref and not ref.endswith((".yaml", ".yml")):
        name, _ = parse_ref(ref)
        if any(p["name"] == name and p["profile_kind"] == "gpu" for p in profiles.list()):
            return profiles.get(ref).gpu()
    return resolve_gpu(ref)


def _from_study(store: Storage, study: str, base: GPUSpec, params: list[str] | None = None
                ) -> tuple[GPUSpec, dict[str, Any]]:
    """Refit ``base`` (``params`` of it, default refit.PARAMS) to the measured trials of ``study``."""
    saved = store.require_spec(study, field="from-study")
    problem = resolve(parse_spec(saved), gpu=base)
    rows = measured_rows(store.evaluations(study))
    if len(rows) < 3:
        raise SpecError(f"from-study: study {study!r} has {len(rows)} successful measured trials; "
                        "a refit needs at least 3 (run it with search.evaluator or fidelities ending in measure)")
    gpn = problem.cluster.gpus_per_node
    configs = [config_of(problem.model, problem.training, gpn * r.layout.get("nodes", 1), r.layout) for r in rows]
    gpu, report = fit_measured(problem.model, problem.training, gpn, configs,
                               [r.metrics["step_time_s"] for r in rows], base, params)
    source = {"kind": "study", "study": study, "storage": store.display_url, "trials": [r.trial for r in rows],
              "rows": len(rows), "hosts": sorted({r.host for r in rows}), **report}
    return gpu, source


def _field_list(text: str | None, allowed: dict[str, Any], what: str) -> list[str] | None:
    """``--fields a,b`` as a list of ``allowed`` names (None: the fit's defaults)."""
    if text is None:
        return None
    return check_fields([n.strip() for n in text.split(",") if n.strip()], allowed, what)


def _print_before_after(source: dict[str, Any], stack: bool) -> None:
    """A study refit's errors before and after, then each fitted field's old and new value."""
    for when in ("before", "after"):
        e = source[when]
        head = f"rms log error {e['rms_log_error']:.4f}, " if stack else ""
        tail = "" if stack else f" over {e['n']} measured layouts"
        console.print(f"  {when:6s}: {head}median |error| {e['median_abs_rel_error']:.1%}, Kendall tau "
                      f"{e['kendall_tau']:.3f}{tail}")
    for name, v in source["fields"].items():
        console.print(f"  {name}: {v['before']:.4g} -> {v['after']:.4g}")


def _print_stack_fit(profile: Any, source: dict[str, Any]) -> None:
    console.print(f"stored stack profile [bold]{profile.ref}[/bold] (from {profile.base}, study {source['study']}: "
                  f"{source['rows']} measured trials, GPU profile {source['gpu']} fixed)")
    _print_before_after(source, stack=True)


def _print_fit(profile: Any, source: dict[str, Any]) -> None:
    if profile.profile_kind == "stack":
        _print_stack_fit(profile, source)
        return
    console.print(f"stored profile [bold]{profile.ref}[/bold] (from {profile.base}, {source['kind']})")
    if source["kind"] == "study":
        _print_before_after(source, stack=False)
        return
    f = profile.fields
    console.print(f"  peak_tflops {f['peak_tflops']}, gemm_eff_max {f['gemm_eff_max']:.3f}, gemm_k_dim "
                  f"{f['gemm_k_dim']:.1f}, gemm_k_tokens {f['gemm_k_tokens']:.1f}, gemm_latency_us "
                  f"{f['gemm_latency_us']:.1f}")
    console.print(f"  hbm_gbps {f['hbm_gbps']:.1f}, elementwise_bytes_per_token_hidden "
                  f"{f['elementwise_bytes_per_token_hidden']:.1f}, layer_overhead_us {f['layer_overhead_us']:.0f}")
    console.print(f"  intra_node_gbps {f['intra_node_gbps']:.3f}, intra_node_latency_us "
                  f"{f['intra_node_latency_us']:.1f}; inter-node: {source['device']['inter_node']}")
    steps = source.get("steps")
    if steps:
        fitted = ", ".join(f"{k} {v['before']:.4g} -> {v['after']:.4g}" for k, v in steps["fields"].items())
        before, after = (steps[k]["median_abs_rel_error"] for k in ("before", "after"))
        console.print(f"  training steps ({len(steps['layouts'])} layouts of {steps['model']}): {fitted}; "
                      f"median |error| {before:.1%} -> {after:.1%}")


def calibrate_cmd(
    name: str | None = typer.Option(None, help="Profile name [default: the base's name]."),
    base: str | None = typer.Option(None, help="Profile to start from: catalog GPU, GPU YAML or stored profile "
                                               "[default: cpu; with --from-study the study's GPU]."),
    from_study: str | None = typer.Option(None, "--from-study", help="Refit to this study's measured trials "
                                                                       "instead of running microbenchmarks."),
    stack: str | None = typer.Option(None, "--stack", help="With --from-study: refit the stack the study scored on "
                                     "(its GPU profile fixed) instead of its GPU profile, stored as the next "
                                     "version of this stack profile NAME (use it as training.stack: NAME@V)."),
    fields: str | None = typer.Option(None, "--fields", help="With --from-study: comma-separated fields to fit "
                                      "[default: --stack: layer_host_us, elementwise_factor (and attention_factor "
                                      "when the trials vary the sequence length); else the GPU refit's fields]."),
    gpus_per_node: int = typer.Option(4, min=1, help="Ranks per node to benchmark (compute contention, groups)."),
    threads: int = typer.Option(1, min=1, help="CPU: torch threads per rank (a measured trial's rank runs 1)."),
    quick: bool = typer.Option(False, "--quick", help="Fewer shapes, sizes and calibration layouts "
                                                       "(about a minute on CPU)."),
    steps: bool = typer.Option(True, "--steps/--no-steps", help="Fit the per-layer and per-collective host "
                                                                "costs to real training steps of small layouts."),
    ray_address: str | None = typer.Option(None, envvar="RAY_ADDRESS", help="Join this Ray cluster."),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print the stored profile and fit report as JSON."),
) -> None:
    """Fit a hardware profile (GEMM curve, memory bandwidth, per-layer overhead, link alpha/beta) to
    microbenchmarks and a few real training steps on the Ray workers' devices, or to a study's measured
    step times, and store it as the next version of NAME; with --from-study STUDY --stack NAME, fit the
    study's training stack profile instead (host time per layer, kernel fusion, attention integration)."""
    if (stack is not None or fields is not None) and from_study is None:
        raise SpecError(f"{'stack' if stack is not None else 'fields'}: needs --from-study STUDY (a refit to a "
                        "study's measured trials)")
    if stack is not None and name is not None:
        raise SpecError("name: names a GPU profile; with --stack NAME the stack profile is named by --stack")
    store = Storage(storage, create=from_study is None)
    profiles = ProfileStore(store)
    if stack is not None:
        parse_ref(stack, "stack")
        fitted, source = stack_from_study(store, from_study, _field_list(fields, STACK_FIELDS, "stack"))
        _store(profiles.add(stack, fitted, source["stack"], source), source, json_out)
        return
    if from_study is not None:
        saved = store.study_spec(from_study)
        base_ref = base or (saved or {}).get("cluster", {}).get("gpu") or "cpu"
        base_gpu = _base_gpu(base_ref, profiles)
        gpu, source = _from_study(store, from_study, base_gpu, _field_list(fields, PARAMS, "GPU profile"))
    else:
        base_ref = base or "cpu"
        base_gpu = _base_gpu(base_ref, profiles)
        start = time.monotonic()
        rows, info = microbenchmarks(gpus_per_node, quick, threads, ray_address, quiet or json_out)
        gpu, report = fit_profile(base_gpu, rows, info["device"])
        source = {"kind": "microbenchmarks", "device": info, "fit": report, "data": rows}
        if steps:
            gpu, source["steps"] = training_steps(gpu, info, quick, quiet or json_out)
        source["wall_s"] = time.monotonic() - start
    profile_name = name or parse_ref(base_ref.rsplit("/", 1)[-1].removesuffix(".yaml"))[0]
    _store(profiles.add(profile_name, gpu, base_ref, source), source, json_out)


def _store(profile: Any, source: dict[str, Any], json_out: bool) -> None:
    """Print a stored profile and its fit report (JSON with ``--json``)."""
    if json_out:
        summary = {k: v for k, v in source.items() if k != "data"}
        typer.echo(json.dumps({"ref": profile.ref, "profile_kind": profile.profile_kind, "fields": profile.fields,
                               "source": summary}, indent=2, default=float))
    else:
        _print_fit(profile, source)


profiles_app = typer.Typer(help="Stored GPU and stack profiles: list, show, export.", no_args_is_help=False,
                           rich_markup_mode=None)


@profiles_app.callback(invoke_without_command=True)
def profiles_cmd(
    ctx: typer.Context,
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the stored profiles (every version), or run a subcommand."""
    if ctx.invoked_subcommand is not None:
        return
    rows = ProfileStore(Storage(storage, create=False)).list()
    if json_out:
        typer.echo(json.dumps([{k: v for k, v in r.items() if k != "source"} for r in rows], indent=2))
        return
    from rich.table import Table

    table = Table(title="Profiles")
    for col in ("profile", "kind", "base", "fitted on", "created", "figures"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["ref"], r["profile_kind"], r["base"], str(r["kind"]), str(r["created_at"]),
                      _figures(r["profile_kind"], r["fields"]))
    console.print(table)


def _figures(kind: str, f: dict[str, Any]) -> str:
    """A profile's headline figures for the list."""
    if kind == "stack":
        return ", ".join(f"{k} {f[k]:.4g}" for k in STACK_FIELDS)
    peaks = ", ".join(f"{k} {v:.3g}" for k, v in f["peak_tflops"].items())
    return f"peak TFLOP/s {peaks}; gemm_eff_max {f['gemm_eff_max']:.3f}; layer_overhead_us " \
           f"{f.get('layer_overhead_us', 0.0):.0f}"


@profiles_app.command("show")
def show_cmd(
    ref: str = typer.Argument(..., help="NAME (latest version) or NAME@VERSION."),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
) -> None:
    """Print one profile's fields and what it was fitted on, as JSON (without the raw benchmark rows)."""
    p = ProfileStore(Storage(storage, create=False)).get(ref)
    source = {k: v for k, v in p.source.items() if k != "data"}
    typer.echo(json.dumps({"ref": p.ref, "profile_kind": p.profile_kind, "base": p.base, "created_at": p.created_at,
                           "fields": p.fields, "source": source}, indent=2))


@profiles_app.command("export")
def export_profile_cmd(
    ref: str = typer.Argument(..., help="NAME (latest version) or NAME@VERSION."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write this GPU (or stack) YAML file "
                                                                    "[default: stdout]."),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
) -> None:
    """Write a profile as a GPU YAML file, loadable with `cluster.gpu: FILE` (a stack profile: a stack YAML
    file, loadable with `training.stack: FILE`)."""
    text = to_yaml(ProfileStore(Storage(storage, create=False)).get(ref))
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        console.print(f"wrote {output}")
