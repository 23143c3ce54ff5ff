"""Run every benchmark in benchmarks/ and print one markdown table of figures against their targets.

Each script prints a final ``RESULT key=value ...`` line, parsed here (a script without one is read
with the pattern listed below for it). A script that is not present yet is listed with a note;
one that fails or times out is listed with its exit status. ``--quick`` runs each with smaller
arguments (fewer trials, seeds, layouts, kills, examples): the per-trial and per-layout figures stay
comparable, totals do not. The table names the date, the machine and the mode.
Usage: python benchmarks/run_all.py [--quick] [--only a,b] [--out FILE.md] [--timeout-s 3600]
"""

from __future__ import annotations

import argparse
import datetime as dt
import operator
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class Figure:
    """One figure of a benchmark: its RESULT key, what it means, and the target it is held to."""

    key: str
    label: str
    op: str
    target: float
    fmt: str = "{:,.4g}"

    def met(self, value: float) -> bool:
        """Whether ``value`` meets the target."""
        return OPS[self.op](value, self.target)


@dataclass(frozen=True)
class Bench:
    """A benchmark script, its arguments in full and quick mode, and its figures."""

    name: str
    full: list[str]
    quick: list[str]
    figures: list[Figure]
    patterns: dict[str, str] = field(default_factory=dict)
    """key -> regex with one group, for a script without a RESULT line."""


BENCHES = [
    Bench("estimate_throughput", [], [], [Figure("vectorised_per_s", "layouts/s scored, vectorised", ">=", 50_000,
                                                    "{:,.0f}")]),
    Bench("search_efficiency", [], ["--seeds", "3", "--random-seeds", "10", "--samplers", "tpe,thompson,random"], [
        Figure("best_share_max", "share of the space to reach 1 % of the optimum (best sampler, worst study)",
               "<=", 0.03, "{:.2%}"),
        Figure("random_over_best_min", "random / best sampler evaluations (worst study)", ">=", 5, "{:.1f}x")]),
    Bench("fidelity_published", ["--logo"], [], [
        Figure("within_share", "published runs within ±10 % of step time (226)", ">=", 0.80, "{:.0%}"),
        Figure("worst_group_median", "worst group's median |error|", "<=", 0.15, "{:.1%}")]),
    Bench("deepseek_v3_anchor", [], [], [
        Figure("fp8_overlap_ratio", "DeepSeek-V3 layout's GPU-hours / the reported 180 K per T (not fitted)", "<=",
               1.5, "{:.2f}x")]),
    Bench("search_time", [], ["--repeat", "1"], [
        Figure("search_wall_s_max", "Galvatron's question end to end, s (megatron and fsdp spaces, worst)", "<=", 3.5,
               "{:.2f}"),
        Figure("speedup_min", "Galvatron 352 s / that wall time", ">=", 100, "{:.0f}x"),
        Figure("batches_wall_s_max", "the same with 4 global batch sizes in one study, s", "<=", 5, "{:.2f}"),
        Figure("quickstart_wall_s", "quickstart example end to end, s", "<=", 5, "{:.2f}")]),
    Bench("study_overhead", [], ["--trials", "300"], [
        Figure("wall_ms_per_trial", "study wall ms per trial (1,000 trials < 60 s)", "<", 60, "{:.1f}"),
        Figure("storage_ms_per_trial", "storage ms per trial", "<", 20, "{:.1f}")]),
    Bench("measure_pruning", [], ["--steps", "4", "--orders", "20"], [
        Figure("saved_pct", "measured-step time saved by pruning, %", ">=", 50, "{:.1f}")]),
    Bench("memory_fidelity", [], ["--limit", "10"], [
        Figure("within5_pct", "layouts with analytic total within 5 % of the dry run, %", ">=", 95, "{:.1f}")],
        patterns={"within5_pct": r"^total\s+\|err\|.*within 5%:\s*([\d.]+)%"}),
    Bench("fidelity_cpu", [], ["--quick"], [
        Figure("tau", "Kendall tau, predicted vs measured step time (calibrated cpu)", ">=", 0.8, "{:.3f}"),
        Figure("median_err", "median absolute relative error of the step time", "<=", 0.15, "{:.1%}"),
        Figure("cv_tau", "Kendall tau after a cross-validated refit to measured step times", ">=", 0.8, "{:.3f}"),
        Figure("cv_median_err", "median error after a cross-validated refit", "<=", 0.15, "{:.1%}")]),
    Bench("crash_resume", [], ["--kills", "5"], [
        Figure("crash_kills", "kill -9 points", ">=", 5, "{:.0f}"),
        Figure("crash_violations", "lost, duplicated, unretried or over-budget trials; orphans", "==", 0, "{:.0f}")]),
    Bench("fuzz_inputs", [], ["--examples", "200"], [
        Figure("fuzz_examples", "fuzzed inputs", ">=", 200, "{:.0f}"),
        Figure("fuzz_other", "inputs that crashed or left the DB changed", "==", 0, "{:.0f}")]),
    Bench("service_load", [], ["--duration-s", "20", "--studies", "4"], [
        Figure("errors", "HTTP errors, 32 clients on loopback mixing reads with submitted studies", "==", 0,
               "{:.0f}"),
        Figure("studies_wrong", "submitted studies not completed exactly once", "==", 0, "{:.0f}"),
        Figure("requests_per_s", "requests/s served (reported; no target in issue 18)", ">=", 0, "{:,.0f}"),
        Figure("p99_ms", "p99 request latency, ms (reported; no target in issue 18)", ">=", 0, "{:,.0f}")]),
]


def parse(bench: Bench, out: str) -> dict[str, float]:
    """Figures from the last RESULT line of ``out`` (or the bench's patterns)."""
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if lines:
        return {k: float(v) for k, v in re.findall(r"(\w+)=(\S+)", lines[-1])}
    found = {}
    for key, pattern in bench.patterns.items():
        m = re.search(pattern, out, re.M)
        if m:
            found[key] = float(m.group(1))
    return found


def machine() -> str:
    """CPU model, cores, memory and OS of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
        return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.release()}"
    except (OSError, StopIteration, ValueError, IndexError):
        return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def run(bench: Bench, quick: bool, timeout_s: float) -> tuple[dict[str, float], str, float]:
    """Run one benchmark; (figures, note, seconds)."""
    path = HERE / f"{bench.name}.py"
    if not path.exists():
        return {}, "not present yet", 0.0
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, str(path), *(bench.quick if quick else bench.full)],
                              capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {}, f"timed out after {timeout_s:.0f} s", time.monotonic() - start
    wall = time.monotonic() - start
    figures = parse(bench, proc.stdout)
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:120]
        return figures, f"exit {proc.returncode}: {tail}", wall
    return figures, "" if figures else "no RESULT line", wall


def table(results: list[tuple[Bench, dict[str, float], str, float]], quick: bool) -> str:
    """The markdown scoreboard."""
    head = (f"Measured {dt.date.today().isoformat()} on {machine()}, "
            f"`python benchmarks/run_all.py{' --quick' if quick else ''}`.\n\n"
            "| benchmark | figure | value | target | met | run |\n|---|---|---|---|---|---|")
    rows = []
    for bench, figures, note, wall in results:
        for f in bench.figures:
            value = figures.get(f.key)
            shown = f.fmt.format(value) if value is not None else "—"
            met = "—" if value is None else ("yes" if f.met(value) else "**no**")
            target = f"{f.op} {f.fmt.format(f.target)}"
            run_note = f"{wall:.0f} s" + (f" ({note})" if note else "")
            cells = [bench.name, f.label, shown, target, met, run_note]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join([head, *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller arguments for every benchmark")
    ap.add_argument("--only", default=None, help="comma-separated benchmark names")
    ap.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    ap.add_argument("--timeout-s", type=float, default=3600.0, help="per benchmark")
    args = ap.parse_args()
    chosen = [b for b in BENCHES if args.only is None or b.name in args.only.split(",")]
    results = []
    for bench in chosen:
        print(f"running {bench.name} ...", file=sys.stderr, flush=True)
        results.append((bench, *run(bench, args.quick, args.timeout_s)))
    text = table(results, args.quick)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
