"""The FastAPI application of ``autotune serve``: the API v1 router, its error format, and the study runner's
life cycle (started with the app: runs left active are resumed; stopped with it: drivers ended, runs kept
active for the next start). One :class:`Storage` serves every request.

The generated OpenAPI schema is at ``/openapi.json``; FastAPI's ``/docs`` and ``/redoc`` pages are off,
since they load their JavaScript and CSS from cdn.jsdelivr.net (FastAPI 0.165.0 ``fastapi/openapi/docs.py``,
``get_swagger_ui_html`` and ``get_redoc_html`` defaults) and the service fetches nothing from the internet."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from autotune import __version__
from autotune.errors import AutotuneError
from autotune.service import api, pages
from autotune.service.api import ApiError, error_body, from_autotune
from autotune.service.evaluations import Pages
from autotune.service.row_cache import RowCountCache
from autotune.service.runner import Runner
from autotune.service.runs import Runs
from autotune.service.settings import Settings
from autotune.service.state import States
from autotune.store.storage import Storage

__all__ = ["create_app"]

log = logging.getLogger("uvicorn.error")
"""uvicorn's own logger: its lines go where the server's go."""
BEST_REPORTS_KEPT = 256
"""Best reports kept (per study and ``top``; a few kB each)."""
REPORTS_KEPT = 8
"""HTML reports kept (each carries plotly.js inline: about 6 MB)."""


def _api_error(_: Request, e: ApiError) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.field), status_code=e.status, headers=e.headers)


def _autotune_error(request: Request, e: AutotuneError) -> JSONResponse:
    return _api_error(request, from_autotune(e))


def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
    first = e.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body", "header")]
    field = ".".join(loc) or None
    return JSONResponse(error_body(f"{field or 'request'}: {first.get('msg', 'invalid')}", field), status_code=422)


def _http_error(_: Request, e: HTTPException) -> JSONResponse:
    return JSONResponse(error_body(str(e.detail)), status_code=e.status_code, headers=e.headers)


def create_app(settings: Settings) -> FastAPI:
    """The service app over ``settings`` (storage opened, tables created, runner started at startup)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        storage = Storage(settings.storage)
        app.state.settings, app.state.storage = settings, storage
        app.state.runs = Runs(storage)
        app.state.states, app.state.pages = States(storage), Pages(storage)
        app.state.best_reports = RowCountCache(storage, BEST_REPORTS_KEPT)
        app.state.reports = RowCountCache(storage, REPORTS_KEPT)
        app.state.runner = Runner(settings, app.state.runs)
        resumed = app.state.runner.start()
        log.info("autotune %s serving %s; resumed %d studies%s", __version__, settings.display_storage,
                 len(resumed), f" ({', '.join(resumed)})" if resumed else "")
        try:
            yield
        finally:
            app.state.runner.stop()
            storage.close()

    app = FastAPI(title="autotune", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Submit tuning studies, watch them run and take the best parallel layout.")
    app.state.settings = settings
    app.include_router(api.router)
    app.include_router(pages.router)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(AutotuneError, _autotune_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    return app
