"""A throwaway PostgreSQL server for tests: installed from Debian packages if missing, run on loopback.

:func:`start` finds the server binaries (``/usr/lib/postgresql/<version>/bin``), installing the
``postgresql`` package with apt-get (bounded by timeouts, so a machine without the archive fails fast)
when they are missing; initialises a cluster in a fresh directory under /tmp owned by the
``postgres`` user (the server refuses to run as root), with password authentication on 127.0.0.1
and a free port, and starts it. :func:`stop` stops it and removes the directory. Any step that
fails raises :class:`Unavailable` with the reason, for the fixture to skip with.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.integration.aptkit import apt_install

__all__ = ["Server", "Unavailable", "start", "stop", "USER", "PASSWORD"]

USER, PASSWORD = "autotune", "s3cret-pw"
APT_TIMEOUT_S = {"update": 180, "install": 420}


class Unavailable(RuntimeError):
    """PostgreSQL could not be installed or started here."""


@dataclass(frozen=True)
class Server:
    """A running server."""

    root: Path
    port: int
    bindir: Path

    def url(self, database: str = "autotune", password: str = PASSWORD) -> str:
        """SQLAlchemy URL (psycopg 3 driver)."""
        return f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{self.port}/{database}"


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


def _install() -> Path:
    failed = apt_install("postgresql", APT_TIMEOUT_S)
    if failed:
        raise Unavailable(f"PostgreSQL server binaries are missing and {failed}")
    bindir = _bindir()
    if bindir is None:
        raise Unavailable("apt-get installed postgresql but no /usr/lib/postgresql/*/bin/pg_ctl was found")
    return bindir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a server command as ``postgres`` when we are root (PostgreSQL refuses root)."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)


def start() -> Server:
    """Install if needed, initialise and start a server; raises :class:`Unavailable` with the reason."""
    bindir = _bindir() or _install()
    root = Path(tempfile.mkdtemp(prefix="autotune-pg-"))
    (root / "pw").write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "pw", "postgres", "postgres")
    port = _free_port()
    steps = [
        [str(bindir / "initdb"), "-D", str(root / "data"), "-U", USER, f"--pwfile={root / 'pw'}",
         "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync"],
        [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-t", "60", "-o",
         f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start"],
        [str(bindir / "createdb"), "-h", str(root), "-p", str(port), "-U", USER, "autotune"],
    ]
    for cmd in steps:
        proc = _as_server_user(cmd, timeout=120)
        if proc.returncode:
            log = (root / "log").read_text()[-300:] if (root / "log").exists() else ""
            stop(Server(root, port, bindir))
            raise Unavailable(f"{Path(cmd[0]).name} failed: {(proc.stderr or proc.stdout).strip()[-300:]} {log}")
    return Server(root, port, bindir)


def stop(server: Server) -> None:
    """Stop the server (fast shutdown) and delete its directory."""
    if (server.root / "data" / "postmaster.pid").exists():
        _as_server_user([str(server.bindir / "pg_ctl"), "-D", str(server.root / "data"), "-m", "fast", "-w",
                         "-t", "60", "stop"], timeout=90)
    shutil.rmtree(server.root, ignore_errors=True)
