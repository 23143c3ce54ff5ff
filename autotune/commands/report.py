"""``autotune report``: write a study's self-contained HTML report."""

from __future__ import annotations

from pathlib import Path

import typer

from autotune.commands.study import STORAGE_HELP
from autotune.errors import SpecError
from autotune.results.report import default_filename, render_report
from autotune.store.storage import Storage

__all__ = ["report_cmd"]


def report_cmd(
    study: str = typer.Argument(..., help="Study name."),
    output: Path | None = typer.Option(None, "--output", "-o",
                                       help="HTML file to write [default: <study>-report.html, name sanitised]."),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
) -> None:
    """Write one self-contained HTML page (plotly.js inlined, opens offline): best layout, Pareto fronts,
    memory and step-time breakdowns, optimisation history, parameter importances, rejection reasons
    and a sortable table of every evaluation."""
    store = Storage(storage, create=False)
    page = render_report(store, study)
    path = output or Path(default_filename(study))
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as e:
        raise SpecError(f"output: cannot write {path}: {e.strerror}") from e
    typer.echo(f"wrote {path} ({len(page) / 1e6:.1f} MB)")
