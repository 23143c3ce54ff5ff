"""kill -9 the server mid-study, start it again: it resumes the study, which ends with its exact budget and
nothing lost or duplicated (the invariants of :func:`tests.integration.crashkit.check`); and the storage
password of a PostgreSQL URL appears in no response and no log line."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration import crashkit as ck
from tests.integration import servicekit as sk
from tests.integration.postgres import PASSWORD

pytestmark = pytest.mark.slow

N_TRIALS = 200
YAML = {"Content-Type": "application/yaml"}


def _rows(srv: sk.Server) -> int:
    return httpx.get(f"{srv.api}/studies/crash", headers=srv.headers, timeout=30).json()["done"]


def test_kill9_server_mid_study_restart_finishes_exact_budget(tmp_path, ray_local) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    ray = ["--ray-address", ray_local.get_runtime_context().gcs_address]
    srv = sk.start(tmp_path, url, *ray)
    try:
        spec = ck.SPEC.format(name="crash", n_trials=N_TRIALS)
        assert httpx.post(f"{srv.api}/studies", content=spec, headers=YAML | srv.headers, timeout=60).status_code == 201
        deadline = time.monotonic() + 120
        while _rows(srv) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _rows(srv) < N_TRIALS, "the study ended before the kill"
        driver = psutil.Process(_driver_pid(url))
    finally:
        sk.kill(srv, hard=True)
    _, alive = psutil.wait_procs([driver], timeout=20)  # the driver ends itself once its server is gone
    chain = ck.Chain(orphans=len(alive))
    for p in alive:
        p.kill()
    chain.snapshots.append(ck.snapshot(url, "crash"))
    assert len(chain.snapshots[0].rows) < N_TRIALS

    srv = sk.start(tmp_path, url, *ray)
    try:
        final = sk.wait_state(srv.api, "crash", ("completed", "failed", "cancelled"), srv.headers, timeout_s=300)
    finally:
        sk.kill(srv)
    assert final["state"] == "completed", final
    assert final["done"] == N_TRIALS and final["budget"] == N_TRIALS
    chain.final_rc = 0
    assert ck.check(url, chain, n_trials=N_TRIALS) == []
    assert "resumed 1 studies (crash)" in srv.log_text()


def _driver_pid(url: str) -> int:
    from autotune.service.runs import Runs
    from autotune.store.storage import Storage

    store = Storage(url, create=False)
    try:
        pid = Runs(store).get("crash").pid
    finally:
        store.close()
    assert pid is not None
    return pid


def test_storage_password_in_no_response_or_log(tmp_path, postgres) -> None:
    srv = sk.start(tmp_path, postgres.url(database="autotune"), "--log-level", "debug")
    try:
        spec = (Path(__file__).resolve().parents[2] / "search_spaces/examples/quickstart.yaml").read_text()
        auth = srv.headers
        bodies = [httpx.get(f"{srv.api}/health").text,
                  httpx.post(f"{srv.api}/studies", content=spec, headers=YAML | auth, timeout=60).text]
        final = sk.wait_state(srv.api, "quickstart", ("completed", "failed"), auth, timeout_s=120)
        assert final["state"] == "completed", final
        bodies += [httpx.get(f"{srv.api}/studies", headers=auth).text,
                   httpx.get(f"{srv.api}/studies", params={"records": "true"}, headers=auth).text,
                   httpx.get(f"{srv.api}/studies/quickstart", headers=auth).text,
                   httpx.get(f"{srv.api}/studies/missing", headers=auth).text,
                   httpx.get(f"{srv.api}/studies/quickstart/best", headers=auth).text,
                   httpx.post(f"{srv.api}/studies", content=spec, headers=YAML | auth, timeout=60).text]
    finally:
        sk.kill(srv)
    assert all(PASSWORD not in b and srv.token not in b for b in bodies)
    assert PASSWORD not in srv.log_text() and "***" in srv.log_text() and srv.token not in srv.log_text()
