"""The web page: one HTML shell for ``/``, ``/submit`` and ``/studies/{name}``, and its files under ``/static/``.

The page is the files of ``autotune/service/web/`` (no build step): ``index.html`` is the shell,
``app.js`` renders the view the path names (studies list, submit form, study) from the JSON API
(``/api/v1``) and ``style.css`` styles it. Nothing is fetched from another host at run time: the
Content-Security-Policy below limits every fetch, frame, image and script to this server (plotly.js
comes inline in the report, which the study view shows in a sandboxed ``srcdoc`` frame; a
``srcdoc`` frame inherits this policy, so the inline scripts and ``data:``/``blob:`` URLs the report's
plotly figures use are allowed). The shell carries the export formats
(:data:`autotune.export.EXPORTERS`) in ``data-frameworks``, so the page lists exactly what the API
exports. Static files are served from a fixed list (the directory's files), never from a path the
request builds.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

from autotune import __version__
from autotune.export import EXPORTERS

__all__ = ["router", "WEB_DIR", "STATIC_TYPES", "CSP"]

WEB_DIR = Path(__file__).with_name("web")
"""Where the page's files live (package data, see pyproject.toml)."""
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".html": "text/html; charset=utf-8"}
"""Media type of each served file kind; a file of another kind is not served."""
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; frame-src 'self'; "
       "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'")
"""Content-Security-Policy of the pages: every source is this server ('unsafe-inline'/'unsafe-eval' and
``data:``/``blob:`` are for the report's inline plotly.js, which inherits the policy in its frame)."""
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

router = APIRouter(include_in_schema=False)


@cache
def _shell() -> str:
    text = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    return (text.replace("{{frameworks}}", html.escape(" ".join(EXPORTERS)))
            .replace("{{version}}", html.escape(__version__)))


@cache
def _static() -> dict[str, tuple[bytes, str]]:
    return {p.name: (p.read_bytes(), STATIC_TYPES[p.suffix]) for p in sorted(WEB_DIR.iterdir())
            if p.is_file() and p.suffix in STATIC_TYPES and p.name != "index.html"}


def _page() -> HTMLResponse:
    return HTMLResponse(_shell(), headers=_HEADERS)


@router.get("/", response_class=HTMLResponse)
def studies_page() -> HTMLResponse:
    """The studies list with live progress."""
    return _page()


@router.get("/submit", response_class=HTMLResponse)
def submit_page() -> HTMLResponse:
    """The submit form."""
    return _page()


@router.get("/studies/{name}", response_class=HTMLResponse)
def study_page(name: str) -> HTMLResponse:
    """One study: progress, best layout, breakdowns, runners-up, exports and the report (``app.js`` reads the
    name from the path)."""
    return _page()


@router.get("/static/{filename}")
def static_file(filename: str) -> Response:
    """One of the page's files (``app.js``, ``style.css``); 404 for any other name."""
    found = _static().get(filename)
    if found is None:
        raise HTTPException(404, detail=f"static: no file {filename!r}")
    body, media_type = found
    return Response(body, media_type=media_type, headers=_HEADERS)
