"""A multi-fidelity study: exhaustive analytic stage, then dry runs warm-started from its ranking."""

from __future__ import annotations

import itertools
import json

import pytest

from autotune.config import ParallelConfig, derive
from autotune.costmodel import estimate
from autotune.errors import InfeasibleConfig
from autotune.spec import load_spec
from autotune.store.storage import Storage
from autotune.study.resolve import resolve

pytestmark = pytest.mark.slow


def _cpu_space_layouts(problem) -> list[ParallelConfig]:
    """Every valid layout of search_spaces/cpu.yaml at 4 GPUs, enumerated by hand from its dimensions."""
    out = []
    for tp, pp, zero, micro_batch, recompute in itertools.product((1, 2), (1, 2), (0, 1, 2, 3), (1, 2),
                                                                  ("none", "selective", "full")):
        for sp in (False, True) if tp > 1 else (False,):
            schedules = [("1f1b", 1), ("1f1b", 2), ("gpipe", 1)] if pp > 1 else [("1f1b", 1)]
            for schedule, vpp in schedules:
                try:
                    out.append(derive(problem.model, problem.training, 4, tp=tp, pp=pp, vpp=vpp, zero=zero,
                                      micro_batch=micro_batch, recompute=recompute, sequence_parallel=sp,
                                      pp_schedule=schedule, overlap_grad_reduce=True, overlap_param_gather=True))
                except InfeasibleConfig:
                    continue
    return out


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
    # every valid layout of the space scored once by the cost model; the stored optimum is the best of
    # autotune.costmodel.estimate over a hand-written enumeration of the space
    problem = resolve(load_spec(spec))
    layouts = _cpu_space_layouts(problem)
    assert len(analytic) == len(layouts)
    scored = [estimate(problem.model, problem.training, problem.gpu, problem.cluster, c) for c in layouts]
    best_ref = max((e for e in scored if e["fits"]), key=lambda e: e["tokens_per_s"])
    top = max((r for r in analytic if r.status == "ok"), key=lambda r: r.metrics["tokens_per_s"])
    assert top.metrics["tokens_per_s"] == pytest.approx(best_ref["tokens_per_s"], rel=1e-9)
    assert all(r.trial == -1 for r in analytic)
    # the dry-run stage is the Optuna study: its first trials are the analytic top-2, in order
    ranked = sorted((r for r in analytic if r.status == "ok"), key=lambda r: -r.metrics["tokens_per_s"])
    assert [r.layout for r in sorted(dry, key=lambda r: r.trial)] == [r.layout for r in ranked[:2]]
    assert best["fidelity"] == "dryrun" and best["lower_fidelity"]["fidelity"] == "analytic"
    assert best["metrics"]["memory_gib"]["total"] > 0
    comparison = best["fidelity_comparison"]
    assert comparison and all(c["versus"] == "analytic" and c["memory_ratio"] > 0 for c in comparison)
