"""The rows an ``analytic`` study with ``sampler: auto`` stores, checked against a hand-written loop.

The study runs through the CLI (``submit``, in-process, no Ray) on a space small enough to enumerate
here: tp [1, 2] x pp [1, 2] x zero [0, 1, 3] x micro_batch [1, 2] (24 layouts) of Llama-3-8B on one
8 x H100 node at global batch 4. Each layout's expected row comes from the test's own loop over
``itertools.product``: :func:`autotune.config.derive` for the layout rules, the Megatron-LM row of
:func:`autotune.search.frameworks.unsupported_reason` for the framework, and
:func:`autotune.costmodel.estimate` for memory and throughput; the best is the loop's own maximum.
Worked by hand at global batch 4 (dp = 8 / (tp * pp), GBS = micro_batch * grad_accum * dp):
tp1 pp1 (dp 8) never divides 4, nor does micro_batch 2 at dp 4: 12 rule rejections; of the 12 valid
layouts the 4 with zero=3 are not Megatron-LM layouts; 8 are scored.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from autotune.catalog import get_gpu, get_model
from autotune.config import derive
from autotune.costmodel import estimate
from autotune.errors import InfeasibleConfig
from autotune.search.frameworks import unsupported_reason
from autotune.spec import ClusterSpec, TrainingSpec
from autotune.store.storage import Storage

CHOICES = {"tp": [1, 2], "pp": [1, 2], "zero": [0, 1, 3], "micro_batch": [1, 2]}
SPACE = """name: handspace
framework: megatron
dimensions:
  tp: {choices: [1, 2]}
  pp: {choices: [1, 2]}
  zero: {choices: [0, 1, 3]}
  micro_batch: {choices: [1, 2]}
fixed: {overlap_grad_reduce: true, overlap_param_gather: true}
derived: [dp, grad_accum]
"""
TRAINING = {"seq_len": 8192, "precision": "bf16", "tokens": 1.0e12}
FIXED = {"overlap_grad_reduce": True, "overlap_param_gather": True}


def _spec(tmp: Path, name: str, global_batch: int | list[int]) -> Path:
    (tmp / "handspace.yaml").write_text(SPACE)
    spec = {"name": name, "model": "llama3-8b", "cluster": {"gpu": "h100-sxm", "gpus_per_node": 8, "nodes": 1},
            "training": TRAINING | {"global_batch": global_batch},
            "search": {"space": str(tmp / "handspace.yaml"), "evaluator": "analytic"}, "objective": "throughput"}
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(spec))
    return path


def expected_rows(global_batch: int) -> dict[tuple, dict[str, Any]]:
    """(tp, pp, zero, micro_batch) -> the row the stage must store, from derive / the capability table /
    estimate, one layout at a time."""
    model, gpu = get_model("llama3-8b"), get_gpu("h100-sxm")
    cluster = ClusterSpec(gpu="h100-sxm", gpus_per_node=8, nodes=1)
    training = TrainingSpec(**TRAINING, global_batch=global_batch, stack="megatron-te")  # the framework's default
    out = {}
    for tp, pp, zero, mbs in itertools.product(*CHOICES.values()):
        try:
            cfg = derive(model, training, 8, tp=tp, pp=pp, zero=zero, micro_batch=mbs, **FIXED)
        except InfeasibleConfig as e:
            out[tp, pp, zero, mbs] = {"status": "infeasible", "reason": str(e), "kind": "rule"}
            continue
        why = unsupported_reason("megatron", cfg, training)
        if why:
            out[tp, pp, zero, mbs] = {"status": "unsupported", "reason": why, "kind": "framework"}
            continue
        est = estimate(model, training, gpu, cluster, cfg)
        out[tp, pp, zero, mbs] = {"status": "ok" if est["fits"] else "infeasible", "kind": "scored",
                                  "fits": est["fits"], "tokens_per_s": est["tokens_per_s"],
                                  "memory": est["memory_gib"]["total"], "capacity": est["capacity_gib"],
                                  "layout": cfg.to_dict()}
    return out


def _key(layout: dict[str, Any]) -> tuple:
    return tuple(layout[k] for k in CHOICES)


def _check_rows(rows, expected: dict[tuple, dict[str, Any]]) -> None:
    assert sorted(_key(r.layout) for r in rows) == sorted(expected), "one row per layout of the space"
    for r in rows:
        want = expected[_key(r.layout)]
        assert r.status == want["status"], (r.layout, r.status, r.reason)
        assert r.fidelity == "analytic" and r.layout["nodes"] == 1
        if want["kind"] == "rule":
            assert r.reason == want["reason"] and r.reason_kind != "memory"
        elif want["kind"] == "framework":
            assert r.reason == want["reason"] and r.reason.startswith("megatron: ")
        elif want["fits"]:
            assert r.reason is None and r.value == pytest.approx(want["tokens_per_s"], rel=1e-12)
            assert {k: r.layout[k] for k in want["layout"]} == want["layout"]
        else:
            assert r.reason_kind == "memory" and want["memory"] > want["capacity"]
            assert r.metrics["memory_gib"]["total"] == pytest.approx(want["memory"], rel=1e-12)
            assert f"{want['capacity']:.1f}" in r.reason, r.reason


def test_hand_counted_rows_and_best(tmp_path, cli) -> None:
    expected = expected_rows(4)
    kinds = [e["kind"] for e in expected.values()]
    assert (kinds.count("rule"), kinds.count("framework"), kinds.count("scored")) == (12, 4, 8)  # worked by hand
    statuses = {e["status"] for e in expected.values() if e["kind"] == "scored"}
    assert statuses == {"ok", "infeasible"}, "the space should both fit and overflow an 80 GB H100"

    url = f"sqlite:///{tmp_path / 'hand.db'}"
    code, _, err = cli(["submit", str(_spec(tmp_path, "hand", 4)), "--storage", url, "--quiet"])
    assert code == 0, err
    store = Storage(url, create=False)
    rows = store.evaluations("hand")
    assert [r.trial for r in rows] == list(range(24))
    _check_rows(rows, expected)

    code, out, err = cli(["best", "hand", "--storage", url, "--json"])
    assert code == 0, err
    best = json.loads(out)
    fitting = {k: e for k, e in expected.items() if e["status"] == "ok"}
    mine = max(fitting, key=lambda k: fitting[k]["tokens_per_s"])
    assert _key(best["config"]) == mine
    assert best["metrics"]["tokens_per_s"] == pytest.approx(fitting[mine]["tokens_per_s"], rel=1e-12)
    assert best["evaluations"] == 24 and best["infeasible"]["count"] == 24 - len(fitting)
    store.close()


def test_global_batch_list_stores_every_batch_and_the_best_of_each(tmp_path, cli) -> None:
    batches = [4, 8, 16]
    url = f"sqlite:///{tmp_path / 'gbs.db'}"
    code, _, err = cli(["submit", str(_spec(tmp_path, "gbs", batches)), "--storage", url, "--quiet"])
    assert code == 0, err
    store = Storage(url, create=False)
    rows = store.evaluations("gbs")
    assert [r.trial for r in rows] == list(range(24 * len(batches)))  # N = sum over batches of 24 layouts
    code, out, err = cli(["best", "gbs", "--storage", url, "--json"])
    assert code == 0, err
    report = json.loads(out)
    overall: list[tuple[float, int, tuple]] = []
    for b in batches:
        mine = [r for r in rows if r.layout["global_batch"] == b]
        expected = expected_rows(b)
        _check_rows(mine, expected)
        fitting = {k: e["tokens_per_s"] for k, e in expected.items() if e["status"] == "ok"}
        top = max(fitting, key=fitting.__getitem__)
        overall.append((fitting[top], b, top))
        assert "by_global_batch" in report, "best --json has no best-per-batch report"
        got = report["by_global_batch"][str(b)]
        assert _key(got["config"]) == top and got["config"]["global_batch"] == b
        assert got["metrics"]["tokens_per_s"] == pytest.approx(fitting[top], rel=1e-12)
    _, b, top = max(overall)
    assert (_key(report["config"]), report["config"]["global_batch"]) == (top, b)
    store.close()


def test_dashboard_reader_sees_the_mirrored_best(tmp_path, cli) -> None:
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    code, _, err = cli(["submit", str(_spec(tmp_path, "dash", [4, 8, 16])), "--storage", url, "--quiet"])
    assert code == 0, err
    store = Storage(url, create=False)
    by_trial = {r.trial: r for r in store.evaluations("dash")}
    store.close()
    ok_values = sorted((r.value for r in by_trial.values() if r.status == "ok"), reverse=True)
    assert len(ok_values) > 10, "the study should have more fitting layouts than the dashboard shows"

    trials = optuna.load_study(study_name="dash", storage=url).trials  # a fresh reader, as the dashboard is
    assert len(trials) == 10 and sorted(t.number for t in trials) == list(range(10))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted((t.values[0] for t in trials), reverse=True) == pytest.approx(ok_values[:10], rel=1e-12)
    for t in trials:
        a = t.user_attrs
        assert t.values[0] == pytest.approx(a["tokens_per_s"], rel=1e-12)
        row = by_trial[a["evaluation"]]
        assert row.status == "ok" == a["status"] and row.layout == a["layout"]
        assert row.value == pytest.approx(t.values[0], rel=1e-12)
        for k in ("zero", "micro_batch", "global_batch"):  # tp and pp are joined into one mesh dimension
            assert t.params[k] == row.layout[k], (k, t.params, row.layout)
