"""CLI commands, one module each; :func:`register` adds them to the Typer app."""

from __future__ import annotations

import typer

from autotune.commands import estimate

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Attach every command to ``app``."""
    app.command("estimate")(estimate.estimate_cmd)
