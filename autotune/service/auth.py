"""Bearer tokens: accepted tokens are held as SHA-256 digests only and compared in constant time.

Tokens come from ``$AUTOTUNE_TOKENS`` (comma-separated plain tokens, hashed when read) or a token file
(one SHA-256 hex digest per line, optionally ``name:digest``; blank lines and ``#`` comments skipped), so
a token file holds no secret. A presented token is hashed and its digest compared with every accepted
digest by :func:`hmac.compare_digest` (Python docs, ``hmac`` module: "designed to prevent timing
analysis"), without stopping at the first match, so the time taken does not depend on which digest
matched. Only a token's *name* is ever stored or shown (per-token limits, logs).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from pathlib import Path

from autotune.errors import SpecError

__all__ = ["Tokens", "digest", "parse_token_file", "tokens_from_env", "bearer"]

_HEX = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def digest(token: str) -> str:
    """SHA-256 hex digest of a token (what a token file stores: ``printf %s TOKEN | sha256sum``)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Tokens:
    """Accepted token digests, each with a name."""

    named: tuple[tuple[str, str], ...] = field(default=())
    """(name, SHA-256 hex digest) pairs."""

    def __bool__(self) -> bool:
        return bool(self.named)

    def __repr__(self) -> str:  # never the digests
        return f"Tokens({len(self.named)} tokens)"

    def match(self, token: str) -> str | None:
        """The name of the accepted token equal to ``token``, or None; every digest is compared."""
        presented = digest(token).encode()
        found = None
        for name, accepted in self.named:
            if hmac.compare_digest(presented, accepted.encode()) and found is None:
                found = name
        return found

    def __add__(self, other: Tokens) -> Tokens:
        names = [n for n, _ in self.named + other.named]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise SpecError(f"token-file: token name {dup!r} is given twice")
        return Tokens(self.named + other.named)


def tokens_from_env(value: str | None) -> Tokens:
    """``$AUTOTUNE_TOKENS``: comma-separated plain tokens, named ``env-1``, ``env-2``, ... in order."""
    plain = [t.strip() for t in (value or "").split(",") if t.strip()]
    return Tokens(tuple((f"env-{i}", digest(t)) for i, t in enumerate(plain, 1)))


def parse_token_file(path: Path) -> Tokens:
    """A token file: ``digest`` or ``name:digest`` per line (64 lowercase hex digits); lines without a name
    are named ``file-<line number>``. A bad line is a one-line :class:`SpecError` naming the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"token-file: cannot read {path}: {getattr(e, 'strerror', None) or e}") from e
    out: list[tuple[str, str]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.rpartition(":")
        name = name.strip() if sep else f"file-{n}"
        value = value.strip().lower()
        if not _HEX.match(value):
            raise SpecError(f"token-file: line {n} of {path} is not a SHA-256 hex digest (64 hex digits, "
                            "optionally prefixed by 'name:'); store digests, never tokens")
        if not _NAME.match(name):
            raise SpecError(f"token-file: line {n} of {path}: name {name!r} must be letters, digits and ._- "
                            "(at most 64)")
        out.append((name, value))
    if not out:
        raise SpecError(f"token-file: {path} holds no token digests")
    return Tokens(()) + Tokens(tuple(out))


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750 section 2.1), or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
