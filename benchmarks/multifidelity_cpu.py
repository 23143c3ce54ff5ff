"""A multi-fidelity study on tiny-cpu.yaml (analytic -> measure) with a calibrated profile, then a
refit of that profile to the study's measured trials.

1. ``autotune calibrate --quick --name cpu`` (unless ``--profile`` names a stored one).
2. ``autotune submit tiny-cpu.yaml --profile cpu`` with ``search.fidelities: [analytic, measure]``,
   ``top_k`` and ``n_trials`` from the flags: the whole space scored analytically (exhaustive), the
   analytic top-k measured first (enqueued), then TPE for the rest of the measured budget.
3. Figures: study wall time, the measured best and its rank in the analytic ranking (is it in the top
   3?), and ``autotune calibrate --from-study`` (median |error| and Kendall τ before and after).
Usage: python benchmarks/multifidelity_cpu.py [--n-trials 6] [--top-k 3] [--storage URL] [--profile REF]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from autotune.cli import main as cli
from autotune.store.profiles import ProfileStore
from autotune.store.storage import Storage

SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "examples" / "tiny-cpu.yaml"


def _cli(args: list[str]) -> None:
    try:
        cli(args)
    except SystemExit as e:
        if e.code:
            raise


def run(n_trials: int, top_k: int, storage: str, profile: str | None, workdir: Path) -> dict[str, Any]:
    """Every figure as one JSON-ready dict."""
    out: dict[str, Any] = {}
    if profile is None:
        t0 = time.monotonic()
        _cli(["calibrate", "--quick", "--quiet", "--name", "cpu", "--storage", storage])
        out["calibrate_s"] = time.monotonic() - t0
        profile = "cpu"
    data = yaml.safe_load(SPEC.read_text())
    data["name"] = f"tiny-cpu-mf-{int(time.time())}"
    data["search"] |= {"fidelities": ["analytic", "measure"], "top_k": top_k, "n_trials": n_trials,
                       "sampler": "tpe", "workers": 1, "seed": 0}
    spec = workdir / "tiny-cpu-mf.yaml"
    spec.write_text(yaml.safe_dump(data))
    t0 = time.monotonic()
    _cli(["submit", str(spec), "--storage", storage, "--profile", profile, "--quiet", "--json"])
    out["study_s"] = time.monotonic() - t0
    store = Storage(storage, create=False)
    rows = store.evaluations(data["name"])
    analytic = sorted((r for r in rows if r.fidelity == "analytic" and r.status == "ok" and r.trial == -1),
                      key=lambda r: r.metrics["step_time_s"])
    measured = [r for r in rows if r.fidelity == "measure" and r.status == "ok"]
    keys = [json.dumps(r.layout, sort_keys=True) for r in analytic]
    best = min(measured, key=lambda r: r.metrics["step_time_s"])
    out |= {"study": data["name"], "profile": ProfileStore(store).get(profile).ref, "analytic_layouts": len(keys),
            "measured_ok": len(measured), "measured_total": sum(r.fidelity == "measure" for r in rows),
            "measured_best": best.layout, "measured_best_step_s": best.metrics["step_time_s"],
            "measured_best_analytic_rank": keys.index(json.dumps(best.layout, sort_keys=True)) + 1,
            "measured": [{"trial": r.trial, "step_s": r.metrics["step_time_s"],
                          "analytic_rank": keys.index(json.dumps(r.layout, sort_keys=True)) + 1} for r in measured]}
    _cli(["calibrate", "--from-study", data["name"], "--name", "cpu-refit", "--storage", storage, "--quiet"])
    refit = ProfileStore(store).get("cpu-refit").source
    out["refit"] = {"before": refit["before"], "after": refit["after"], "rows": refit["rows"]}
    store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-trials", type=int, default=6)
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--storage", default=None, help="[default: a temporary SQLite file]")
    ap.add_argument("--profile", default=None, help="stored profile to use instead of calibrating")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    storage = args.storage or f"sqlite:///{work / 'mf.db'}"
    print(json.dumps(run(args.n_trials, args.top_k, storage, args.profile, work), indent=2))


if __name__ == "__main__":
    main()
