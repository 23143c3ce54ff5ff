"""The service's study runner: one driver process (:mod:`autotune.service.worker`) per running study.

The runs' states live in the study storage (:class:`autotune.service.runs.Runs`); the runner keeps only the
process handles. :meth:`Runner.start` resumes every run left active (the server died or was stopped while
it ran: its drivers died with it), then a monitor thread looks every ``poll_s`` for drivers that ended
without recording an outcome (killed, out of memory) and marks their runs failed. :meth:`Runner.cancel`
records the cancellation first (the driver's watcher then also ends it) and ends the driver's process
group: SIGTERM, then SIGKILL after :data:`STOP_S`. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading

from autotune.service.runs import ACTIVE, Runs
from autotune.service.settings import Settings

__all__ = ["Runner", "STOP_S"]

STOP_S = 5.0
"""Seconds a driver gets to exit after SIGTERM before SIGKILL."""


def _stop(proc: subprocess.Popen) -> None:
    """End a driver's process group (it leads its own session), bounded."""
    for sig, wait in ((signal.SIGTERM, STOP_S), (signal.SIGKILL, STOP_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Runner:
    """Starts, watches and stops the study drivers of one server."""

    def __init__(self, settings: Settings, runs: Runs) -> None:
        self.settings = settings
        self.runs = runs
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._monitor: threading.Thread | None = None

    def start(self) -> list[str]:
        """Resume the runs left active and start the monitor; returns the resumed study names."""
        names = [r.name for r in self.runs.active()]
        for name in names:
            self.launch(name)
        self._monitor = threading.Thread(target=self._watch, name="autotune-runner", daemon=True)
        self._monitor.start()
        return names

    def launch(self, name: str) -> None:
        """Start the driver of the active run ``name``."""
        cmd = [sys.executable, "-m", "autotune.service.worker", name, "--parent", str(os.getpid())]
        if self.settings.ray_address:
            cmd += ["--ray-address", self.settings.ray_address]
        env = dict(os.environ, AUTOTUNE_STORAGE=self.settings.storage)
        with self._lock:
            old = self._procs.get(name)
            if old is not None and old.poll() is None:
                return
            proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL)
            self._procs[name] = proc
        self.runs.move(name, "running", pid=proc.pid)

    def cancel(self, name: str) -> bool:
        """Mark run ``name`` cancelled and end its driver; False when it was not active."""
        if not self.runs.move(name, "cancelled"):
            return False
        with self._lock:
            proc = self._procs.pop(name, None)
        if proc is not None:
            _stop(proc)
        return True

    def running(self) -> list[str]:
        """Names of the studies whose driver process is alive."""
        with self._lock:
            return [n for n, p in self._procs.items() if p.poll() is None]

    def _reap(self) -> None:
        with self._lock:
            ended = {n: p for n, p in self._procs.items() if p.poll() is not None}
            for n in ended:
                del self._procs[n]
        for name, proc in ended.items():
            run = self.runs.get(name)
            if run is not None and run.state in ACTIVE:
                self.runs.move(name, "failed", error=f"driver exited with code {proc.returncode} before "
                                                     "recording an outcome")

    def _watch(self) -> None:
        while not self._stopped.wait(self.settings.poll_s):
            self._reap()

    def stop(self) -> None:
        """End the monitor and every driver; their runs stay active, for the next start to resume."""
        self._stopped.set()
        if self._monitor is not None:
            self._monitor.join(timeout=STOP_S)
        with self._lock:
            procs = list(self._procs.values())
            self._procs.clear()
        for proc in procs:
            _stop(proc)
