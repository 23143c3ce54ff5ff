"""Wall time of a 1,000-trial analytic study end to end, and database time per trial.

Runs the real driver (TPE, local Ray, SQLite file in a temporary directory) on the quickstart problem
with a 1,000-trial budget; the driver itself accounts the seconds spent in the database (Optuna mirror
writes, evaluation rows, cache look-ups). Targets: < 60 s end to end, < 20 ms of storage per trial.
Usage: python benchmarks/study_overhead.py [--trials 1000] [--sampler tpe]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from importlib import resources
from pathlib import Path

from autotune.spec import load_spec
from autotune.store.storage import Storage
from autotune.study.driver import Driver, RunOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--sampler", default="tpe")
    args = ap.parse_args()
    spec = load_spec(str(resources.files("search_spaces").joinpath("examples/quickstart.yaml")))
    spec = spec.model_copy(update={"name": "overhead"})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        storage = Storage(f"sqlite:///{Path(tmp) / 'overhead.db'}")
        driver = Driver(spec, storage, RunOptions(n_trials=args.trials, sampler=args.sampler, workers=2, seed=0))
        study = driver.open(create=True)
        progress = driver.run(study)
        wall = time.perf_counter() - start
        storage.close()
    per_trial_ms = 1000 * progress.storage_s / max(progress.done, 1)
    print(f"trials: {progress.done} ({progress.infeasible} rejected, {progress.cached} cached, "
          f"{progress.failed} failed), sampler {args.sampler}")
    print(f"end to end: {wall:.1f} s (target < 60 s); {wall / progress.done * 1000:.1f} ms per trial")
    print(f"storage: {progress.storage_s:.1f} s, {per_trial_ms:.1f} ms per trial (target < 20 ms)")
    print(f"RESULT trials={progress.done} wall_s={wall:.1f} wall_ms_per_trial={wall / progress.done * 1000:.1f} "
          f"storage_ms_per_trial={per_trial_ms:.1f}")


if __name__ == "__main__":
    main()
