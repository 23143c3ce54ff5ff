"""The service against a real uvicorn on 127.0.0.1 (a subprocess): submit the quickstart, follow its progress
events, read best / evaluations / export (3 frameworks) / report, compare with the CLI on the same storage;
422 from the fuzzed bad specs (same field as ``autotune submit`` names), 401, 413, 429, cancel."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from autotune.service.auth import digest
from tests.integration import fuzzkit as fk
from tests.integration import servicekit as sk

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = (ROOT / "search_spaces" / "examples" / "quickstart.yaml").read_text()
TOKENS = {"alpha": "tok-alpha-4b1e", "beta": "tok-beta-90c2"}
ALPHA = {"Authorization": f"Bearer {TOKENS['alpha']}"}
BETA = {"Authorization": f"Bearer {TOKENS['beta']}"}
YAML = {"Content-Type": "application/yaml"}
LIMIT = 8192
LONG = """name: {name}
model: llama3-8b
cluster: {{gpu: h100-sxm, gpus_per_node: 8, nodes: 1}}
training: {{seq_len: 8192, global_batch: 512, precision: bf16}}
search: {{space: megatron, sampler: random, n_trials: 5000, evaluator: analytic, workers: 1, seed: 1}}
"""
"""A driven study long enough to be running while the limits are probed (5,000 Ray-evaluated trials)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory, ray_local):
    """One server for the module: two tokens in a token file (digests only), 3 studies at once, 2 per token."""
    tmp = tmp_path_factory.mktemp("svc")
    (tmp / "tokens").write_text("".join(f"{n}:{digest(t)}\n" for n, t in TOKENS.items()))
    url = f"sqlite:///{tmp / 'svc.db'}"
    srv = sk.start(tmp, url, "--token-file", str(tmp / "tokens"), "--max-concurrent-studies", "3",
                   "--max-studies-per-token", "2", "--max-spec-bytes", str(LIMIT),
                   "--ray-address", ray_local.get_runtime_context().gcs_address)
    srv.storage = url
    yield srv
    sk.kill(srv)


def _count(server) -> int:
    return len(httpx.get(f"{server.api}/studies", headers=ALPHA, timeout=30).json()["studies"])


def _events(server, name: str) -> list[tuple[str, dict]]:
    out, event = [], None
    with httpx.stream("GET", f"{server.api}/studies/{name}/events", headers=ALPHA, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                out.append((event, json.loads(line[5:])))
    return out


def test_quickstart_submit_events_best_export_report(server, cli) -> None:
    r = httpx.post(f"{server.api}/studies", content=QUICKSTART, headers=ALPHA | YAML, timeout=60)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "quickstart" and r.json()["state"] in ("queued", "running")
    events = _events(server, "quickstart")
    kinds = [k for k, _ in events]
    assert kinds[-1] == "end" and kinds.count("end") == 1 and "progress" in kinds
    final = events[-1][1]
    assert final["state"] == "completed" and final["error"] is None and final["evaluator"] == "analytic"
    counts = final["counts"]
    # every enumerated layout is stored once: the statuses add up to the layouts scored, which are the budget
    assert sum(v for k, v in counts.items() if k != "failed") == final["done"] == final["budget"] > 1000
    done = [s["done"] for k, s in events if k == "progress"]
    assert done == sorted(done)

    code, out, _ = cli(["best", "quickstart", "--storage", server.storage, "--json"])
    best = httpx.get(f"{server.api}/studies/quickstart/best", headers=ALPHA, timeout=30).json()
    assert code == 0 and best == json.loads(out)
    assert final["best_step_time_s"] == best["metrics"]["step_time_s"]

    # torchtitan takes FSDP layouts (zero 2/3), which the megatron space has none of: an fsdp-space study
    fsdp = QUICKSTART.replace("name: quickstart", "name: quickstart-fsdp").replace("space: megatron", "space: fsdp")
    assert httpx.post(f"{server.api}/studies", content=fsdp, headers=ALPHA | YAML, timeout=60).status_code == 201
    assert _events(server, "quickstart-fsdp")[-1][1]["state"] == "completed"
    code, out, err = cli(["export", "quickstart", "--format", "torchtitan", "--storage", server.storage])
    r = httpx.get(f"{server.api}/studies/quickstart/export/torchtitan", headers=ALPHA, timeout=30)
    assert code == 2 and r.status_code == 422 and f"error: {r.json()['detail']['message']}\n" == err
    for study, fw in (("quickstart", "megatron"), ("quickstart-fsdp", "torchtitan"), ("quickstart-fsdp", "deepspeed")):
        code, out, err = cli(["export", study, "--format", fw, "--storage", server.storage])
        r = httpx.get(f"{server.api}/studies/{study}/export/{fw}", headers=ALPHA, timeout=30)
        assert code == 0 and r.status_code == 200 and r.text == out, (err, r.text[:300])
        if fw == "deepspeed":
            assert r.headers["content-type"].startswith("application/json") and json.loads(r.text)
            launch = httpx.get(f"{server.api}/studies/{study}/export/deepspeed", params={"part": "launch"},
                               headers=ALPHA, timeout=30)
            assert launch.text == err and "--deepspeed_config ds_config.json" in launch.text
    bad = httpx.get(f"{server.api}/studies/quickstart/export/nemo", headers=ALPHA, timeout=30)
    assert bad.status_code == 422 and bad.json()["detail"] == {
        "field": "framework", "message": "framework: 'nemo' is not one of megatron, deepspeed, torchtitan"}

    page = httpx.get(f"{server.api}/studies/quickstart/report", headers=ALPHA, timeout=60)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script src=" not in page.text and "Plotly.newPlot" in page.text and len(page.text) > 1_000_000


def test_evaluations_filter_and_pages(server) -> None:
    state = httpx.get(f"{server.api}/studies/quickstart", headers=ALPHA, timeout=30).json()
    get = lambda **p: httpx.get(f"{server.api}/studies/quickstart/evaluations", params=p, headers=ALPHA,  # noqa: E731
                                timeout=30).json()
    assert get(limit=1)["total"] == state["done"]
    assert get(status="ok", limit=1)["total"] == state["counts"]["ok"]
    assert get(fidelity="analytic", limit=1)["total"] == state["done"]
    assert get(fidelity="measure", limit=1)["total"] == 0
    first, second = get(offset=0, limit=5), get(offset=5, limit=5)
    assert [i["trial"] for i in first["items"] + second["items"]] == list(range(10))
    ranked = get(status="ok", sort="tokens_per_s", limit=3)["items"]
    tps = [i["metrics"]["tokens_per_s"] for i in ranked]
    assert tps == sorted(tps, reverse=True)
    r = httpx.get(f"{server.api}/studies/quickstart/evaluations", params={"status": "bogus"}, headers=ALPHA)
    assert r.status_code == 422 and r.json()["detail"]["field"] == "status"
    r = httpx.get(f"{server.api}/studies/quickstart/evaluations", params={"limit": 0}, headers=ALPHA)
    assert r.status_code == 422 and r.json()["detail"]["field"] == "limit"


def test_cli_client_prints_what_local_mode_prints(server, cli, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AUTOTUNE_TOKEN", TOKENS["beta"])
    pairs = [["best", "quickstart", "--json"], ["best", "quickstart", "--top", "3"], ["studies", "--json"],
             ["studies"], ["trials", "quickstart", "--sort", "tokens_per_s", "--limit", "7", "--json"],
             ["trials", "quickstart", "--status", "ok", "--limit", "4"], ["trials", "quickstart", "--status", "x"],
             ["export", "quickstart", "--format", "megatron"], ["export", "quickstart", "--format", "deepspeed"],
             ["best", "missing-study"]]
    for args in pairs:
        local = cli([*args, "--storage", server.storage])
        remote = cli([*args, "--server", server.url])
        if args == ["best", "missing-study"]:  # the server does not name its storage URL
            assert local[0] == remote[0] == 2 and remote[2].startswith("error: study: no study named 'missing-study'")
            continue
        assert remote == local, args

    spec = tmp_path / "small.yaml"
    spec.write_text(QUICKSTART.replace("name: quickstart", "name: small").replace("global_batch: 512",
                                                                                  "global_batch: 64"))
    code, out, err = cli(["submit", str(spec), "--server", server.url, "--json"])
    assert code == 0, err
    assert json.loads(out) == json.loads(cli(["best", "small", "--storage", server.storage, "--json"])[1])
    code, _, err = cli(["submit", str(spec), "--server", server.url, "--json"])
    assert code == 2 and err.startswith("error: name: study 'small' already exists") and err.count("\n") == 1

    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICKSTART.replace("seq_len: 8192", "seq_len: -4"))
    local = cli(["submit", str(bad), "--storage", f"sqlite:///{tmp_path / 'local.db'}"])
    remote = cli(["submit", str(bad), "--server", server.url])
    assert remote == local and local[0] == 2 and local[2].startswith("error: training.seq_len: ")

    monkeypatch.delenv("AUTOTUNE_TOKEN")
    assert cli(["studies", "--server", server.url]) == (2, "", "error: server: unauthorized (set AUTOTUNE_TOKEN)\n")
    code, _, err = cli(["studies", "--server", f"http://127.0.0.1:{sk.free_port()}"])
    assert code == 2 and err.startswith("error: server: cannot reach http://127.0.0.1:") and err.count("\n") == 1


CI = settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FIELD = re.compile(r"^error: ([A-Za-z_][\w.\[\]-]*): ")


@CI
@given(text=fk.specs())
def test_fuzzed_bad_specs_are_422_naming_the_field_submit_names(server, tmp_path_factory, text) -> None:
    """Each spec ``autotune submit`` rejects (exit 2) is a 422 naming the same field, and writes nothing."""
    tmp = tmp_path_factory.mktemp("fz")
    db = fk.prepare(tmp)
    (tmp / "spec.yaml").write_text(text)
    outcome = fk.run(["submit", str(tmp / "spec.yaml"), "--storage", f"sqlite:///{db}"], db)
    if outcome != "exit2":
        return
    import contextlib
    import io

    from autotune.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        main(["submit", str(tmp / "spec.yaml"), "--storage", f"sqlite:///{db}"])
    before = _count(server)
    r = httpx.post(f"{server.api}/studies", content=text.encode(), headers=ALPHA | YAML, timeout=60)
    assert r.status_code == 422, (text, r.text)
    detail = r.json()["detail"]
    m = FIELD.match(err.getvalue())
    assert detail["field"] == (m.group(1) if m else None), (err.getvalue(), detail)
    assert "\n" not in detail["message"]
    assert _count(server) == before


def test_unauthorized_writes_nothing(server) -> None:
    before = _count(server)
    spec = QUICKSTART.replace("name: quickstart", "name: intruder")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKENS['alpha']}"},
                    {"Authorization": f"Bearer {digest(TOKENS['alpha'])}"}):
        r = httpx.post(f"{server.api}/studies", content=spec, headers=headers | YAML, timeout=30)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["detail"]["message"].startswith("unauthorized")
        for path in ("/studies", "/studies/quickstart/best", "/examples"):
            assert httpx.get(f"{server.api}{path}", headers=headers, timeout=30).status_code == 401
    assert httpx.post(f"{server.api}/studies/quickstart/cancel", timeout=30).status_code == 401
    assert httpx.get(f"{server.api}/health", timeout=30).status_code == 200
    assert _count(server) == before
    log = server.log_text()
    assert all(t not in log for t in TOKENS.values()) and "intruder" not in log


def test_body_over_the_limit_is_413(server) -> None:
    before = _count(server)
    big = QUICKSTART.replace("name: quickstart", "name: big") + "#" * LIMIT
    r = httpx.post(f"{server.api}/studies", content=big, headers=ALPHA | YAML, timeout=30)
    assert r.status_code == 413 and r.json()["detail"]["field"] == "spec"
    assert _count(server) == before


def test_examples_and_estimate(server, cli) -> None:
    names = [e["name"] for e in httpx.get(f"{server.api}/examples", headers=ALPHA).json()["examples"]]
    assert "quickstart" in names and "tiny-cpu" in names
    r = httpx.get(f"{server.api}/examples/quickstart", headers=ALPHA)
    assert r.text == QUICKSTART and r.headers["content-type"].startswith("text/yaml")
    body = {"model": "llama3-8b", "cluster": {"gpu": "h100-sxm", "gpus_per_node": 8, "nodes": 1},
            "training": {"seq_len": 8192, "global_batch": 512}, "layout": {"tp": 2, "pp": 1, "micro_batch": 1}}
    est = httpx.post(f"{server.api}/estimate", json=body, headers=ALPHA, timeout=30)
    assert est.status_code == 200, est.text
    # 8 GPUs / tp 2 -> dp 4; 512 samples per step / (dp 4 x micro-batch 1) -> 128 micro-batches per rank
    assert est.json()["config"]["dp"] == 4 and est.json()["config"]["grad_accum"] == 128
    code, out, _ = cli(["estimate", "--model", "llama3-8b", "--gpu", "h100-sxm", "--gpus", "8", "--seq-len", "8192",
                        "--global-batch", "512", "--tp", "2", "--pp", "1", "--micro-batch", "1", "--json"])
    assert code == 0 and json.loads(out) == est.json()
    bad = httpx.post(f"{server.api}/estimate", json=body | {"layout": {"tp": 3}}, headers=ALPHA, timeout=30)
    assert bad.status_code == 422 and bad.json()["detail"]["field"] == "layout"
    bad = httpx.post(f"{server.api}/estimate", json=body | {"layout": {"tpp": 2}}, headers=ALPHA, timeout=30)
    assert bad.status_code == 422 and bad.json()["detail"]["field"] == "layout.tpp"
    bad = httpx.post(f"{server.api}/estimate", json=body | {"model": "/etc/passwd"}, headers=ALPHA, timeout=30)
    assert bad.status_code == 422 and bad.json()["detail"]["field"] == "model"


def test_limits_429_then_cancel_stops_the_trials(server) -> None:
    post = lambda name, h: httpx.post(f"{server.api}/studies", content=LONG.format(name=name),  # noqa: E731
                                      headers=h | YAML, timeout=60)
    assert post("long-a1", ALPHA).status_code == 201
    assert post("long-a2", ALPHA).status_code == 201
    r = post("long-a3", ALPHA)
    assert r.status_code == 429 and r.json()["detail"]["field"] == "token", r.text
    assert post("long-b1", BETA).status_code == 201
    r = post("long-b2", BETA)
    assert r.status_code == 429 and r.json()["detail"]["field"] == "server", r.text
    assert post("long-a1", BETA).status_code == 409
    sk.wait_state(server.api, "long-a1", ("running",), ALPHA)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # trials are being written
        if httpx.get(f"{server.api}/studies/long-a1", headers=ALPHA).json()["done"] > 0:
            break
        time.sleep(0.5)
    for name in ("long-a1", "long-a2", "long-b1"):
        r = httpx.post(f"{server.api}/studies/{name}/cancel", headers=BETA, timeout=60)
        assert r.status_code == 202 and r.json()["state"] == "cancelled"
        assert _events(server, name)[-1][0] == "end"
    done = httpx.get(f"{server.api}/studies/long-a1", headers=ALPHA).json()["done"]
    assert 0 < done < 5000
    time.sleep(3)  # a driver still running would add rows in this time
    assert httpx.get(f"{server.api}/studies/long-a1", headers=ALPHA).json()["done"] == done
    assert httpx.post(f"{server.api}/studies/long-a1/cancel", headers=BETA, timeout=60).status_code == 409
    assert post("long-b2", BETA).status_code == 201  # the slots are free again
    assert httpx.post(f"{server.api}/studies/long-b2/cancel", headers=BETA, timeout=60).status_code == 202
