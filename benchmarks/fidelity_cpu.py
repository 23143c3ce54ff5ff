"""Analytic vs measured step times of the tiny model at world size 4 on this machine's CPU.

1. ``autotune calibrate --name cpu`` (microbenchmarks, then training steps of the calibration layouts:
   64 tokens, none of them a reference layout; ``--quick`` optional) into ``--storage``.
2. The reference layouts (``benchmarks/tiny_cpu_reference.yaml``: dp, ZeRO 0/3, TP+SP, PP, full
   recompute, micro-batch 1/2; 32 layouts) measured with ``workers.measure.measure_trial``, cached in
   ``--cache`` (``benchmarks/measured_set.py``).
3. Kendall τ and median |relative error| of the predictions of: the catalog ``cpu`` profile, the
   calibrated profile (out of sample: fitted on none of these layouts), and the profile refitted to the
   measured step times (``autotune.calibration.refit.fit_measured``) in-sample and 2-fold cross-validated (fit on
   one half of the layouts, score the other). The measurement's own repeatability bounds what any model
   can reach: τ between the fastest of the first and of the second half of the timed steps of the same
   trials, and the gap between layouts that are the same program (ZeRO 0 vs 3 at dp = 1).
Usage: python benchmarks/fidelity_cpu.py [--layouts N] [--quick] [--storage URL] [--cache FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measured_set import DEFAULT_CACHE, layout_key, measure_layouts, reference_layouts, reference_problem  # noqa: E402

from autotune.calibration.refit import error_metrics, fit_measured, predict  # noqa: E402
from autotune.catalog import get_gpu  # noqa: E402
from autotune.store.profiles import load_profile  # noqa: E402


def spread(configs: list[Any], n: int) -> list[Any]:
    """``n`` layouts spread evenly over the enumeration order (every parallelism stays represented)."""
    if n >= len(configs):
        return configs
    return [configs[int(i)] for i in np.linspace(0, len(configs) - 1, n).round()]


def calibrate(storage: str, quick: bool) -> float:
    """Run ``autotune calibrate --name cpu`` in-process; seconds taken."""
    from autotune.cli import main

    start = time.monotonic()
    try:
        main(["calibrate", "--name", "cpu", "--storage", storage, "--quiet"] + (["--quick"] if quick else []))
    except SystemExit as e:
        if e.code:
            raise
    return time.monotonic() - start


def repeatability(rows: list[dict[str, Any]], configs: list[Any]) -> dict[str, float]:
    """τ between two halves of each trial's timed steps; median gap of same-program pairs."""
    from scipy.stats import kendalltau

    steps = [r["step_times_s"] for r in rows if len(r["step_times_s"]) >= 4]
    halves = [(min(s[:len(s) // 2]), min(s[len(s) // 2:])) for s in steps]
    a, b = zip(*halves, strict=True) if halves else ((), ())
    by_key = {layout_key(c): r["step_time_s"] for c, r in zip(configs, rows, strict=True)}
    gaps = []
    for c in configs:
        if c.dp == 1 and c.zero == 0:
            twin = layout_key(c).replace('"zero": 0', '"zero": 3')
            if twin in by_key:
                x, y = by_key[layout_key(c)], by_key[twin]
                gaps.append(abs(x - y) / min(x, y))
    return {"half_steps_tau": float(kendalltau(a, b).statistic) if len(a) > 1 else float("nan"),
            "same_program_gap": float(np.median(gaps)) if gaps else float("nan"), "same_program_pairs": len(gaps)}


def run(n_layouts: int, quick: bool, storage: str, cache: Path) -> dict[str, Any]:
    """Every figure of the benchmark as one JSON-ready dict."""
    _, problem = reference_problem()
    calib_s = calibrate(storage, quick)
    gpu = load_profile("cpu", storage)
    configs = spread([c for _, c in reference_layouts(problem)], n_layouts)
    rows = list(measure_layouts(problem, configs, cache, log=False).values())
    ok = [(c, r) for c, r in zip(configs, rows, strict=True) if r["status"] == "ok"]
    configs, rows = [c for c, _ in ok], [r for _, r in ok]
    meas = np.array([r["step_time_s"] for r in rows])
    m, t = problem.model, problem.training
    out: dict[str, Any] = {"layouts": len(configs), "calibrate_s": calib_s, "profile": gpu.name,
                           "profile_fields": gpu.model_dump(mode="json")}
    out["catalog"] = error_metrics(predict(m, t, get_gpu("cpu"), 4, configs), meas)
    out["calibrated"] = error_metrics(predict(m, t, gpu, 4, configs), meas)
    refit, report = fit_measured(m, t, 4, configs, meas, gpu)
    out["refit_in_sample"] = report["after"]
    out["refit_fields"] = {k: v["after"] for k, v in report["fields"].items()}
    folds = [np.arange(len(configs)) % 2 == k for k in (0, 1)]
    pred = np.empty(len(configs))
    for test in folds:
        train = ~test
        fold, _ = fit_measured(m, t, 4, [c for c, k in zip(configs, train, strict=True) if k], meas[train], gpu)
        pred[test] = predict(m, t, fold, 4, [c for c, k in zip(configs, test, strict=True) if k])
    out["refit_cross_validated"] = error_metrics(pred, meas)
    out["repeatability"] = repeatability(rows, configs)
    out["rows"] = [{"layout": f"tp{c.tp} pp{c.pp} dp{c.dp} zero{c.zero} mb{c.micro_batch} ga{c.grad_accum} "
                              f"{c.recompute}", "measured_s": float(x), "calibrated_s": float(a), "refit_s": float(b)}
                   for c, x, a, b in zip(configs, meas, predict(m, t, gpu, 4, configs),
                                         predict(m, t, refit, 4, configs), strict=True)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layouts", type=int, default=32, help="layouts to compare (>= 8)")
    ap.add_argument("--quick", action="store_true", help="calibrate --quick")
    ap.add_argument("--storage", default=None, help="DB for the profile [default: a temporary SQLite file]")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    storage = args.storage or f"sqlite:///{tempfile.mkdtemp()}/fidelity.db"
    out = run(max(8, args.layouts), args.quick, storage, args.cache)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for r in out["rows"]:
        print(f"{r['layout']:42s} measured {r['measured_s']:.3f} s  calibrated {r['calibrated_s']:.3f}  "
              f"refit {r['refit_s']:.3f}")
    print(f"{out['layouts']} layouts, calibrate {out['calibrate_s']:.0f} s, profile {out['profile']}")
    for k in ("catalog", "calibrated", "refit_in_sample", "refit_cross_validated"):
        e = out[k]
        print(f"{k:22s} Kendall tau {e['kendall_tau']:.3f}  median |error| {e['median_abs_rel_error']:.1%}")
    print("repeatability:", json.dumps(out["repeatability"]))
    print("refit fields:", json.dumps({k: round(v, 4) for k, v in out["refit_fields"].items()}))
    cal, cv = out["calibrated"], out["refit_cross_validated"]
    print(f"RESULT layouts={out['layouts']} tau={cal['kendall_tau']:.3f} median_err={cal['median_abs_rel_error']:.3f} "
          f"cv_tau={cv['kendall_tau']:.3f} cv_median_err={cv['median_abs_rel_error']:.3f}")


if __name__ == "__main__":
    main()
