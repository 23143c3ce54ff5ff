"""The web page's router (autotune/service/pages.py): the shell on its three paths, the static files, nothing
served from outside the web directory and no URL of another host in what the page loads."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("fastapi", reason="fastapi is missing: pip install -e '.[dev]'")
from fastapi import FastAPI
from fastapi.testclient import TestClient

from autotune.export import EXPORTERS
from autotune.service import pages

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
