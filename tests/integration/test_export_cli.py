"""``autotune export``: a stored trial becomes each framework's launch config with consistent batch arithmetic."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

import pytest

from autotune.cli import main
from autotune.config import derive
from autotune.costmodel import estimate
from autotune.search.frameworks import FRAMEWORKS
from autotune.spec import parse_spec
from autotune.store.storage import EvaluationRecord, Storage
from autotune.study.resolve import resolve
from tests.integration.studydb import SPEC, STUDY

GLOBAL_BATCH = SPEC["training"]["global_batch"]
# trial -> (nodes, layout). Trial 0 runs in every framework; trial 1 needs two nodes; trial 2 (ZeRO-2)
# is DeepSpeed/torchtitan only; trial 3 was rejected.
LAYOUTS = {0: (1, {"tp": 2, "sequence_parallel": True, "micro_batch": 2}),
           1: (2, {"tp": 2, "pp": 2, "sequence_parallel": True, "micro_batch": 1, "recompute": "full"}),
           2: (1, {"zero": 2, "micro_batch": 4})}


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    """A study ``exp`` with the hand-picked LAYOUTS (analytic metrics) and one rejected trial."""
    url = f"sqlite:///{tmp_path_factory.mktemp('export') / 'export.db'}"
    store = Storage(url)
    spec = parse_spec(SPEC | {"name": "exp"})
    problem = resolve(spec)
    rows = []
    for trial, (nodes, kwargs) in LAYOUTS.items():
        cluster = spec.cluster.model_copy(update={"nodes": nodes})
        cfg = derive(problem.model, problem.training, cluster.gpus, **kwargs)
        metrics = estimate(problem.model, problem.training, problem.gpu, cluster, cfg) | {"gpus": cluster.gpus}
        assert metrics["fits"]
        rows.append(EvaluationRecord(study="exp", trial=trial, fidelity="analytic", layout=cfg.to_dict() | {
            "nodes": nodes}, metrics=metrics, status="ok", value=metrics["tokens_per_s"]))
    rows.append(EvaluationRecord(study="exp", trial=3, fidelity="analytic", layout={"tp": 3, "nodes": 1},
                                 metrics={}, status="infeasible", reason="tp=3 does not divide heads=16"))
    store.add_study("exp", spec.model_dump(mode="json"), "test", "test")
    store.add_evaluations(rows)
    store.close()
    return url


def _export(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(["export", *argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _flags(text: str) -> dict[str, str]:
    pairs = (line.removesuffix(" \\").split(" ", 1) for line in text.splitlines())
    return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}


def _check_megatron(text: str, nodes: int, layout: dict) -> None:
    f = _flags(text)
    tp, pp, cp = (int(f[k]) for k in ("--tensor-model-parallel-size", "--pipeline-model-parallel-size",
                                      "--context-parallel-size"))
    dp = 8 * nodes // (tp * pp * cp)
    assert int(f["--global-batch-size"]) == GLOBAL_BATCH
    assert int(f["--micro-batch-size"]) * layout["grad_accum"] * dp == GLOBAL_BATCH
    assert dp == layout["dp"]


def _check_deepspeed(text: str, nodes: int, layout: dict) -> None:
    c = json.loads(text)
    assert c["train_batch_size"] == GLOBAL_BATCH
    assert c["train_micro_batch_size_per_gpu"] * c["gradient_accumulation_steps"] * layout["dp"] == GLOBAL_BATCH


def _check_torchtitan(text: str, nodes: int, layout: dict) -> None:
    c = tomllib.loads(text)
    p = c["parallelism"]
    dp = p["data_parallel_replicate_degree"] * p["data_parallel_shard_degree"]
    assert dp * p["tensor_parallel_degree"] * p["pipeline_parallel_degree"] * p["context_parallel_degree"] == 8 * nodes
    local = c["training"]["local_batch_size"]
    assert c["training"]["global_batch_size"] == GLOBAL_BATCH and dp == layout["dp"]
    if p["pipeline_parallel_degree"] > 1:  # one local batch holds every micro-batch of the step
        assert local == p["pipeline_parallel_microbatch_size"] * layout["grad_accum"] and local * dp == GLOBAL_BATCH
    else:  # torchtitan derives the accumulation from the global batch
        assert local * layout["grad_accum"] * dp == GLOBAL_BATCH


CHECKS = {"megatron": _check_megatron, "deepspeed": _check_deepspeed, "torchtitan": _check_torchtitan}


def _layout(db: str, trial: int) -> dict:
    store = Storage(db, create=False)
    (row,) = [r for r in store.evaluations("exp") if r.trial == trial]
    store.close()
    return row.layout


@pytest.mark.parametrize("fmt", FRAMEWORKS)
@pytest.mark.parametrize("trial", [0, 1])
def test_each_format_batch_arithmetic(db, capsys, fmt, trial):
    code, out, err = _export(capsys, "exp", "--format", fmt, "--trial", str(trial), "--storage", db)
    assert code == 0, err
    CHECKS[fmt](out, LAYOUTS[trial][0], _layout(db, trial))
    if fmt == "deepspeed":
        assert _flags(err)["--deepspeed_config"] == "ds_config.json"  # launcher args on stderr
    else:
        assert err == ""


def test_deepspeed_to_files(db, capsys, tmp_path):
    target = tmp_path / "ds_config.json"
    code, out, err = _export(capsys, "exp", "-f", "deepspeed", "--trial", "2", "-o", str(target), "--storage", db)
    assert code == 0 and out == ""
    _check_deepspeed(target.read_text(), 1, _layout(db, 2))
    args = _flags((tmp_path / "ds_config.args").read_text())
    assert args["--deepspeed_config"] == str(target) and args["--zero-stage"] == "2"
    assert err.splitlines() == [f"wrote {target}", f"wrote {tmp_path / 'ds_config.args'}"]


def test_default_is_the_best_trial(study_db, capsys):
    """The driver-written study searched the Megatron space, so its best layout exports to Megatron."""
    store = Storage(study_db, create=False)
    ok = [r for r in store.evaluations(STUDY) if r.status == "ok"]
    best = max(ok, key=lambda r: r.metrics["tokens_per_s"])
    store.close()
    code, out, err = _export(capsys, STUDY, "--format", "megatron", "--storage", study_db)
    assert code == 0, err
    _check_megatron(out, best.layout["nodes"], best.layout)
    assert int(_flags(out)["--tensor-model-parallel-size"]) == best.layout["tp"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--format", "megatron", "--trial", "99"], "trial: study 'exp' has no trial 99"),
    (["--format", "megatron", "--trial", "3"], "trial: trial 3 of 'exp' is infeasible (tp=3 does not divide"),
    (["--format", "megatron", "--trial", "2"], "megatron: zero=2 is not supported"),
    (["--format", "nemo"], "format: unknown 'nemo' (allowed: megatron, deepspeed, torchtitan)"),
])
def test_errors_are_one_line(db, capsys, argv, message):
    code, out, err = _export(capsys, "exp", *argv, "--storage", db)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {message}"), err


def test_unknown_study(db, capsys):
    code, _, err = _export(capsys, "nope", "--format", "megatron", "--storage", db)
    assert code == 2 and re.match(r"error: study: no study named 'nope'", err)


def test_unknown_trial_subprocess(db):
    done = subprocess.run([sys.executable, "-m", "autotune", "export", "exp", "--format", "deepspeed", "--trial",
                           "12345", "--storage", db], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["error: trial: study 'exp' has no trial 12345 (see `autotune trials exp`)"]


def test_help_documents_deepspeed_args(capsys):
    main(["export", "--help"])
    assert ".args" in capsys.readouterr().out
