"""A real ``autotune serve`` (uvicorn) on 127.0.0.1 in a subprocess, for the service tests.

:func:`start` picks a free port, starts ``python -m autotune serve`` in its own process group with the
given flags and environment (stdout and stderr captured to a log file), and polls ``/api/v1/health``
(bounded: :data:`START_S`). A server started without tokens makes one and writes it to
``$AUTOTUNE_TOKEN_FILE``, set to a file in ``tmp`` (never the user's own state directory): :attr:`Server.token`
holds it then, :attr:`Server.headers` the header that sends it. :func:`kill` ends the group: SIGTERM then
SIGKILL (``hard``: SIGKILL at once, as a crash), bounded. The log is kept for assertions (no token or password in it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from autotune.service.local_token import read_token

__all__ = ["Server", "START_S", "start", "kill", "free_port", "wait_state"]

START_S = 60.0
"""Longest wait for the server's health endpoint."""


@dataclass
class Server:
    """A running server: its URL, process and log file."""

    url: str
    proc: subprocess.Popen
    log: Path
    args: list[str]
    env: dict[str, str]
    token: str | None = None
    """The token the server made (no tokens given), read from its token file; else None."""

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header of :attr:`token` (empty when the server was given its tokens)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp: Path, storage: str, *flags: str, env: dict[str, str] | None = None, port: int | None = None) -> Server:
    """Start a server on a free loopback port and wait for its health endpoint."""
    port = port or free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--storage", storage, *flags]
    full_env = {k: v for k, v in os.environ.items() if k not in ("AUTOTUNE_TOKENS", "AUTOTUNE_TOKEN")}
    stamp = time.monotonic_ns()
    full_env |= {"AUTOTUNE_TOKEN_FILE": str(tmp / f"serve-token-{port}-{stamp}")} | (env or {})
    log = tmp / f"server-{port}-{stamp}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "autotune", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=full_env, start_new_session=True, stdin=subprocess.DEVNULL)
    server = Server(f"http://127.0.0.1:{port}", proc, log, args, full_env)
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {server.log_text()[-2000:]}")
        try:
            if httpx.get(f"{server.api}/health", timeout=2).status_code == 200:
                server.token = read_token(Path(full_env["AUTOTUNE_TOKEN_FILE"]))
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    kill(server, hard=True)
    raise RuntimeError(f"server did not answer /health within {START_S} s: {server.log_text()[-2000:]}")


def kill(server: Server, hard: bool = False) -> None:
    """End the server's process group (SIGKILL at once when ``hard``), waiting at most 20 s."""
    for sig in ([] if hard else [signal.SIGTERM]) + [signal.SIGKILL]:
        try:
            os.killpg(server.proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            server.proc.wait(timeout=10)
            break
        except subprocess.TimeoutExpired:
            continue
    if server.proc.poll() is None:
        server.proc.wait(timeout=10)


def wait_state(api: str, name: str, states: tuple[str, ...], headers: dict[str, str] | None = None,
               timeout_s: float = 120.0) -> dict:
    """Poll a study's state until it is one of ``states`` (bounded); returns it."""
    deadline, state = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        state = httpx.get(f"{api}/studies/{name}", headers=headers, timeout=10).json()
        if state.get("state") in states:
            return state
        time.sleep(0.2)
    raise AssertionError(f"{name} did not reach {states} in {timeout_s} s: {state}")
