"""The service's reads over the real app (in process, its lifespan run): the window between a study being
accepted and its driver creating it, evaluation pages in SQL, the best step time kept from new rows only,
the list's fields, writes always needing a token, and no /docs or /redoc.

The stored rows are written by hand (throughput objective: more tokens/s is better), so every expected
order and best below is worked out from the table in :data:`ROWS`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytest.importorskip("fastapi", reason="fastapi is missing: pip install -e '.[dev]'")
from fastapi.testclient import TestClient

from autotune.service.app import create_app
from autotune.service.auth import tokens_from_env
from autotune.service.row_cache import RowCountCache
from autotune.service.settings import make_settings
from autotune.store.storage import EvaluationRecord

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "search_spaces" / "examples" / "quickstart.yaml").read_text()) | {"name": "hand"}
TOKEN = "tok-reads-7c1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _row(trial: int, fidelity: str, status: str, tps: float | None = None, step: float | None = None,
         gib: float | None = None, fits: bool = True) -> EvaluationRecord:
    metrics = {} if tps is None else {"tokens_per_s": tps, "step_time_s": step, "fits": fits,
                                      "memory_gib": None if gib is None else {"total": gib}, "mfu": tps / 1000}
    return EvaluationRecord(study="hand", trial=trial, fidelity=fidelity, layout={"tp": trial}, metrics=metrics,
                            status=status, reason=None if status == "ok" else "hand-made")


ROWS = [
    #     trial fidelity   status        tokens/s step s  GiB   fits
    _row(0, "analytic", "ok", 100.0, 2.0, 40.0),
    _row(1, "analytic", "ok", 300.0, 0.9, 90.0, fits=False),  # fastest, but does not fit: never the best
    _row(2, "analytic", "ok", 200.0, 1.5, 50.0),  # ties trial 4 on tokens/s: the lower trial is the best
    _row(3, "analytic", "infeasible"),
    _row(4, "analytic", "ok", 200.0, 1.4, 30.0),
]


@pytest.fixture
def app(tmp_path):
    settings = make_settings(storage=f"sqlite:///{tmp_path / 'svc.db'}", tokens=tokens_from_env(TOKEN),
                             stream_max_s=1.0, poll_s=0.1)
    with TestClient(create_app(settings)) as client:
        yield client


def _stored(client: TestClient, rows: list[EvaluationRecord]) -> None:
    storage = client.app.state.storage
    if storage.study_spec("hand") is None:
        storage.add_study("hand", SPEC, "test", "test")
    storage.add_evaluations(rows)


def test_a_study_accepted_before_its_driver_created_it(app) -> None:
    """A queued run, no stored study: the state reads queued, evaluations an empty page, best/export/report a
    404 saying no layout or evaluation yet, the stream sends the queued state."""
    app.app.state.runs.queue("pending", SPEC | {"name": "pending"}, "env-1")
    state = app.get("/api/v1/studies/pending", headers=AUTH).json()
    assert state["state"] == "queued" and state["done"] == 0 and state["counts"]["ok"] == 0
    page = app.get("/api/v1/studies/pending/evaluations", params={"offset": 50, "limit": 50}, headers=AUTH)
    assert page.status_code == 200 and page.json() == {"total": 0, "offset": 50, "limit": 50, "items": []}
    for path in ("/best", "/export/megatron", "/report"):
        r = app.get(f"/api/v1/studies/pending{path}", headers=AUTH)
        assert r.status_code == 404 and "yet" in r.json()["detail"]["message"], (path, r.text)
        assert "no study named" not in r.json()["detail"]["message"]
    with app.stream("GET", "/api/v1/studies/pending/events", headers=AUTH) as r:
        first = next(line for line in r.iter_lines() if line.startswith("data:"))
    assert '"state": "queued"' in first
    listed = app.get("/api/v1/studies", headers=AUTH).json()["studies"]
    assert [s["name"] for s in listed] == ["pending"] and listed[0]["state"] == "queued"
    assert app.get("/api/v1/studies/nowhere/evaluations", headers=AUTH).status_code == 404


def test_evaluation_pages_filters_and_orders(app) -> None:
    _stored(app, ROWS + [_row(5, "dryrun", "ok", 50.0, 3.0, 20.0), _row(6, "dryrun", "ok", 60.0, 2.5, None)])

    def trials(**params) -> tuple[int, list[int]]:
        got = app.get("/api/v1/studies/hand/evaluations", params=params, headers=AUTH).json()
        return got["total"], [i["trial"] for i in got["items"]]

    assert trials() == (7, [0, 1, 2, 3, 4, 5, 6])
    assert trials(offset=2, limit=3) == (7, [2, 3, 4])
    assert trials(status="ok") == (6, [0, 1, 2, 4, 5, 6])
    assert trials(fidelity="dryrun") == (2, [5, 6])
    assert trials(status="infeasible", fidelity="analytic") == (1, [3])
    # tokens/s best first: 300 (1), 200 (2, then 4: ties keep trial order), 100 (0), 60 (6), 50 (5), none (3)
    assert trials(sort="tokens_per_s") == (7, [1, 2, 4, 0, 6, 5, 3])
    assert trials(sort="tokens_per_s", offset=1, limit=2) == (7, [2, 4])
    # step time shortest first: 0.9 (1), 1.4 (4), 1.5 (2), 2.0 (0), 2.5 (6), 3.0 (5), none last (3)
    assert trials(sort="step_time_s") == (7, [1, 4, 2, 0, 6, 5, 3])
    # memory smallest first: 20 (5), 30 (4), 40 (0), 50 (2), 90 (1); no memory figures (3, 6) last
    assert trials(sort="memory", status="ok")[1][:5] == [5, 4, 0, 2, 1]
    assert trials(sort="mfu", fidelity="dryrun") == (2, [6, 5])
    _stored(app, [_row(7, "analytic", "ok", 400.0, 0.5, 10.0)])  # a new row: the kept order is redone
    assert trials(sort="tokens_per_s", limit=2) == (8, [7, 1])


def test_best_step_time_from_new_rows(app) -> None:
    _stored(app, ROWS)
    state = lambda: app.get("/api/v1/studies/hand", headers=AUTH).json()  # noqa: E731
    # fitting ok rows: 100 (trial 0), 200 (2, 1.5 s), 200 (4, 1.4 s); the tie goes to trial 2 -> 1.5 s
    assert state()["best_step_time_s"] == 1.5
    _stored(app, [_row(5, "analytic", "ok", 250.0, 1.2, 45.0)])
    assert state()["best_step_time_s"] == 1.2  # 250 tokens/s beats 200
    _stored(app, [_row(6, "dryrun", "ok", 50.0, 3.0, 20.0)])
    assert state()["best_step_time_s"] == 3.0  # the higher fidelity ranks first, however slow
    _stored(app, [_row(7, "dryrun", "ok", 60.0, 2.5, 20.0), _row(8, "dryrun", "ok", 90.0, 2.2, 20.0, fits=False)])
    assert state()["best_step_time_s"] == 2.5
    best = app.get("/api/v1/studies/hand/best", headers=AUTH).json()
    assert best["trial"] == 7 and best["metrics"]["step_time_s"] == 2.5


def test_list_fields_and_records(app) -> None:
    _stored(app, ROWS)
    listed = app.get("/api/v1/studies", headers=AUTH).json()["studies"]
    assert set(listed[0]) == {"name", "state", "evaluator", "budget", "done", "counts", "best_step_time_s",
                              "started_at", "finished_at", "error"}
    # 5 rows: 4 ok, 1 infeasible; a study the service never ran reads completed with its n_trials... of an
    # enumerated (analytic) study: its budget is its row count
    assert listed[0]["counts"]["ok"] == 4 and listed[0]["counts"]["infeasible"] == 1 and listed[0]["done"] == 5
    assert listed[0]["state"] == "completed" and listed[0]["budget"] == 5
    record = app.get("/api/v1/studies", params={"records": "true"}, headers=AUTH).json()["studies"][0]["record"]
    assert record == app.app.state.storage.studies()[0]
    assert list(record) == ["name", "created_at", "evaluations", "ok", "autotune_version", "cost_model_version",
                            "spec"] and record["evaluations"] == 5 and record["ok"] == 4
    one = app.get("/api/v1/studies/hand", headers=AUTH).json()
    assert "record" not in one and one["progress"] is None


def test_no_docs_pages_and_the_schema_stays(app) -> None:
    assert app.get("/docs").status_code == 404 and app.get("/redoc").status_code == 404
    schema = app.get("/openapi.json")
    assert schema.status_code == 200 and "/api/v1/studies/{name}/evaluations" in schema.json()["paths"]


def test_writes_need_a_token_even_without_tokens(tmp_path) -> None:
    """A server built with no tokens accepts no write (``autotune serve`` always makes one)."""
    settings = make_settings(storage=f"sqlite:///{tmp_path / 'open.db'}")
    with TestClient(create_app(settings)) as client:
        r = client.post("/api/v1/studies", content=yaml.safe_dump(SPEC), headers={"Content-Type": "application/yaml"})
        assert r.status_code == 401 and client.get("/api/v1/studies").status_code == 401
        assert client.app.state.runs.all() == {} and client.app.state.storage.studies() == []


def test_best_report_kept_while_the_row_count_stays(app) -> None:
    """A kept value is served while the study's row count is unchanged and computed again once a row is added."""
    _stored(app, ROWS)
    calls = []
    cache = RowCountCache(app.app.state.storage, size=2)
    compute = lambda: calls.append(1) or len(calls)  # noqa: E731
    assert [cache.get("hand", 5, compute) for _ in range(3)] == [1, 1, 1]
    _stored(app, [_row(5, "analytic", "ok", 250.0, 1.2, 45.0)])
    assert cache.get("hand", 5, compute) == 2 and cache.get("hand", 5, compute) == 2
    cache.get("hand", 1, compute), cache.get("hand", 2, compute)  # two more keys: the oldest (5) is dropped
    assert cache.get("hand", 5, compute) == 5
    # through the API: the best report follows a new, better row (280 tokens/s beats 250: trial 6)
    assert app.get("/api/v1/studies/hand/best", headers=AUTH).json()["trial"] == 5
    _stored(app, [_row(6, "analytic", "ok", 280.0, 1.1, 45.0)])
    assert app.get("/api/v1/studies/hand/best", headers=AUTH).json()["trial"] == 6
