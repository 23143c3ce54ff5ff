"""End-to-end studies on a local Ray with a temporary SQLite DB."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autotune.catalog import get_gpu, get_model
from autotune.config import derive
from autotune.costmodel import estimate_arrays, layout_arrays
from autotune.errors import InfeasibleConfig
from autotune.spec import TrainingSpec
from autotune.store.storage import Storage

pytestmark = pytest.mark.slow

SPACE = """
name: small
framework: any
dimensions:
  tp: {choices: [1, 2, 4, 8]}
  pp: {choices: [1, 2, 4]}
  sequence_parallel: {choices: [false, true], when: "tp > 1", default: false}
  micro_batch: {choices: [1, 2, 4]}
  recompute: {choices: [none, selective, full]}
  zero: {choices: [0, 1]}
"""


def write_spec(tmp: Path, name: str, sampler: str = "grid", n_trials: int = 1000, space: str | None = None) -> Path:
    if space is None:
        (tmp / "small.yaml").write_text(SPACE)
        space = str(tmp / "small.yaml")
    spec = tmp / f"{name}.yaml"
    spec.write_text(f"""name: {name}
model: llama3-8b
cluster: {{gpu: h100-sxm, gpus_per_node: 8, nodes: 1}}
training: {{seq_len: 8192, global_batch: 64, precision: bf16}}
search: {{space: {space}, sampler: {sampler}, n_trials: {n_trials}, evaluator: analytic, workers: 2, seed: 1}}
""")
    return spec



def enumerate_optimum() -> float:
    """Best tokens/s over the small space by brute force with the vectorised cost model (no driver)."""
    model, gpu = get_model("llama3-8b"), get_gpu("h100-sxm")
    training = TrainingSpec(seq_len=8192, global_batch=64)
    configs = []
    grid = itertools.product((1, 2, 4, 8), (1, 2, 4), (False, True), (1, 2, 4), ("none", "selective", "full"), (0, 1))
    for tp, pp, sp, mbs, rc, zero in grid:
        with contextlib.suppress(InfeasibleConfig):
            configs.append(derive(model, training, 8, tp=tp, pp=pp, sequence_parallel=sp, micro_batch=mbs,
                                  recompute=rc, zero=zero))
    out = estimate_arrays(model, training, gpu, 8, layout_arrays(configs))
    tps = np.where(out["memory"]["fits"], out["time"]["tokens_per_s"], -1.0)
    return float(tps.max())


def test_grid_finds_enumerated_optimum_and_cache_is_reused(tmp_path, ray_local, cli) -> None:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    code, out, err = cli(["submit", str(write_spec(tmp_path, "grid1")), "--storage", db, "--json"])
    assert code == 0, err
    best = json.loads(out)
    assert best["metrics"]["tokens_per_s"] == pytest.approx(enumerate_optimum(), rel=1e-12)
    rows = Storage(db).evaluations("grid1")
    # every point of the space exactly once. tp x pp meshes dividing 8 GPUs: tp=1 with pp 1/2/4, tp=2 with
    # pp 1/2/4, tp=4 with pp 1/2, tp=8 with pp 1; sequence parallel doubles the 6 with tp > 1;
    # then 3 micro-batches x 3 recompute modes x 2 ZeRO stages.
    assert len(rows) == (3 + 2 * 6) * 3 * 3 * 2
    assert len({json.dumps(r.layout, sort_keys=True) for r in rows}) == len(rows)
    dispatched = [r for r in rows if r.host]
    assert dispatched and all(r.status == "ok" and r.metrics["fits"] for r in dispatched)
    assert not [r for r in rows if r.status == "oom"]  # the memory screen ran before dispatch
    assert {r.status for r in rows} == {"ok", "infeasible"}

    code, out, err = cli(["submit", str(write_spec(tmp_path, "grid2")), "--storage", db, "--json"])
    assert code == 0, err
    rows2 = Storage(db).evaluations("grid2")
    ok2 = [r for r in rows2 if r.status == "ok"]
    assert ok2 and all(r.cached for r in ok2)
    assert json.loads(out)["config"] == best["config"]


def test_thompson_study_never_repeats_a_layout_and_nears_the_optimum(tmp_path, ray_local, cli) -> None:
    """270 points (see the grid test); 90 trials with 2 parallel workers."""
    db = f"sqlite:///{tmp_path / 't.db'}"
    code, out, err = cli(["submit", str(write_spec(tmp_path, "ts", sampler="thompson", n_trials=90)), "--storage",
                          db, "--json"])
    assert code == 0, err
    rows = Storage(db).evaluations("ts")
    assert len(rows) == 90 and len({json.dumps(r.layout, sort_keys=True) for r in rows}) == 90
    assert json.loads(out)["metrics"]["tokens_per_s"] >= 0.95 * enumerate_optimum()


def test_tpe_study_best_and_listing(tmp_path, ray_local, cli) -> None:
    db = f"sqlite:///{tmp_path / 'b.db'}"
    spec = write_spec(tmp_path, "tpe", sampler="tpe", n_trials=60, space="megatron")
    code, _, err = cli(["submit", str(spec), "--storage", db, "--quiet"])
    assert code == 0, err
    code, out, err = cli(["best", "tpe", "--storage", db, "--json"])
    assert code == 0, err
    best = json.loads(out)
    for key in ("study", "config", "metrics", "fidelity", "trial", "runners_up", "infeasible"):
        assert key in best
    for key in ("step_time_s", "tokens_per_s", "mfu", "memory_gib"):
        assert key in best["metrics"]
    assert best["fidelity"] == "analytic"
    cfg = best["config"]
    assert cfg["micro_batch"] * cfg["grad_accum"] * cfg["dp"] == 64
    assert best["infeasible"]["count"] == sum(best["infeasible"]["reasons"].values())
    code, out, _ = cli(["trials", "tpe", "--storage", db, "--json", "--status", "ok", "--sort", "tokens_per_s",
                        "--limit", "3"])
    top = json.loads(out)
    assert code == 0 and len(top) == 3 and top[0]["metrics"]["tokens_per_s"] == best["metrics"]["tokens_per_s"]
    code, out, _ = cli(["studies", "--storage", db, "--json"])
    assert [s["name"] for s in json.loads(out)] == ["tpe"]
    code, _, err = cli(["submit", str(spec), "--storage", db])
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    code, _, err = cli(["resume", "tpe", "--storage", db, "--n-trials", "70", "--quiet"])
    assert code == 0, err
    assert len({r.trial for r in Storage(db).evaluations("tpe")}) == 70


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("edit,field", [
    (("seq_len: 8192", "seq_len: 0"), "training.seq_len"),
    (("precision: bf16", "precision: int4"), "training.precision"),
    (("nodes: 1}", "nodes: 1, rack: 3}"), "cluster.rack"),
    (("sampler: grid", "sampler: annealing"), "search.sampler"),
    ((("sampler: grid", "sampler: thompson"),
      ("precision: bf16}", "precision: bf16, tokens: 1.0e9}\nobjective: pareto")), "search.sampler"),
    (("model: llama3-8b", "model: llama5"), "model"),
])
def test_bad_spec_exits_2_and_leaves_db_unchanged(tmp_path, edit, field) -> None:
    db_path = tmp_path / "c.db"
    Storage(f"sqlite:///{db_path}").close()
    before = sha(db_path)
    spec = write_spec(tmp_path, "bad")
    text = spec.read_text()
    for old, new in edit if isinstance(edit[0], tuple) else (edit,):
        text = text.replace(old, new)
    spec.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "autotune", "submit", str(spec), "--storage", f"sqlite:///{db_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {field}") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
    assert sha(db_path) == before
    fresh = tmp_path / "new.db"
    proc = subprocess.run([sys.executable, "-m", "autotune", "submit", str(spec), "--storage", f"sqlite:///{fresh}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and not fresh.exists()


def test_submit_profile_is_pinned_for_resume(tmp_path, ray_local, cli) -> None:
    """`submit --profile NAME` stores NAME@V in the spec; `resume` scores with that version, not a newer
    one: with a 1 GiB profile no llama3-8b layout on 8 GPUs fits (its weights alone are >= 2 GiB a rank)."""
    from autotune.store.profiles import ProfileStore

    db = f"sqlite:///{tmp_path / 'p.db'}"
    profiles = ProfileStore(Storage(db))
    profiles.add("small", get_gpu("h100-sxm").model_copy(update={"memory_gib": 1.0}), "h100-sxm", {})
    spec = write_spec(tmp_path, "pinned", sampler="random", n_trials=20)
    code, _, err = cli(["submit", str(spec), "--storage", db, "--quiet", "--profile", "small"])
    assert code == 0, err
    assert Storage(db).study_spec("pinned")["cluster"]["profile"] == "small@1"
    profiles.add("small", get_gpu("h100-sxm"), "h100-sxm", {})  # a newer version that fits everything
    code, _, err = cli(["resume", "pinned", "--storage", db, "--n-trials", "40", "--quiet"])
    assert code == 0, err
    rows = Storage(db).evaluations("pinned")
    assert len({r.trial for r in rows}) == 40
    assert not [r for r in rows if r.status == "ok"]
    assert sum(r.reason_kind == "memory" for r in rows) > 10
