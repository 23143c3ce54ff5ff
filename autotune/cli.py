"""The ``autotune`` command line (Typer). Commands live in :mod:`autotune.commands`.

Every expected failure (bad spec, flag, model file, layout or DB URL) is printed as one line on
stderr and exits with code 2 — no traceback.
"""

from __future__ import annotations

import sys

import typer
from typer._click import exceptions as cli_exc

from autotune.commands import register
from autotune.errors import AutotuneError

__all__ = ["app", "main"]

app = typer.Typer(
    name="autotune",
    help="Find the fastest parallel layout for training a large model on a cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """Find the fastest parallel layout for training a large model on a cluster."""


register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; exit 2 with one line on stderr for any user error."""
    try:
        app(args=argv, prog_name="autotune", standalone_mode=False)
    except AutotuneError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except cli_exc.UsageError as e:
        ctx = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
        print(f"error: {e.format_message()}{ctx}".replace("\n", " "), file=sys.stderr)
        sys.exit(2)
    except cli_exc.ClickException as e:
        print(f"error: {e.format_message()}".replace("\n", " "), file=sys.stderr)
        sys.exit(2)
