"""Score the cost model on the published training runs of ../shared/reference, and cross-validate its fit.

Every row of ``narayanan2021_table1.csv`` and ``llm_foundry_mpt.csv`` goes through the public estimate API
(:func:`autotune.costmodel.estimate.estimate_many`) with the layout and stack it ran on
(:mod:`autotune.calibration.published`); the figure compared is the step time. Printed: per file and per
group (GPU × precision × sequence band × GPU-count band) the rows within ±10 %, the median |error| and the
signed median, then the worst rows.

The cost model has a few fitted parameters (:data:`FITTED`: the H100's sustained tensor-core fraction and
llm-foundry's attention integration, host time per layer and comm/compute interference; everything else is
datasheet, nccl-tests or FlashAttention benchmark figures). ``--fit`` refits them here by robust least squares
on log(predicted / published) and prints the fitted values beside the catalog's. Leave-one-group-out: for each
group, fit on all the others and score the held-out group with those values; the pooled held-out errors are
the out-of-sample score. Usage: ``python benchmarks/fidelity_published.py [--fit] [--logo] [--worst N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from autotune.calibration.published import PublishedRun, load_runs, step_time_errors
from autotune.catalog import get_gpu, get_stack

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"

#: (catalog kind, entries, field, lower, upper): the parameters fitted to the reference rows.
FITTED = (
    ("gpu", ("h100-sxm", "h200"), "sustained_fraction", 0.4, 1.0),
    ("stack", ("llm-foundry",), "attention_factor", 0.3, 1.0),
    ("stack", ("llm-foundry",), "layer_host_us", 0.0, 3000.0),
    ("stack", ("llm-foundry",), "comm_compute_slowdown", 0.0, 1.0),
)


def catalog_values() -> np.ndarray:
    """The fitted parameters' values in the shipped catalog."""
    out = []
    for kind, names, field, _, _ in FITTED:
        spec = get_gpu(names[0]) if kind == "gpu" else get_stack(names[0])
        out.append(float(getattr(spec, field)))
    return np.array(out)


def _specs(theta: Sequence[float]) -> tuple[dict, dict]:
    gpus: dict = {}
    stacks: dict = {}
    for (kind, names, field, _, _), value in zip(FITTED, theta, strict=True):
        for name in names:
            table, get = (gpus, get_gpu) if kind == "gpu" else (stacks, get_stack)
            base = table.get(name) or get(name)
            table[name] = base.model_copy(update={field: float(value)})
    return gpus, stacks


def errors(runs: Sequence[PublishedRun], theta: Sequence[float]) -> np.ndarray:
    """Relative step-time errors, predicted / published − 1, with the fitted parameters at ``theta``."""
    return step_time_errors(list(runs), *_specs(theta))


def fit(runs: Sequence[PublishedRun], start: np.ndarray) -> np.ndarray:
    """Robust least squares (soft-L1 on log ratios, scale 5 %) of :data:`FITTED` over ``runs``."""
    lo = np.array([f[3] for f in FITTED])
    hi = np.array([f[4] for f in FITTED])
    scale = np.maximum(hi - lo, 1e-9)
    res = least_squares(lambda z: np.log1p(errors(runs, lo + z * scale)), (start - lo) / scale, bounds=(0, 1),
                        loss="soft_l1", f_scale=0.05, diff_step=1e-3, max_nfev=60)
    return lo + res.x * scale


def summarise(label: str, runs: Sequence[PublishedRun], err: np.ndarray) -> tuple[int, float]:
    """Print per-source and per-group counts within ±10 % and median |error|; return (within, worst median)."""
    groups: dict[str, list[float]] = defaultdict(list)
    sources: dict[str, list[float]] = defaultdict(list)
    for r, e in zip(runs, err, strict=True):
        groups[r.group].append(float(e))
        sources[r.source].append(float(e))
    within = int(np.sum(np.abs(err) <= 0.10))
    print(f"\n## {label}: {within}/{len(runs)} within ±10 % ({100 * within / len(runs):.0f} %), "
          f"median |error| {100 * float(np.median(np.abs(err))):.1f} %")
    for name, es in sorted(sources.items()):
        w = sum(abs(e) <= 0.10 for e in es)
        print(f"  {name:10s} {w:3d}/{len(es):3d} within, median |error| {100 * statistics.median(map(abs, es)):.1f} %")
    print(f"  {'group':44s} {'n':>4s} {'within':>7s} {'med|e|':>7s} {'median':>7s}")
    worst = 0.0
    for g, es in sorted(groups.items()):
        med = statistics.median(map(abs, es))
        worst = max(worst, med)
        print(f"  {g:44s} {len(es):4d} {sum(abs(e) <= 0.10 for e in es):7d} {100 * med:6.1f}% "
              f"{100 * statistics.median(es):+6.1f}%")
    return within, worst


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="refit the FITTED parameters on all rows")
    ap.add_argument("--logo", action="store_true", help="leave-one-group-out cross-validation")
    ap.add_argument("--worst", type=int, default=10, help="worst rows to list")
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    runs = load_runs(args.reference)
    theta = catalog_values()
    print("fitted parameters (catalog):", ", ".join(f"{'/'.join(f[1])}.{f[2]}={v:.4g}"
                                                     for f, v in zip(FITTED, theta, strict=True)))
    err = errors(runs, theta)
    within, worst = summarise("catalog values, all rows", runs, err)
    order = np.argsort(-np.abs(err))[: args.worst]
    print(f"\n  worst {args.worst} rows:")
    for i in order:
        print(f"    {runs[i].id:44s} {100 * err[i]:+6.1f}%")
    if args.fit:
        theta_all = fit(runs, theta)
        print("\nrefit on all rows:", ", ".join(f"{f[2]}={v:.4g}" for f, v in zip(FITTED, theta_all, strict=True)))
        summarise("refit, all rows (in-sample)", runs, errors(runs, theta_all))
    if args.logo:
        groups = sorted({r.group for r in runs})
        held = np.empty(len(runs))
        print(f"\nleave-one-group-out over {len(groups)} groups:")
        for g in groups:
            train = [r for r in runs if r.group != g]
            test_idx = [i for i, r in enumerate(runs) if r.group == g]
            th = fit(train, theta)
            held[test_idx] = errors([runs[i] for i in test_idx], th)
            print(f"  held out {g:44s} fit " + " ".join(f"{v:.3g}" for v in th))
        within_logo, worst_logo = summarise("leave-one-group-out (held-out errors)", runs, held)
        print(f"\nLOGO: {within_logo}/{len(runs)} within ±10 %, worst group median |error| {100 * worst_logo:.1f} %")
    print(f"\nplain: {within}/{len(runs)} within ±10 % ({100 * within / len(runs):.0f} %), worst group median "
          f"|error| {100 * worst:.1f} %   [{time.perf_counter() - t0:.0f} s]")
    result = f"RESULT within_share={within / len(runs):.4f} worst_group_median={worst:.4f}"
    if args.logo:
        result += f" logo_within_share={within_logo / len(runs):.4f} logo_worst_group_median={worst_logo:.4f}"
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
