"""The typed failure of a layout that this torch build or backend cannot run."""

from __future__ import annotations

from autotune.errors import AutotuneError

__all__ = ["UnsupportedLayout"]


class UnsupportedLayout(AutotuneError):
    """The layout is valid but cannot run here (backend, device or model feature); the evaluator
    reports it as status ``unsupported`` with this message as the reason."""
