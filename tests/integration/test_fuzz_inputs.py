"""Fuzzed specs, model YAML, HF config.json, search spaces and CLI flags: work, or exit 2 in one line.

250 Hypothesis examples in all (derandomised, so CI is reproducible), each through
``autotune.cli.main`` in-process; see :mod:`tests.integration.fuzzkit` for what counts as a pass.
``benchmarks/fuzz_inputs.py`` runs 1,000 and prints the counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.integration import fuzzkit as fk

CI = settings(max_examples=50, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ESTIMATE = ["estimate", "--gpu", "h100-sxm", "--gpus", "8", "--seq-len", "2048", "--global-batch", "16"]


@pytest.fixture
def db(tmp_path, monkeypatch) -> Path:
    """An initialised empty study DB; the working directory is the test's own (relative paths land there)."""
    monkeypatch.chdir(tmp_path)
    return fk.prepare(tmp_path)


def _ok(outcome: str) -> None:
    assert outcome in ("ok", "exit2"), outcome


@CI
@given(text=fk.specs())
def test_fuzzed_spec(db, text) -> None:
    (db.parent / "spec.yaml").write_text(text)
    _ok(fk.run(["submit", str(db.parent / "spec.yaml"), "--storage", f"sqlite:///{db}"], db))


@CI
@given(text=fk.model_yamls(), hf=fk.hf_configs())
def test_fuzzed_model_yaml_and_hf_config(db, text, hf) -> None:
    (db.parent / "model.yaml").write_text(text)
    _ok(fk.run([*ESTIMATE, "--model", str(db.parent / "model.yaml")], db))
    (db.parent / "hf").mkdir(exist_ok=True)
    (db.parent / "hf" / "config.json").write_text(hf)
    _ok(fk.run([*ESTIMATE, "--model", str(db.parent / "hf" / "config.json")], db))


@CI
@given(text=fk.spaces())
def test_fuzzed_search_space(db, text) -> None:
    (db.parent / "space.yaml").write_text(text)
    spec = dict(fk.BASE_SPEC, search=dict(fk.BASE_SPEC["search"], space=str(db.parent / "space.yaml")))
    (db.parent / "spec.yaml").write_text(json.dumps(spec))
    _ok(fk.run(["submit", str(db.parent / "spec.yaml"), "--storage", f"sqlite:///{db}"], db))


@CI
@given(est=fk.estimate_flags(), sub=fk.submit_flags())
def test_fuzzed_cli_flags(db, est, sub) -> None:
    _ok(fk.run(est, db))
    (db.parent / "base.yaml").write_text(json.dumps(fk.BASE_SPEC))
    _ok(fk.run(["submit", str(db.parent / "base.yaml"), "--storage", f"sqlite:///{db}", *sub], db))


@CI
@given(text=fk.auto_specs())
def test_fuzzed_auto_spec_and_global_batch_lists(db, text) -> None:
    (db.parent / "spec.yaml").write_text(text)
    _ok(fk.run(["submit", str(db.parent / "spec.yaml"), "--storage", f"sqlite:///{db}"], db))


def test_valid_auto_spec_stops_before_the_analytic_stage(db) -> None:
    """The stub stands in for the stage's study: a valid ``auto`` spec passes every check and stores nothing."""
    (db.parent / "auto.yaml").write_text(json.dumps(fk.BASE_AUTO_SPEC))
    assert fk.run(["submit", str(db.parent / "auto.yaml"), "--storage", f"sqlite:///{db}"], db) == "ok"


@pytest.mark.parametrize("batches", [[], [0], [8, 8], ["a"], [64, -8], [8.5], [[8]]])
def test_bad_global_batch_list_exits_2_naming_it_and_creates_no_db(tmp_path, cli, batches) -> None:
    spec = dict(fk.BASE_AUTO_SPEC, training=dict(fk.BASE_AUTO_SPEC["training"], global_batch=batches))
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))
    db = tmp_path / "never.db"
    code, _, err = cli(["submit", str(tmp_path / "spec.yaml"), "--storage", f"sqlite:///{db}"])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: training") and "global_batch" in err, err
    assert not db.exists()
