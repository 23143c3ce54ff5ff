"""``autotune export``: a stored trial becomes each framework's launch config with consistent batch arithmetic."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from autotune.cli import main
from autotune.config import derive
from autotune.costmodel import estimate
from autotune.search.frameworks import FRAMEWORKS
from autotune.spec import parse_spec
from autotune.store.storage import EvaluationRecord, Storage
from autotune.study.resolve import resolve
from tests.contract.launchers import flags, read_script
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


def _flags(text: str) -> dict[str, str | bool]:
    return flags(read_script(text, "pretrain_gpt.py").args)


def _check_megatron(text: str, nodes: int, layout: dict) -> None:
    script = read_script(text, "pretrain_gpt.py")
    f = flags(script.args)
    assert flags(script.launcher)["--nnodes"] == str(nodes) and flags(script.launcher)["--nproc-per-node"] == "8"
    tp, pp, cp = (int(f[k]) for k in ("--tensor-model-parallel-size", "--pipeline-model-parallel-size",
                                      "--context-parallel-size"))
    dp = 8 * nodes // (tp * pp * cp)
    assert int(f["--global-batch-size"]) == GLOBAL_BATCH
    assert int(f["--micro-batch-size"]) * layout["grad_accum"] * dp == GLOBAL_BATCH
    assert dp == layout["dp"]
    assert script.env == ({"CUDA_DEVICE_MAX_CONNECTIONS": "1"} if tp > 1 else {})


def _check_deepspeed(text: str, nodes: int, layout: dict) -> None:
    c = json.loads(text)
    assert c["train_batch_size"] == GLOBAL_BATCH
    assert c["train_micro_batch_size_per_gpu"] * c["gradient_accumulation_steps"] * layout["dp"] == GLOBAL_BATCH


CHECKS = {"megatron": _check_megatron, "deepspeed": _check_deepspeed}


def _layout(db: str, trial: int) -> dict:
    store = Storage(db, create=False)
    (row,) = [r for r in store.evaluations("exp") if r.trial == trial]
    store.close()
    return row.layout


@pytest.mark.parametrize("fmt", list(CHECKS))
@pytest.mark.parametrize("trial", [0, 1])
def test_each_format_batch_arithmetic(db, capsys, fmt, trial):
    code, out, err = _export(capsys, "exp", "--format", fmt, "--trial", str(trial), "--storage", db)
    assert code == 0, err
    CHECKS[fmt](out, LAYOUTS[trial][0], _layout(db, trial))
    if fmt == "deepspeed":
        assert _flags(err)["--deepspeed_config"] == "ds_config.json"  # launch script on stderr
    else:
        assert err == ""


def test_frameworks_are_all_exercised():
    """torchtitan 0.3.0 builds only its registered configs: this study's 8-layer model is refused by name
    (tests/contract runs every format over the Llama 3 8B shape)."""
    assert set(CHECKS) | {"torchtitan"} == set(FRAMEWORKS)


def test_deepspeed_to_files(db, capsys, tmp_path):
    target, script = tmp_path / "ds_config.json", tmp_path / "ds_config.sh"
    argv = ["exp", "-f", "deepspeed", "--trial", "2", "-o", str(target), "--storage", db]
    code, out, err = _export(capsys, *argv)
    assert code == 0 and out == ""
    _check_deepspeed(target.read_text(), 1, _layout(db, 2))
    args = _flags(script.read_text())
    assert args["--deepspeed_config"] == str(target) and args["--zero-stage"] == "2"
    assert err.splitlines() == [f"wrote {target}", f"wrote {script} (launch script for {target})"]
    script.write_text("mine\n")  # an existing launch script is kept unless --force
    code, _, err = _export(capsys, *argv)
    assert code == 2 and err == f"error: launcher: {script} exists; pass --force to overwrite it or --launcher PATH\n"
    assert script.read_text() == "mine\n"
    assert _export(capsys, *argv, "--force")[0] == 0 and script.read_text().startswith("#!/usr/bin/env bash")
    other = tmp_path / "run.sh"
    code, _, err = _export(capsys, *argv, "--launcher", str(other))
    assert code == 0 and _flags(other.read_text())["--deepspeed_config"] == str(target)


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
    (["--format", "torchtitan", "--trial", "0"], "torchtitan: model "),
    (["--format", "megatron", "--launcher", "x.sh"], "launcher: only the deepspeed format writes a separate"),
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


def test_help_documents_the_launch_script(capsys):
    main(["export", "--help"])
    out = capsys.readouterr().out
    assert "--launcher" in out and "--force" in out and "suffix .sh" in out
