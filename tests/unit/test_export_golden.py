"""Golden files: the exact text each exporter writes for one fixed layout (tests/golden/).

The files were checked by hand against the frameworks' own parsers (Megatron-LM core_v0.19.0
parse_args + validate_args, Megatron-DeepSpeed's megatron/arguments.py, DeepSpeedConfig, torchtitan 0.3.0
ConfigManager; see tests/contract/launchers.py). A change in output fails with a diff; update a golden
file by hand after checking it.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from autotune.config import derive
from autotune.export import get_exporter, launch_script
from autotune.spec import ClusterSpec, ModelSpec, TrainingSpec

GOLDEN = Path(__file__).parent.parent / "golden"
MODEL = ModelSpec(name="llama3-8b", layers=32, hidden=4096, heads=32, kv_heads=8, ffn_hidden=14336,
                  vocab=128256, activation="swiglu", norm="rmsnorm", max_seq_len=8192, rope_theta=500000)
CLUSTER = ClusterSpec(gpu="h100", gpus_per_node=8, nodes=4)


def _training(precision: str) -> TrainingSpec:
    return TrainingSpec(seq_len=8192, global_batch=512, precision=precision)


CASES = {  # golden file: (precision, layout)
    "megatron.sh": ("fp8", dict(tp=4, pp=2, vpp=2, zero=1, dp_shard=2, recompute="full", recompute_layers=2,
                                  sequence_parallel=True, tp_comm_overlap=True)),
    "deepspeed.json": ("fp16", dict(tp=2, zero=3, micro_batch=2, recompute="full", sequence_parallel=True)),
    "torchtitan.sh": ("bf16", dict(tp=2, pp=2, vpp=2, cp=2, zero=3, dp_shard=2, recompute="selective",
                                     sequence_parallel=True, tp_comm_overlap=True)),
}


def _assert_golden(name: str, text: str) -> None:
    expected = (GOLDEN / name).read_text(encoding="utf-8")
    if text != expected:
        diff = difflib.unified_diff(expected.splitlines(keepends=True), text.splitlines(keepends=True),
                                    fromfile=f"golden/{name}", tofile="rendered")
        pytest.fail(f"{name} changed:\n{''.join(diff)}", pytrace=False)


@pytest.mark.parametrize("name", list(CASES))
def test_render_matches_golden(name):
    precision, layout = CASES[name]
    training = _training(precision)
    cfg = derive(MODEL, training, CLUSTER.gpus, **layout)
    _assert_golden(name, get_exporter(Path(name).stem).render(MODEL, training, CLUSTER, cfg))


def test_deepspeed_launch_script_matches_golden():
    precision, layout = CASES["deepspeed.json"]
    training = _training(precision)
    cfg = derive(MODEL, training, CLUSTER.gpus, **layout)
    _assert_golden("deepspeed_launcher.sh", launch_script(MODEL, training, CLUSTER, cfg))


def test_golden_scripts_pass_the_launchers_parsers():
    """The checked-in scripts themselves go through Megatron-LM's and Megatron-DeepSpeed's parsers."""
    from tests.contract import launchers

    script = launchers.read_script((GOLDEN / "megatron.sh").read_text(), "pretrain_gpt.py")
    (got,) = launchers.megatron_lm([(script, CLUSTER.gpus)])
    assert got == dict(tp=4, pp=2, cp=1, dp=4, micro=1, global_batch=512, rotary_base=500000, vocab=128256)
    script = launchers.read_script((GOLDEN / "deepspeed_launcher.sh").read_text(), "pretrain_gpt.py")
    (got,) = launchers.megatron_deepspeed([(script, CLUSTER.gpus)])
    assert (got["tp"], got["dp"], got["vocab"], got["partition_activations"], got["contiguous"]) == (
        2, 16, 128256, True, True)
