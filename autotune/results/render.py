"""Rich rendering of estimates and study results for the terminal."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["console", "print_estimate", "layout_summary", "fidelity_summary"]

console = Console()


def layout_summary(cfg: dict[str, Any]) -> str:
    """A compact one-line description of a layout."""
    parts = [f"tp={cfg['tp']}", f"pp={cfg['pp']}", f"dp={cfg['dp']}"]
    if cfg.get("cp", 1) > 1:
        parts.append(f"cp={cfg['cp']}")
    if cfg.get("vpp", 1) > 1:
        parts.append(f"vpp={cfg['vpp']}")
    parts += [f"{k}={cfg[k]}" for k in ("pp_first_layers", "pp_last_layers") if cfg.get(k)]
    if cfg.get("sequence_parallel"):
        parts.append("sp")
    parts += [f"{k}={cfg[k]}" for k in ("ep", "etp") if cfg.get(k, 1) > 1]
    parts.append(f"zero={cfg['zero']}")
    if cfg.get("zero") and cfg.get("dp_shard") != cfg.get("dp"):
        parts.append(f"dp_shard={cfg['dp_shard']}")
    parts += [f"mbs={cfg['micro_batch']}", f"ga={cfg['grad_accum']}", f"recompute={cfg['recompute']}"]
    if cfg.get("recompute_layers"):
        parts.append(f"({cfg['recompute_layers']} layers)")
    return " ".join(parts)


def fidelity_summary(labels: dict[str, Any]) -> str:
    """``memory: dryrun, time: analytic`` from the ``memory_fidelity`` / ``time_fidelity`` of
    :func:`autotune.results.best.fidelity_labels`; a half without figures is left out."""
    parts = [f"{k}: {labels[f'{k}_fidelity']}" for k in ("memory", "time") if labels.get(f"{k}_fidelity")]
    return ", ".join(parts)


def _memory_table(result: dict[str, Any]) -> Table:
    mem = result["memory_gib"]
    table = Table(title=f"Per-rank memory (worst rank: pipeline stage {result.get('worst_stage', 0)})")
    table.add_column("part")
    table.add_column("GiB", justify="right")
    table.add_column("share", justify="right")
    for key in ("weights", "gradients", "optimizer", "activations", "other"):
        table.add_row(key, f"{mem[key]:.2f}", f"{mem[key] / mem['total']:.0%}" if mem["total"] else "-")
    table.add_row("total", f"{mem['total']:.2f}", f"{mem['total'] / result['capacity_gib']:.0%} of usable",
                  style="bold")
    return table


def _time_table(result: dict[str, Any]) -> Table:
    parts = result["time_breakdown_s"]
    slowest = result.get("slowest_stage")
    table = Table(title="Step time" if slowest is None else f"Step time (slowest: pipeline stage {slowest})")
    table.add_column("part")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    step = result["step_time_s"]
    for key, value in parts.items():
        table.add_row(key, f"{value:.4f}", f"{value / step:.0%}" if step else "-")
    table.add_row("step", f"{step:.4f}", "100%", style="bold")
    return table


def _gemm_note(result: dict[str, Any]) -> str:
    """`` (of the X peak: the linear GEMMs' dtype)`` when it is not the training precision itself."""
    gp, precision = result.get("gemm_precision"), result.get("precision")
    return f"   (of the {gp} peak: linear GEMMs in {gp})" if gp and gp != precision else ""


def print_estimate(result: dict[str, Any]) -> None:
    """Print an estimate as tables plus a verdict line."""
    stack = f", stack {result['stack']}" if "stack" in result else ""
    console.print(f"[bold]{result['model']}[/] ({result['params'] / 1e9:.2f} B params) on "
                  f"{result['gpus']} x {result['gpu']}{stack}: {layout_summary(result['config'])}")
    console.print(_memory_table(result))
    if "step_time_s" in result:
        console.print(_time_table(result))
        console.print(f"tokens/s {result['tokens_per_s']:,.0f}   model TFLOP/s per GPU "
                      f"{result['tflops_per_gpu']:.1f}   MFU {result['mfu']:.1%}   HFU {result['hfu']:.1%}"
                      f"{_gemm_note(result)}")
        if "training_days" in result:
            cost = f"   cost {result['cost']:,.0f}" if "cost" in result else ""
            console.print(f"training time {result['training_days']:.2f} days   "
                          f"{result['gpu_hours']:,.0f} GPU-hours{cost}   (ideal: no failures)")
        rel = result.get("reliability")
        if rel:
            console.print(f"reliability: job MTBF {rel['mtbf_hours']:.2f} h ({rel['job_failures_per_day']:.2f} "
                          f"failures/day)   checkpoint {rel['checkpoint_gib_per_rank']:.2f} GiB/rank "
                          f"({rel['checkpoint_gib_total']:,.0f} GiB in all): write {rel['checkpoint_write_s']:.1f} s, "
                          f"stall {rel['checkpoint_stall_s']:.1f} s, reload {rel['checkpoint_read_s']:.1f} s   "
                          f"every {rel['checkpoint_interval_min']:.1f} min   "
                          f"{rel['lost_per_failure_min']:.1f} min lost per failure   goodput {rel['goodput']:.1%}")
        if "expected_training_days" in result:
            cost = f"   cost {result['expected_cost']:,.0f}" if "expected_cost" in result else ""
            console.print(f"expected with failures {result['expected_training_days']:.2f} days   "
                          f"{result['expected_gpu_hours']:,.0f} GPU-hours{cost}   "
                          f"{result['expected_failures']:,.0f} failures")
    verdict = "[green]fits[/]" if result["fits"] else "[red]does NOT fit[/]"
    console.print(f"{verdict}: {result['memory_gib']['total']:.2f} GiB of {result['capacity_gib']:.2f} GiB usable")


def _print_ep_bought(bought: dict[str, Any], m: dict[str, Any]) -> None:
    """What the winner's ep bought (:func:`autotune.results.best.ep_bought`): its parts beside the baseline's."""
    ep, base = bought["ep"], bought["baseline"]
    if "ep1_rejected" in bought:
        rej = bought["ep1_rejected"]
        console.print(f"No ep=1 layout fits: {rej['count']:,} evaluated, most often rejected by "
                      f"{rej['top_reason']} ({rej['top_reason_count']:,})")
    if base is None:
        console.print(f"No layout with ep < {ep} fits: ep={ep} is what makes the model fit.")
        return
    bm = base["metrics"]
    table = Table(title=f"What ep={ep} bought over the fastest ep={bought['versus_ep']} layout (trial "
                        f"{base['trial']}: {layout_summary(base['config'])}; it lost by {bought['lost_by']})")
    for col in ("part", f"ep={ep}", f"ep={bought['versus_ep']}", "difference"):
        table.add_column(col, justify="left" if col == "part" else "right")
    table.add_row("step s", f"{m['step_time_s']:.3f}", f"{bm['step_time_s']:.3f}", f"{bought['step_time_s']:+.3f}",
                  style="bold")
    mt, bt = m.get("time_breakdown_s") or {}, bm.get("time_breakdown_s") or {}
    for k, d in bought["time_breakdown_s"].items():
        if d:
            table.add_row(f"  {k} s", f"{mt.get(k, 0.0):.3f}", f"{bt.get(k, 0.0):.3f}", f"{d:+.3f}")
    for k, d in bought["memory_gib"].items():
        table.add_row(f"{k} GiB", f"{m['memory_gib'].get(k, 0.0):.2f}", f"{bm['memory_gib'].get(k, 0.0):.2f}",
                      f"{d:+.2f}", style="bold" if k == "total" else None)
    console.print(table)


def print_best(report: dict[str, Any]) -> None:
    """Print ``autotune best``: the winner, its breakdowns, runners-up and rejection counts."""
    if report["config"] is None:
        console.print(f"[red]No layout of study {report['study']} fits[/] "
                      f"({report['infeasible']['count']} rejected).")
    else:
        m = report["metrics"]
        stack = f", stack {report['stack']}" if report.get("stack") else ""
        console.print(f"[bold green]Best layout[/] of {report['study']} (trial {report['trial']}, "
                      f"{fidelity_summary(report)}{stack}): {layout_summary(report['config'])}")
        line = (f"step {m['step_time_s']:.3f} s   tokens/s {m['tokens_per_s']:,.0f}   MFU {m['mfu']:.1%}   "
                f"memory {m['memory_gib']['total']:.1f} GiB")
        if "training_days" in m:
            line += f"   training {m['training_days']:.2f} days"
        if "expected_training_days" in m:
            line += f" ideal, {m['expected_training_days']:.2f} expected with failures (goodput {m['goodput']:.1%})"
        console.print(line)
        if report.get("estimate_command"):  # one unwrapped line, so it can be copied as it is
            console.print(f"reproduce: {report['estimate_command']}", markup=False, highlight=False, soft_wrap=True)
        if "lower_fidelity" in report:
            lm = report["lower_fidelity"]["metrics"]
            console.print(f"  {fidelity_summary(report['lower_fidelity'])} figures of the same layout: step "
                          f"{lm['step_time_s']:.3f} s, memory {lm['memory_gib']['total']:.1f} GiB")
        table = Table(title="Breakdown of the best layout")
        table.add_column("memory part")
        table.add_column("GiB", justify="right")
        table.add_column("time part")
        table.add_column("s/step", justify="right")
        mem = list(m["memory_gib"].items())
        tim = list((m.get("time_breakdown_s") or {}).items())
        for i in range(max(len(mem), len(tim))):
            a = mem[i] if i < len(mem) else ("", None)
            b = tim[i] if i < len(tim) else ("", None)
            table.add_row(a[0], "" if a[1] is None else f"{a[1]:.2f}", b[0], "" if b[1] is None else f"{b[1]:.4f}")
        console.print(table)
        if "ep_bought" in report:
            _print_ep_bought(report["ep_bought"], m)
        if report["runners_up"]:
            ru = Table(title="Runners-up and why they lost")
            for col in ("trial", "layout", "tokens/s", "lost by"):
                ru.add_column(col)
            for r in report["runners_up"]:
                ru.add_row(str(r["trial"]), layout_summary(r["config"]), f"{r['metrics']['tokens_per_s']:,.0f}",
                           r["lost_by"])
            console.print(ru)
        if "by_global_batch" in report:
            bb = Table(title="Best layout per global batch size")
            for col in ("global batch", "trial", "layout", "tokens/s", "step s"):
                bb.add_column(col)
            for batch, r in report["by_global_batch"].items():
                bb.add_row(batch, str(r["trial"]), layout_summary(r["config"]), f"{r['metrics']['tokens_per_s']:,.0f}",
                           f"{r['metrics']['step_time_s']:.3f}")
            console.print(bb)
    if report["infeasible"]["count"]:
        inf = Table(title=f"Rejected layouts: {report['infeasible']['count']}")
        inf.add_column("count", justify="right")
        inf.add_column("reason")
        for reason, n in list(report["infeasible"]["reasons"].items())[:10]:
            inf.add_row(str(n), reason)
        console.print(inf)


def print_trials(study: str, rows: list[tuple[int, str, dict[str, Any], str, dict[str, Any], str | None]]) -> None:
    """Print a study's evaluations as a table: (trial, status, fidelity labels, layout, metrics, reason) per row,
    the labels as :func:`autotune.results.best.fidelity_labels` gives them (shown as the fidelity of the
    memory and of the time figures)."""
    table = Table(title=f"Trials of {study}")
    for col in ("trial", "status", "fidelity", "layout", "tokens/s", "GiB", "reason"):
        table.add_column(col)
    for trial, status, labels, layout, m, reason in rows:
        tps = f"{m['tokens_per_s']:,.0f}" if m.get("tokens_per_s") is not None else ""
        mem = f"{m['memory_gib']['total']:.1f}" if m.get("memory_gib") else ""
        table.add_row(str(trial), status, fidelity_summary(labels), layout, tps, mem, reason or "")
    console.print(table)
