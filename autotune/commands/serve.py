"""``autotune serve``: the HTTP API over a study storage and a Ray cluster (:mod:`autotune.service`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from autotune.commands.study import STORAGE_HELP
from autotune.service.auth import Tokens, parse_token_file, tokens_from_env
from autotune.service.local_token import TOKEN_FILE_ENV, make_token, token_path
from autotune.service.settings import Settings, make_settings
from autotune.store.storage import storage_url

__all__ = ["serve_cmd"]

_DEFAULTS = Settings.model_fields


def serve_cmd(
    host: str = typer.Option("127.0.0.1", help="Interface to bind; a non-loopback one needs tokens."),
    port: int = typer.Option(8000, help="TCP port."),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    ray_address: str | None = typer.Option(None, help="Ray cluster the study drivers join [default: each "
                                                      "starts a local Ray]."),
    max_concurrent_studies: int = typer.Option(_DEFAULTS["max_concurrent_studies"].default,
                                               help="Studies running at once on this server."),
    max_studies_per_token: int = typer.Option(_DEFAULTS["max_studies_per_token"].default,
                                              help="Studies running at once per token."),
    max_spec_bytes: int = typer.Option(_DEFAULTS["max_spec_bytes"].default, help="Largest request body, bytes."),
    max_trials: int = typer.Option(_DEFAULTS["max_trials"].default, help="Largest search.n_trials accepted."),
    token_file: Path | None = typer.Option(None, help="Accepted tokens: one SHA-256 hex digest per line "
                                                      "(`name:digest` names it); adds to $AUTOTUNE_TOKENS."),
    local_token_file: Path | None = typer.Option(None, envvar=TOKEN_FILE_ENV,
                                                 help="Where the token made when none is given is written "
                                                      "(mode 0600) [default: $XDG_STATE_HOME/autotune/"
                                                      "serve-token, ~/.local/state/autotune/serve-token]."),
    public_read: bool = typer.Option(False, "--public-read", help="Reads (GET) need no token."),
    log_level: str = typer.Option("info", help="uvicorn log level (critical | error | warning | info | debug)."),
) -> None:
    """Serve the JSON API (/api/v1, OpenAPI schema at /openapi.json) and the web page (/) for submitting
    studies, following their progress and reading their results, over the same storage and Ray cluster as
    the CLI.

    Tokens: $AUTOTUNE_TOKENS (comma-separated) and --token-file (digests); every POST needs one, every GET too
    unless --public-read. Given none (loopback only), the server makes one at each start and writes it to
    --local-token-file (mode 0600; it prints the path, never the token), where `--server` on a loopback URL
    finds it.
    """
    import uvicorn

    from autotune.service.app import create_app

    tokens = tokens_from_env(os.environ.get("AUTOTUNE_TOKENS"))
    tokens = tokens + (parse_token_file(token_file) if token_file else Tokens())
    settings = make_settings(host=host, port=port, storage=storage_url(storage), ray_address=ray_address,
                             max_concurrent_studies=max_concurrent_studies,
                             max_studies_per_token=max_studies_per_token, max_spec_bytes=max_spec_bytes,
                             max_trials=max_trials, tokens=tokens, public_read=public_read)
    made = None
    if not tokens:  # loopback (the settings refuse another host without tokens): make this start's token
        made = local_token_file or token_path()
        tokens = make_token(made)
        settings = settings.model_copy(update={"tokens": tokens})
    typer.echo(f"autotune serve: storage {settings.display_storage}, Ray {ray_address or 'local'}, "
               f"{len(tokens.named)} tokens{', public reads' if public_read else ''}", err=True)
    if made is not None:
        typer.echo(f"autotune serve: no tokens given: made one for this start, in {made} (mode 0600); send it "
                   f"as 'Authorization: Bearer <its contents>' (the CLI's --server reads it on loopback)", err=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level)
