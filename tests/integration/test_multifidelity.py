"""A multi-fidelity study: exhaustive analytic stage, then dry runs warm-started from its ranking."""

from __future__ import annotations

import json

import pytest

from autotune.search.enumerate import score_space
from autotune.search.space import load_space
from autotune.spec import load_spec
from autotune.store.storage import Storage
from autotune.study.resolve import resolve

pytestmark = pytest.mark.slow


def test_analytic_then_dryrun(tmp_path, ray_local, cli) -> None:
    spec = tmp_path / "mf.yaml"
    spec.write_text("""name: mf
model: tiny
cluster: {gpu: cpu, gpus_per_node: 4, nodes: 1}
training: {seq_len: 128, global_batch: 8, precision: fp32}
search: {space: cpu, sampler: tpe, n_trials: 2, fidelities: [analytic, dryrun], top_k: 2, workers: 1, seed: 0}
""")
    db = f"sqlite:///{tmp_path / 'mf.db'}"
    code, out, err = cli(["submit", str(spec), "--storage", db, "--json"])
    assert code == 0, err
    best = json.loads(out)
    rows = Storage(db).evaluations("mf")
    analytic = [r for r in rows if r.fidelity == "analytic"]
    dry = [r for r in rows if r.fidelity == "dryrun"]
    # every valid layout of the space scored once by the cost model (independently enumerated here)
    problem = resolve(load_spec(spec))
    space = load_space("cpu").specialise(layers=4, heads=4, seq_len=128, global_batch=8, gpu_counts=[4])
    scored = score_space(problem, space)
    assert len(analytic) == sum(c is not None for c in scored.configs)
    assert all(r.trial == -1 for r in analytic)
    # the dry-run stage is the Optuna study: its first trials are the analytic top-2, in order
    ranked = sorted((r for r in analytic if r.status == "ok"), key=lambda r: -r.metrics["tokens_per_s"])
    assert [r.layout for r in sorted(dry, key=lambda r: r.trial)] == [r.layout for r in ranked[:2]]
    assert best["fidelity"] == "dryrun" and best["lower_fidelity"]["fidelity"] == "analytic"
    assert best["metrics"]["memory_gib"]["total"] > 0
    comparison = best["fidelity_comparison"]
    assert comparison and all(c["versus"] == "analytic" and c["memory_ratio"] > 0 for c in comparison)
