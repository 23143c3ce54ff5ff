"""``autotune best`` prints an ``autotune estimate`` command per layout; running it gives the stored figures.

Each study runs the real driver through the CLI with Ray replaced by the in-process pool of
:mod:`tests.integration.studydb` (a few seconds each). The reference is the study's own stored
``step_time_s`` (written by the driver's screen, not by ``estimate``); the command is taken from the
printed text and from the JSON, split with shlex and run through ``autotune.cli.main``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from autotune.catalog import get_gpu, get_model
from autotune.config import derive
from autotune.costmodel import estimate
from autotune.results.reproduce import estimate_command
from autotune.spec import ClusterSpec, TrainingSpec
from autotune.store.profiles import ProfileStore
from autotune.store.storage import Storage
from tests.integration.studydb import STUDY, LocalPool

QUICKSTART = Path(__file__).parents[2] / "search_spaces" / "examples" / "quickstart.yaml"
#: Every layout keeps tensor-parallel overlap on and the data-parallel overlaps off (non-defaults), ZeRO-1
#: so both DP overlaps are in the step time, and a GPipe schedule where pp > 1.
OVERLAP_SPACE = """
name: overlap
framework: any
dimensions:
  tp: {choices: [2, 4]}
  pp: {choices: [1, 2]}
  micro_batch: {choices: [1, 2]}
  recompute: {choices: [selective, full]}
fixed: {zero: 1, tp_comm_overlap: true, overlap_grad_reduce: false, overlap_param_gather: false,
        pp_schedule: gpipe}
"""


@pytest.fixture
def local_pool(monkeypatch) -> None:
    """Drivers evaluate in this process instead of on Ray."""
    monkeypatch.setattr("autotune.study.dispatch.RayPool", LocalPool)


def _run(cli, command: str, extra: tuple[str, ...] = ()) -> dict:
    args = shlex.split(command)
    assert args[:2] == ["autotune", "estimate"], command
    code, out, err = cli([*args[1:], *extra, "--json"])
    assert code == 0, err
    return json.loads(out)


def _best(cli, study: str, db: str) -> tuple[dict, str]:
    code, out, err = cli(["best", study, "--storage", db, "--json"])
    assert code == 0, err
    report = json.loads(out)
    code, text, err = cli(["best", study, "--storage", db])
    assert code == 0, err
    printed = [line.removeprefix("reproduce: ") for line in text.splitlines() if line.startswith("reproduce: ")]
    assert printed == [report["estimate_command"]]
    return report, printed[0]


def _check_all(cli, report: dict, printed: str) -> None:
    """The printed best command and each runner-up's JSON command give the stored step time to 1e-9."""
    got = _run(cli, printed)
    assert got["step_time_s"] == pytest.approx(report["metrics"]["step_time_s"], rel=1e-9, abs=0)
    assert got["config"] == {**{k: v for k, v in report["config"].items() if k != "nodes"},
                             "dp_replicate": got["config"]["dp_replicate"]}
    assert report["runners_up"]
    for r in report["runners_up"]:
        assert _run(cli, r["estimate_command"])["step_time_s"] == pytest.approx(r["metrics"]["step_time_s"],
                                                                                rel=1e-9, abs=0)


def test_quickstart_best_and_runners_up_reproduce(tmp_path, local_pool, cli) -> None:
    db = f"sqlite:///{tmp_path / 'q.db'}"
    code, _, err = cli(["submit", str(QUICKSTART), "--storage", db, "--n-trials", "25", "--sampler", "tpe",
                        "--quiet"])
    assert code == 0, err
    report, printed = _best(cli, "quickstart", db)
    assert printed.startswith("autotune estimate --model llama3-8b --gpu h100-sxm --gpus 8 --gpus-per-node 8 "
                              "--seq-len 8192 --global-batch 512 --precision bf16 ")
    assert " --tokens 1000000000000.0 " in printed
    _check_all(cli, report, printed)


def test_overlap_flags_and_gpipe_reproduce(tmp_path, local_pool, cli) -> None:
    (tmp_path / "overlap.yaml").write_text(OVERLAP_SPACE)
    spec = QUICKSTART.read_text().replace("name: quickstart", "name: overlap").replace(
        "space: megatron", f"space: {tmp_path / 'overlap.yaml'}").replace("global_batch: 512", "global_batch: 64")
    (tmp_path / "spec.yaml").write_text(spec)
    db = f"sqlite:///{tmp_path / 'o.db'}"
    code, _, err = cli(["submit", str(tmp_path / "spec.yaml"), "--storage", db, "--n-trials", "10", "--sampler",
                        "random", "--quiet"])
    assert code == 0, err
    report, printed = _best(cli, "overlap", db)
    cfg = report["config"]
    assert (cfg["tp_comm_overlap"], cfg["overlap_grad_reduce"], cfg["overlap_param_gather"]) == (True, False, False)
    for words in ("--tp-comm-overlap", "--no-overlap-grad-reduce", "--no-overlap-param-gather",
                  "--pp-schedule gpipe", "--zero 1"):
        assert f" {words}" in printed
    _check_all(cli, report, printed)
    # each non-default flag changes the step time, so a command that dropped one would fail the check above
    stored = report["metrics"]["step_time_s"]
    for default in ("--no-tp-comm-overlap", "--overlap-grad-reduce", "--overlap-param-gather"):
        assert abs(_run(cli, printed, (default,))["step_time_s"] - stored) > 1e-6 * stored, default


def test_inline_model_and_node_list_reproduce(study_db, cli) -> None:
    """The ``mini`` study: an inline model whose name is a script tag, nodes [1, 2] (the layout's own)."""
    report, printed = _best(cli, STUDY, study_db)
    assert "--model '{" in printed and "<script>" in printed
    # the spec's first node count is 1 (8 GPUs): 16 GPUs can only come from the layout's own nodes = 2
    assert report["config"]["nodes"] == 2 and " --gpus 16 --gpus-per-node 8 " in printed
    _check_all(cli, report, printed)


def test_profile_study_reproduces_with_its_pinned_version(tmp_path, local_pool, cli) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    profiles = ProfileStore(Storage(db))
    slow = get_gpu("h100-sxm").model_copy(update={"layer_overhead_us": 900.0, "gemm_eff_max": 0.5})
    profiles.add("slowh100", slow, "h100-sxm", {"kind": "study"})
    code, _, err = cli(["submit", str(QUICKSTART), "--storage", db, "--n-trials", "25", "--sampler", "tpe",
                        "--quiet", "--profile", "slowh100"])
    assert code == 0, err
    profiles.add("slowh100", get_gpu("h100-sxm"), "h100-sxm", {})  # a newer version must not be used
    report, printed = _best(cli, "quickstart", db)
    assert f"--profile slowh100@1 --storage {shlex.quote(db)}" in printed and "--gpu " not in printed
    _check_all(cli, report, printed)


def test_layout_global_batch_wins_over_the_spec(cli) -> None:
    """A layout that carries its own ``global_batch`` (a study over several batch sizes) is estimated at it:
    the reference is the cost model called directly at that batch."""
    spec = {"name": "gb", "model": "llama3-8b", "cluster": {"gpu": "h100-sxm", "gpus_per_node": 4, "nodes": 1,
                                                            "price_per_gpu_hour": 2.5},
            "training": {"seq_len": 4096, "global_batch": 512, "samples": 1000, "epochs": 2.5,
                         "optimizer": "sgd", "grad_buffers": "both", "flash_attention": False}}
    layout = {"tp": 2, "pp": 2, "cp": 1, "vpp": 2, "zero": 0, "dp_shard": 1, "micro_batch": 2, "recompute": "full",
              "recompute_layers": 3, "sequence_parallel": True, "pp_schedule": "1f1b", "tp_comm_overlap": True,
              "overlap_grad_reduce": False, "overlap_param_gather": True, "nodes": 2, "global_batch": 96}
    training = TrainingSpec(seq_len=4096, global_batch=96, samples=1000, epochs=2.5, optimizer="sgd",
                            grad_buffers="both", flash_attention=False, stack="megatron-te")  # the megatron space's
    model = get_model("llama3-8b")
    cfg = derive(model, training, 8, **{k: v for k, v in layout.items() if k not in ("nodes", "global_batch")})
    ref = estimate(model, training, get_gpu("h100-sxm"),
                   ClusterSpec(gpu="h100-sxm", gpus_per_node=4, nodes=2, price_per_gpu_hour=2.5), cfg)
    got = _run(cli, estimate_command(spec, layout))
    assert got["config"]["grad_accum"] == 96 // (2 * 2) == ref["config"]["grad_accum"]
    for key in ("step_time_s", "gpu_hours", "cost"):
        assert got[key] == pytest.approx(ref[key], rel=1e-12), key
    # 1000 samples x 2.5 epochs / 96 per step -> 27 steps
    assert got["training_steps"] == 27
