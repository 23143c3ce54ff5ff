"""The web page's router (autotune/service/pages.py): the shell on its three paths, the static files, nothing
served from outside the web directory and no URL of another host in what the page loads; and every HTML
page the whole app serves (the shell, the study report; FastAPI's /docs and /redoc, which load from a CDN,
are off) names no other host outside the plotly.js bundle the report inlines."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="fastapi is missing: pip install -e '.[dev]'")
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from plotly.offline import get_plotlyjs

from autotune.cli import main
from autotune.export import EXPORTERS
from autotune.service import api, pages
from autotune.service.app import create_app
from autotune.service.auth import tokens_from_env
from autotune.service.settings import make_settings

QUICKSTART = Path(__file__).resolve().parents[2] / "search_spaces" / "examples" / "quickstart.yaml"
HTML_PATHS = {"/", "/submit", "/studies/quickstart", "/api/v1/studies/quickstart/report"}
"""Every path the app answers with HTML (its GET routes, the study ``quickstart`` in the path)."""

URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}""")
"""An absolute or protocol-relative URL naming a host (``http://x.org``, ``//cdn.x.com``)."""


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.include_router(pages.router)
    return TestClient(app)


@pytest.mark.parametrize("path", ["/", "/submit", "/studies/quickstart", "/studies/a.b-c_1"])
def test_shell_on_each_view(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js" defer></script>' in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "{{" not in r.text


def test_shell_lists_the_exporters(client: TestClient) -> None:
    assert f'data-frameworks="{" ".join(EXPORTERS)}"' in client.get("/").text
    assert list(EXPORTERS) == ["megatron", "deepspeed", "torchtitan"]


@pytest.mark.parametrize(("name", "media"), [("app.js", "text/javascript"), ("style.css", "text/css")])
def test_static_files(client: TestClient, name: str, media: str) -> None:
    r = client.get(f"/static/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(media)
    assert r.content == (pages.WEB_DIR / name).read_bytes()


@pytest.mark.parametrize("name", ["index.html", "missing.js", "..%2Fpages.py", "..%2F..%2F__init__.py",
                                  "%2Fetc%2Fpasswd"])
def test_no_other_file_is_served(client: TestClient, name: str) -> None:
    assert client.get(f"/static/{name}").status_code == 404


def test_url_pattern_finds_hosts() -> None:
    found = URL.findall('<script src="https://cdn.example.com/x.js"></script> a //unpkg.com/htmx b http://10.0.0.1')
    assert found == ["https://cdn.example.com", "//unpkg.com"]


def test_nothing_from_another_host(client: TestClient) -> None:
    """The served HTML, JS and CSS name no other host: every fetch, script and style is this server's."""
    served = [client.get(p).text for p in ("/", "/submit", "/studies/x")]
    served += [client.get(f"/static/{p.name}").text for p in sorted(pages.WEB_DIR.iterdir()) if p.name != "index.html"]
    assert len(served) == 5
    for text in served:
        assert URL.findall(text) == []
        assert "http://" not in text and "https://" not in text


@pytest.fixture(scope="module")
def app_client(tmp_path_factory) -> TestClient:
    """The whole app over a storage holding the quickstart study (scored by the analytic stage, in process)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('pages') / 'svc.db'}"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.suppress(SystemExit):
        main(["submit", str(QUICKSTART), "--storage", url, "--quiet"])
    settings = make_settings(storage=url, tokens=tokens_from_env("tok"), public_read=True)
    with TestClient(create_app(settings)) as client:
        yield client


def _routes(app: FastAPI) -> list:
    """Every route of the app: its own (the schema) and those of the routers it includes (the API, the pages)."""
    routers = [r.original_router for r in app.routes if hasattr(r, "original_router")]
    assert [id(r) for r in routers] == [id(api.router), id(pages.router)]
    return [r for r in app.routes if not hasattr(r, "original_router")] + [r for x in routers for r in x.routes]


def _get_paths(app: FastAPI) -> list[str]:
    """The GET paths of every route, parameters filled: the quickstart study, each exporter and static file."""
    fill = {"name": ["quickstart"], "framework": list(EXPORTERS), "filename": [p.name for p in pages.WEB_DIR.iterdir()]}
    out = []
    for route in _routes(app):
        if "GET" not in (route.methods or ()):
            continue
        paths = [route.path]
        for key, values in fill.items():
            if f"{{{key}}}" in route.path:
                paths = [p.replace(f"{{{key}}}", v) for p in paths for v in values]
        out += paths
    return out


def test_every_html_page_of_the_app_names_no_other_host(app_client: TestClient) -> None:
    app = app_client.app
    assert [r.path for r in _routes(app) if not isinstance(r, APIRoute)] == ["/openapi.json"]  # no /docs, /redoc
    assert app_client.get("/docs").status_code == 404 and app_client.get("/redoc").status_code == 404
    served = {}
    for path in _get_paths(app):
        r = app_client.get(path)
        if r.headers.get("content-type", "").startswith("text/html") and r.status_code == 200:
            served[path] = r.text
    assert set(served) == HTML_PATHS
    bundle = get_plotlyjs()
    for path, text in served.items():
        if path.endswith("/report"):  # plotly.js inline in a <script> without src; its code names map tile hosts
            assert text.count(f"<script>{bundle}</script>") == 1
            text = text.replace(bundle, "")
        assert URL.findall(text) == [], path
        assert "http://" not in text and "https://" not in text, path
