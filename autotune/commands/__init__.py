"""CLI commands, one module each; :func:`register` adds them to the Typer app."""

from __future__ import annotations

import typer

from autotune.commands import calibrate, estimate, export, report, serve, study

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Attach every command to ``app``."""
    app.command("estimate")(estimate.estimate_cmd)
    app.command("submit")(study.submit_cmd)
    app.command("resume")(study.resume_cmd)
    app.command("best")(study.best_cmd)
    app.command("studies")(study.studies_cmd)
    app.command("trials")(study.trials_cmd)
    app.command("export")(export.export_cmd)
    app.command("report")(report.report_cmd)
    app.command("calibrate")(calibrate.calibrate_cmd)
    app.add_typer(calibrate.profiles_app, name="profiles")
    app.command("serve")(serve.serve_cmd)
