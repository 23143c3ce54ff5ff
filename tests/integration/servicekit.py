"""A real ``autotune serve`` on loopback for tests: a free port, a fresh SQLite file, one bearer token.

:func:`serve` starts ``python -m autotune serve`` as a child process (the worktree's code: PYTHONPATH is
passed on), waits for ``GET /api/v1/health`` and stops the server (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["Server", "serve", "free_port"]

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Server:
    """A running server: its base URL, the token it accepts and its storage URL."""

    base: str
    token: str
    storage: str

    def get(self, path: str, ok_only: bool = True) -> httpx.Response:
        """``GET path`` with the token; raises on a 4xx/5xx when ``ok_only``."""
        r = httpx.get(self.base + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=60)
        if ok_only:
            r.raise_for_status()
        return r


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(workdir: Path, *flags: str, storage: str | None = None) -> Iterator[Server]:
    """Run the server in ``workdir`` (its log, and its SQLite file unless ``storage`` names a database, live
    there) with extra CLI ``flags``."""
    port, token = free_port(), secrets.token_urlsafe(24)
    storage = storage or f"sqlite:///{workdir / 'service.db'}"
    env = dict(os.environ, AUTOTUNE_TOKENS=token)
    log = (workdir / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "autotune", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--storage", storage, *flags], cwd=workdir, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"autotune serve exited {proc.returncode}: {(workdir / 'server.log').read_text()}")
            try:
                if httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"autotune serve did not answer in {START_TIMEOUT_S:.0f} s")
            time.sleep(0.3)
        yield Server(base, token, storage)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
