"""One study's driver process, started by :class:`autotune.service.runner.Runner`:
``python -m autotune.service.worker NAME --parent PID [--ray-address ADDR]``, storage URL in ``$AUTOTUNE_STORAGE``
(never on the command line, where ``ps`` would show its password).

It runs the study exactly as ``autotune submit`` / ``resume`` do (:func:`autotune.study.run.run_study`, the
same storage and budget code; created when the storage does not hold it yet, else continued), writes its
progress to the study's service run at most every :data:`PROGRESS_S`, and its outcome (``completed``, or
``failed`` with the one-line error) when it ends. A watcher thread ends the whole process group (the driver
and a local Ray it started) within :data:`WATCH_S` once the server that started it is gone or the run is no
longer active (cancelled), so no driver outlives its server or runs a cancelled study.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import time
import traceback

from autotune.errors import AutotuneError
from autotune.service.runs import ACTIVE, Runs
from autotune.spec import parse_spec
from autotune.store.storage import Storage
from autotune.study.plan import plan_study
from autotune.study.run import run_study
from autotune.study.run_options import Progress, options_for

__all__ = ["main", "PROGRESS_S", "WATCH_S"]

PROGRESS_S = 0.5
"""Least seconds between two progress writes."""
WATCH_S = 0.5
"""How often the watcher looks at the parent process and the run's state."""


def _end_group() -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _watch(runs: Runs, name: str, parent: int) -> None:
    while True:
        time.sleep(WATCH_S)
        if os.getppid() != parent:
            _end_group()
        run = runs.get(name)
        if run is None or run.state not in ACTIVE:
            _end_group()


def _reporter(runs: Runs, name: str):
    last = [0.0]

    def report(p: Progress) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_S:
            last[0] = now
            runs.progress(name, dataclasses.asdict(p))

    return report


def run(name: str, parent: int, ray_address: str | None) -> int:
    """Drive study ``name`` to its end; returns the process exit code (0 done, 2 a user error, 1 a bug)."""
    store = Storage(None)
    runs = Runs(store)
    job = runs.get(name)
    if job is None or job.state not in ACTIVE:
        return 0
    threading.Thread(target=_watch, args=(runs, name, parent), daemon=True).start()
    try:
        spec = parse_spec(job.spec)
        plan = plan_study(spec, storage=store.url)
        create = store.study_spec(name) is None
        progress = run_study(plan, store, options_for(spec.search, ray_address), create=create,
                             on_progress=_reporter(runs, name))
        runs.progress(name, dataclasses.asdict(progress))
        runs.move(name, "completed")
        return 0
    except AutotuneError as e:
        runs.move(name, "failed", error=" ".join(str(e).split()))
        return 2
    except Exception as e:  # noqa: BLE001 - any failure becomes the run's recorded error
        traceback.print_exc()
        runs.move(name, "failed", error=" ".join(f"{type(e).__name__}: {e}".split()))
        return 1


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(prog="python -m autotune.service.worker")
    parser.add_argument("name")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args(argv)
    sys.exit(run(args.name, args.parent, args.ray_address))


if __name__ == "__main__":
    main()
