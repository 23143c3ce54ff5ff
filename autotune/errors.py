"""The one exception hierarchy of autotune.

Every failure a user can cause (a bad spec, an impossible layout, an unreachable database) is an
:class:`AutotuneError`; the CLI turns it into a one-line message and exit code 2.
"""

from __future__ import annotations

__all__ = ["AutotuneError", "SpecError", "InfeasibleConfig", "StorageError", "EvaluationError"]


class AutotuneError(Exception):
    """Base class of every error autotune raises on purpose."""


class SpecError(AutotuneError):
    """A spec, model file, search space or flag is invalid; the message names the field."""


class InfeasibleConfig(AutotuneError):
    """A parallel layout cannot run this model on this cluster; the message carries the numbers."""


class StorageError(AutotuneError):
    """The storage URL is invalid or the database cannot be opened."""


class EvaluationError(AutotuneError):
    """An evaluator failed in a way that is not a typed trial outcome."""
