"""``autotune serve`` given no tokens, on a real uvicorn on 127.0.0.1: it makes a token, writes it to a 0600
file, prints the file's path and never the token; without the token every read and write is a 401; the
CLI's ``--server`` on the loopback URL finds the token in that file."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest

from tests.integration import servicekit as sk

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local-token")
    srv = sk.start(tmp, f"sqlite:///{tmp / 'svc.db'}")
    yield srv
    sk.kill(srv)


def test_made_token_file_and_log(server) -> None:
    path = Path(server.env["AUTOTUNE_TOKEN_FILE"])
    assert server.token and stat.S_IMODE(path.stat().st_mode) == 0o600
    log = server.log_text()
    assert f"made one for this start, in {path} (mode 0600)" in log and server.token not in log


def test_without_the_token_nothing_is_read_or_written(server) -> None:
    spec = (Path(__file__).resolve().parents[2] / "search_spaces/examples/quickstart.yaml").read_text()
    r = httpx.post(f"{server.api}/studies", content=spec, headers={"Content-Type": "application/yaml"}, timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{server.api}/studies", timeout=30).status_code == 401
    ok = httpx.get(f"{server.api}/studies", headers=server.headers, timeout=30)
    assert ok.status_code == 200 and ok.json() == {"studies": []} and server.token not in ok.text
    assert server.token not in server.log_text()


def test_cli_client_reads_the_token_file_on_loopback(server, cli, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("AUTOTUNE_TOKEN", raising=False)
    monkeypatch.setenv("AUTOTUNE_TOKEN_FILE", server.env["AUTOTUNE_TOKEN_FILE"])
    assert cli(["studies", "--server", server.url, "--json"]) == (0, "[]\n", "")
    monkeypatch.setenv("AUTOTUNE_TOKEN_FILE", str(tmp_path / "missing"))
    assert cli(["studies", "--server", server.url]) == (2, "", "error: server: unauthorized (set AUTOTUNE_TOKEN)\n")
    monkeypatch.setenv("AUTOTUNE_TOKEN_FILE", server.env["AUTOTUNE_TOKEN_FILE"])
    monkeypatch.setenv("AUTOTUNE_TOKEN", "wrong")  # the environment's token comes first
    assert cli(["studies", "--server", server.url])[0] == 2
