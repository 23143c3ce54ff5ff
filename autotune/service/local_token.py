"""The token ``autotune serve`` makes when it is given none, so that writes always need a token.

At each start without ``$AUTOTUNE_TOKENS`` or ``--token-file`` the server draws a token of
:data:`TOKEN_BYTES` random bytes (:func:`secrets.token_urlsafe`; Python docs, ``secrets`` module, "How many
bytes should tokens use?": 32 bytes, 256 bits, suffice), keeps only its SHA-256 digest, and writes the token to a
file only its user can read (mode 0600, in a directory of mode 0700; written to a temporary name and
renamed, so a reader never sees half a token). The server prints the file's path, never the token. The
CLI's ``--server`` on a loopback URL and a user pasting it into the web page read it from there.

The file is :data:`TOKEN_FILE_ENV` when set, else ``serve-token`` under ``$XDG_STATE_HOME/autotune``,
``$XDG_STATE_HOME`` defaulting to ``~/.local/state`` and a relative value being ignored (XDG Base Directory
Specification 0.8, "Environment variables").
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from autotune.errors import SpecError
from autotune.service.auth import Tokens, digest

__all__ = ["TOKEN_FILE_ENV", "TOKEN_BYTES", "LOCAL_NAME", "token_path", "make_token", "read_token"]

TOKEN_FILE_ENV = "AUTOTUNE_TOKEN_FILE"
"""Environment variable naming the token file (server and CLI client)."""
TOKEN_BYTES = 32
"""Random bytes in a made token."""
LOCAL_NAME = "local"
"""The made token's name (per-token limits, logs)."""


def token_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the made token is written and read: ``$AUTOTUNE_TOKEN_FILE``, else the XDG state directory's
    ``autotune/serve-token``."""
    env = os.environ if env is None else env
    if env.get(TOKEN_FILE_ENV):
        return Path(env[TOKEN_FILE_ENV]).expanduser()
    state = env.get("XDG_STATE_HOME", "")
    base = Path(state) if state and Path(state).is_absolute() else Path.home() / ".local" / "state"
    return base / "autotune" / "serve-token"


def make_token(path: Path) -> Tokens:
    """Draw a token, write it to ``path`` (mode 0600) and return its digest as the one accepted token."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(token + "\n")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise SpecError(f"local-token-file: cannot write {path}: {e.strerror or e}") from e
    return Tokens(((LOCAL_NAME, digest(token)),))


def read_token(path: Path) -> str | None:
    """The token in ``path``, or None when there is no such file (or it cannot be read)."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None
