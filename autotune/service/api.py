"""The JSON API v1 (an :class:`fastapi.APIRouter` under ``/api/v1``): health, submit, studies, progress
stream, best, evaluations, export, report, estimate, cancel, examples.

Every error is ``{"detail": {"field": <dotted path or null>, "message": <one line>}}`` (:class:`ApiError`);
a validation error is 422 with the same one-line message ``autotune submit`` prints. Handlers that touch
the database are plain functions, which FastAPI runs in its thread pool.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from autotune import __version__
from autotune.commands.export import export_texts
from autotune.config import DERIVE_KEYS, derive, layout_kwargs
from autotune.costmodel import estimate
from autotune.costmodel.estimate import COST_MODEL_VERSION
from autotune.errors import AutotuneError, InfeasibleConfig, StorageError
from autotune.export import EXPORTERS
from autotune.results.best import best_report
from autotune.results.report import render_report
from autotune.results.trials import check_filters
from autotune.search.objectives import objective_for
from autotune.search.space import space_names
from autotune.service.auth import bearer
from autotune.service.runs import ACTIVE
from autotune.service.specs import parse_body, refuse_paths
from autotune.spec import parse_spec
from autotune.study.resolve import resolve
from autotune.study.submission import plan_submission, preflight

__all__ = ["router", "ApiError", "error_body"]

router = APIRouter(prefix="/api/v1")
KEEPALIVE_S = 15.0
"""A progress stream sends a comment line at least this often (proxies close idle streams)."""
_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]-]*): ")
_submit_lock = threading.Lock()


class ApiError(Exception):
    """An HTTP error with a one-line message; ``field`` is the dotted path it is about (or None)."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers


def error_body(message: str, field: str | None = None) -> dict[str, Any]:
    """The error object; ``field`` defaults to the message's leading ``path: `` when it has one."""
    if field is None:
        m = _FIELD.match(message)
        field = m.group(1) if m else None
    return {"detail": {"field": field, "message": " ".join(message.split())}}


def from_autotune(e: AutotuneError) -> ApiError:
    """The HTTP error of an autotune error: a missing study is 404, an unreachable storage 503, else 422."""
    text = str(e)
    if isinstance(e, StorageError):
        return ApiError(404 if "no study named" in text else 503, text)
    return ApiError(422, text)


# auth -------------------------------------------------------------------------------------------------------
def _caller(request: Request, required: bool) -> str | None:
    token = bearer(request.headers.get("authorization"))
    name = request.app.state.settings.tokens.match(token) if token else None
    if name is None and required:
        raise ApiError(401, "unauthorized: a valid bearer token is required (Authorization: Bearer <token>)",
                       headers={"WWW-Authenticate": "Bearer"})
    return name


def reader(request: Request) -> str | None:
    """Dependency of every GET: a valid token unless the server runs with ``--public-read``."""
    return _caller(request, required=not request.app.state.settings.public_read)


def writer(request: Request) -> str:
    """Dependency of every POST: a valid token, always (``autotune serve`` makes one when none is given)."""
    name = _caller(request, required=True)
    assert name is not None
    return name


def _state(app_state, name: str) -> dict[str, Any]:
    state = app_state.states.one(name, app_state.runs.get(name))
    if state is None:
        raise ApiError(404, f"study: no study named {name!r} (see GET /api/v1/studies)")
    return state


def _stored(app_state, name: str) -> bool:
    """Whether the storage holds study ``name``: False while a study the service accepted waits for its
    driver to create it (or its driver failed first); 404 for a study neither holds."""
    if app_state.storage.study_spec(name) is not None:
        return True
    if app_state.runs.get(name) is None:
        raise ApiError(404, f"study: no study named {name!r} in the storage (see GET /api/v1/studies)")
    return False


def _no_layout_yet(app_state, name: str) -> ApiError:
    """The 404 of a best layout asked of a study :func:`_stored` finds the service knows and storage not yet."""
    return ApiError(404, f"study: no feasible layout of {name!r} yet: it is {app_state.runs.get(name).state} "
                         "with no evaluations stored")


# health, examples -----------------------------------------------------------------------------------------
@router.get("/health")
def health() -> dict[str, str]:
    """Liveness, the autotune version and the cost-model version (no auth)."""
    return {"status": "ok", "version": __version__, "cost_model": COST_MODEL_VERSION}


def _examples() -> dict[str, str]:
    root = resources.files("search_spaces").joinpath("examples")
    return {p.name[:-5]: p.read_text(encoding="utf-8") for p in sorted(root.iterdir(), key=lambda p: p.name)
            if p.name.endswith(".yaml")}


def _description(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


@router.get("/examples")
def examples(_: str | None = Depends(reader)) -> dict[str, Any]:
    """The shipped example specs (search_spaces/examples/*.yaml, the quickstart among them)."""
    return {"examples": [{"name": n, "description": _description(t)} for n, t in _examples().items()]}


@router.get("/examples/{name}")
def example(name: str, _: str | None = Depends(reader)) -> Response:
    """One shipped example spec as YAML text."""
    found = _examples()
    if name not in found:
        raise ApiError(404, f"example: {name!r} is not one of {', '.join(found)}")
    return PlainTextResponse(found[name], media_type="text/yaml")


# submit, cancel -------------------------------------------------------------------------------------------
async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"spec: the request body is {int(declared):,} bytes, more than the {limit:,} allowed")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"spec: the request body is more than the {limit:,} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)


def _submit(app_state, data: dict[str, Any], resume: bool, token: str) -> dict[str, Any]:
    settings = app_state.settings
    refuse_paths(data, space_names())
    plan = plan_submission(data, settings.storage)
    preflight(plan)
    spec = plan.spec
    if not plan.enumerates and spec.search.n_trials > settings.max_trials:
        raise ApiError(422, f"search.n_trials: {spec.search.n_trials:,} is more than this server's trial budget "
                            f"cap of {settings.max_trials:,}")
    name = spec.name
    with _submit_lock:
        run = app_state.runs.get(name)
        if run is not None and run.state in ACTIVE:
            raise ApiError(409, f"name: study {name!r} is already {run.state} (cancel it first, or use another "
                                "name)")
        if not resume and (app_state.storage.study_spec(name) is not None or run is not None):
            raise ApiError(409, f"name: study {name!r} already exists (resume it with ?resume=true, or use "
                                "another name)")
        active = app_state.runs.active()
        if len(active) >= settings.max_concurrent_studies:
            raise ApiError(429, f"server: {len(active)} studies are running, the most this server runs at once "
                                f"(max_concurrent_studies={settings.max_concurrent_studies}); retry later")
        mine = [r for r in active if r.token == token]
        if len(mine) >= settings.max_studies_per_token:
            raise ApiError(429, f"token: {len(mine)} of this token's studies are running, the most one token "
                                f"runs at once (max_studies_per_token={settings.max_studies_per_token}); "
                                "retry later")
        if not app_state.runs.queue(name, spec.model_dump(mode="json"), token):
            raise ApiError(409, f"name: study {name!r} is already running")
    app_state.runner.launch(name)
    return _state(app_state, name)


@router.post("/studies", status_code=201)
async def submit(request: Request, resume: bool = False, token: str = Depends(writer)) -> JSONResponse:
    """Submit a study spec (YAML or JSON body); ``?resume=true`` continues a stored study of that name.

    201 with the study's state; 422 naming the field of any validation error (nothing written); 409 when the
    name exists (and resume is not set) or runs; 413 when the body is over the limit; 429 when the server or
    the token already runs its most studies."""
    app_state = request.app.state
    body = await _body(request, app_state.settings.max_spec_bytes)
    data = parse_body(body, request.headers.get("content-type"))
    state = await run_in_threadpool(_submit, app_state, data, resume, token)
    return JSONResponse(state, status_code=201)


@router.post("/studies/{name}/cancel", status_code=202)
def cancel(name: str, request: Request, _: str = Depends(writer)) -> dict[str, Any]:
    """Cancel a queued or running study: its driver is stopped, no further trials start (202 with the state)."""
    app_state = request.app.state
    state = _state(app_state, name)
    if not app_state.runner.cancel(name):
        raise ApiError(409, f"study: {name!r} is {state['state']}, not queued or running")
    return _state(app_state, name)


# reads ------------------------------------------------------------------------------------------------------
@router.get("/studies")
def studies(request: Request, records: bool = False, _: str | None = Depends(reader)) -> dict[str, Any]:
    """Every study in the storage and every study the service runs, with its state; ``?records=true`` adds
    each one's ``record``, its ``autotune studies --json`` row (spec included; null until stored)."""
    app_state = request.app.state
    return {"studies": app_state.states.all(app_state.runs.all(), records=records)}


@router.get("/studies/{name}")
def study(name: str, request: Request, _: str | None = Depends(reader)) -> dict[str, Any]:
    """One study's state and progress."""
    return _state(request.app.state, name)


async def _events(request: Request, name: str):
    app_state = request.app.state
    settings = app_state.settings
    deadline = time.monotonic() + settings.stream_max_s
    last, sent_at = None, time.monotonic()
    while time.monotonic() < deadline and not await request.is_disconnected():
        try:
            state = await run_in_threadpool(_state, app_state, name)
        except ApiError as e:
            yield f"event: error\ndata: {json.dumps(error_body(e.message)['detail'])}\n\n"
            return
        text = json.dumps(state)
        if text != last:
            last, sent_at = text, time.monotonic()
            yield f"event: progress\ndata: {text}\n\n"
        if state["state"] not in ACTIVE:
            yield f"event: end\ndata: {text}\n\n"
            return
        if time.monotonic() - sent_at >= KEEPALIVE_S:
            sent_at = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(settings.poll_s)


@router.get("/studies/{name}/events")
def events(name: str, request: Request, _: str | None = Depends(reader)) -> StreamingResponse:
    """Server-sent events: ``progress`` with the state whenever it changes, then ``end`` once the study is no
    longer queued or running (the stream closes; at most ``stream_max_s`` open)."""
    _state(request.app.state, name)
    return StreamingResponse(_events(request, name), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _objective(app_state, name: str):
    return objective_for(parse_spec(app_state.storage.require_spec(name)))


@router.get("/studies/{name}/best")
def best(name: str, request: Request, top: int = Query(5, ge=0), require_fit: bool = True,
         _: str | None = Depends(reader)) -> dict[str, Any]:
    """The ``autotune best NAME --json`` object; 404 when no layout of the study fits (unless ``require_fit``
    is false: then the object with ``config`` null, as ``best --json`` prints it)."""
    app_state = request.app.state
    if not _stored(app_state, name):
        raise _no_layout_yet(app_state, name)
    try:
        report = app_state.best_reports.get(name, top, lambda: best_report(app_state.storage, name,
                                                                           _objective(app_state, name), top=top))
    except StorageError:
        raise
    except AutotuneError as e:
        raise ApiError(404, str(e)) from e
    if report["config"] is None and require_fit:
        raise ApiError(404, f"study: no layout of {name!r} fits ({report['evaluations']:,} evaluated)")
    return report


@router.get("/studies/{name}/evaluations")
def evaluations(name: str, request: Request, status: str | None = None, fidelity: str | None = None,
                sort: str = "trial", offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=1000),
                _: str | None = Depends(reader)) -> dict[str, Any]:
    """A study's evaluations as ``autotune trials --json`` items, filtered by status and fidelity, ordered by
    ``sort`` (trial | tokens_per_s | step_time_s | memory | mfu), one page of ``limit`` from ``offset`` (none
    yet, ``total`` 0, for a study accepted and not yet created by its driver)."""
    app_state = request.app.state
    check_filters(status, sort)
    if not _stored(app_state, name):
        return {"total": 0, "offset": offset, "limit": limit, "items": []}
    _objective(app_state, name)
    return app_state.pages.page(name, status, fidelity, sort, offset, limit)


@router.get("/studies/{name}/export/{framework}")
def export(name: str, framework: str, request: Request, trial: int | None = None, part: str = "config",
           config_path: str = "ds_config.json", _: str | None = Depends(reader)) -> Response:
    """A trial's launch configuration (default: the best layout) as ``autotune export`` prints it: a bash
    launch script (megatron, torchtitan) or the ds_config.json (deepspeed; ``part=launch`` gives its
    Megatron-DeepSpeed launch script, whose ``--deepspeed_config`` names ``config_path``)."""
    if framework not in EXPORTERS:
        raise ApiError(422, f"framework: {framework!r} is not one of {', '.join(EXPORTERS)}")
    if part not in ("config", "launch") or (part == "launch" and framework != "deepspeed"):
        raise ApiError(422, f"part: {part!r} is not one of config{', launch' if framework == 'deepspeed' else ''}")
    app_state = request.app.state
    if not _stored(app_state, name):
        raise _no_layout_yet(app_state, name)
    try:
        text, script = export_texts(app_state.storage, name, framework, trial, config_path)
    except InfeasibleConfig as e:
        raise ApiError(404 if "has no layout that fits" in str(e) else 422, str(e)) from e
    if part == "launch":
        return PlainTextResponse(script or "", media_type="text/x-shellscript")
    return PlainTextResponse(text, media_type="application/json" if framework == "deepspeed" else
                             "text/x-shellscript")


@router.get("/studies/{name}/report", response_class=HTMLResponse)
def report(name: str, request: Request, _: str | None = Depends(reader)) -> HTMLResponse:
    """The study's self-contained HTML report (``autotune report``; plotly.js inlined); 404 until the study
    has evaluations."""
    app_state = request.app.state
    if not _stored(app_state, name) or not app_state.storage.evaluation_count(name):
        run = app_state.runs.get(name)
        raise ApiError(404, f"study: {name!r} has no evaluations yet ({run.state if run else 'stored'}): its "
                            "report comes with the first")
    return HTMLResponse(app_state.reports.get(name, "html", lambda: render_report(app_state.storage, name)))


_ESTIMATE_KEYS = ("model", "cluster", "training", "layout")


@router.post("/estimate")
def estimate_layout(body: dict[str, Any], request: Request, _: str = Depends(writer)) -> dict[str, Any]:
    """One layout's ``autotune estimate --json`` object: body ``{"model", "cluster", "training", "layout"}``,
    the layout as :class:`autotune.config.ParallelConfig` fields (derived ones computed)."""
    extra = [k for k in body if k not in _ESTIMATE_KEYS]
    if extra:
        raise ApiError(422, f"{extra[0]}: unknown field (allowed: {', '.join(_ESTIMATE_KEYS)})")
    layout = body.get("layout") or {}
    if not isinstance(layout, dict):
        raise ApiError(422, f"layout: must be a mapping of {', '.join(DERIVE_KEYS)}")
    bad = [k for k in layout if k not in DERIVE_KEYS]
    if bad:
        raise ApiError(422, f"layout.{bad[0]}: unknown field (allowed: {', '.join(DERIVE_KEYS)})")
    data = {"name": "estimate", **{k: body[k] for k in ("model", "cluster", "training") if k in body}}
    refuse_paths(data, space_names())
    problem = resolve(parse_spec(data), storage=request.app.state.settings.storage)
    if isinstance(problem.training.global_batch, list) or len(parse_spec(data).training.batch_sizes) > 1:
        raise ApiError(422, "training.global_batch: give one global batch size for an estimate")
    try:
        cfg = derive(problem.model, problem.training, problem.gpus, **layout_kwargs(layout))
    except (InfeasibleConfig, TypeError, ValueError) as e:
        raise ApiError(422, f"layout: {' '.join(str(e).split())}", field="layout") from e
    return estimate(problem.model, problem.training, problem.gpu, problem.cluster, cfg)

