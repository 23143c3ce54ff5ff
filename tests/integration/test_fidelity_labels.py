"""``best``, ``trials`` and the HTML report say where a dry-run row's figures come from: memory from the
dry run, time from the cost model (``memory: dryrun, time: analytic``), not just ``fidelity: dryrun``.

The study is two evaluation rows of one layout written straight to a tmp SQLite database: the analytic
estimate and the dry-run row the driver would write for it (exact memory, the estimate's time figures
marked ``time_fidelity: analytic``, see :meth:`autotune.study.trial_outcome.TrialOutcomes.with_time`),
plus one layout rejected before evaluation.
"""

from __future__ import annotations

import json

import pytest

from autotune.cli import main
from autotune.config import derive
from autotune.costmodel import estimate
from autotune.results import render
from autotune.results.report import render_report
from autotune.spec import parse_spec
from autotune.store.storage import EvaluationRecord, Storage
from autotune.study.resolve import resolve
from tests.integration.studydb import SPEC

NAME = "labels"


@pytest.fixture
def db(tmp_path) -> str:
    spec = parse_spec(SPEC | {"name": NAME})
    problem = resolve(spec)
    cluster = spec.cluster.model_copy(update={"nodes": 1})
    cfg = derive(problem.model, problem.training, cluster.gpus, tp=2)
    layout = cfg.to_dict() | {"nodes": 1}
    est = estimate(problem.model, problem.training, problem.gpu, cluster, cfg) | {"gpus": cluster.gpus}
    dry_memory = {k: v * 0.9 for k, v in est["memory_gib"].items()}
    dry = est | {"memory_gib": dry_memory, "time_fidelity": "analytic"}
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    store = Storage(url)
    store.add_study(NAME, SPEC | {"name": NAME}, "test", "test")
    store.add_evaluations([
        EvaluationRecord(study=NAME, trial=0, fidelity="analytic", layout=layout, metrics=est, status="ok",
                         value=est["tokens_per_s"]),
        EvaluationRecord(study=NAME, trial=0, fidelity="dryrun", layout=layout, metrics=dry, status="ok",
                         value=dry["tokens_per_s"]),
        EvaluationRecord(study=NAME, trial=1, fidelity="analytic", layout={"tp": 3}, metrics={},
                         status="infeasible", reason="tp=3 does not divide heads=16"),
    ])
    store.close()
    return url


def test_best_json_and_text(db, capsys, monkeypatch) -> None:
    main(["best", NAME, "--storage", db, "--json"])
    best = json.loads(capsys.readouterr().out)
    assert (best["fidelity"], best["memory_fidelity"], best["time_fidelity"]) == ("dryrun", "dryrun", "analytic")
    low = best["lower_fidelity"]
    assert (low["fidelity"], low["memory_fidelity"], low["time_fidelity"]) == ("analytic", "analytic", "analytic")
    monkeypatch.setattr(render.console, "width", 240)
    main(["best", NAME, "--storage", db])
    text = capsys.readouterr().out
    assert "(trial 0, memory: dryrun, time: analytic, stack megatron-te)" in text  # the megatron space's stack
    assert best["stack"] == "megatron-te"
    assert "memory: analytic, time: analytic figures of the same layout" in text


def test_trials_json_and_text(db, capsys, monkeypatch) -> None:
    main(["trials", NAME, "--storage", db, "--json"])
    rows = json.loads(capsys.readouterr().out)
    got = [(r["trial"], r["fidelity"], r["memory_fidelity"], r["time_fidelity"]) for r in rows]
    assert sorted(got) == [(0, "analytic", "analytic", "analytic"), (0, "dryrun", "dryrun", "analytic"),
                           (1, "analytic", None, None)]
    monkeypatch.setattr(render.console, "width", 240)
    main(["trials", NAME, "--storage", db])
    lines = capsys.readouterr().out.splitlines()
    assert any("dryrun" not in ln and "memory: analytic, time: analytic" in ln for ln in lines)
    assert any("memory: dryrun, time: analytic" in ln for ln in lines)


def test_report_shows_both_fidelities(db) -> None:
    store = Storage(db, create=False)
    try:
        page = render_report(store, NAME)
    finally:
        store.close()
    card = page[page.index('<div class="card">'):]
    card = card[:card.index("</div></dl></div>")]
    assert "<dt>fidelity</dt><dd>memory: dryrun, time: analytic</dd>" in card
    assert "Memory breakdown, top 1 layouts (memory: dryrun)" in page
    assert "Step-time breakdown, top 1 layouts (time: analytic)" in page
    table = page[page.index('<table class="sortable">'):]
    assert table.count("<td>memory: dryrun, time: analytic</td>") == 1
    assert table.count("<td>memory: analytic, time: analytic</td>") == 1
