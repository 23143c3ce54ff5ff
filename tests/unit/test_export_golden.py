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

from autotune.catalog import get_model
from autotune.config import derive
from autotune.errors import InfeasibleConfig
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


# Mixture of experts: the deepseek-v3 preset (DeepSeek-V3 config.json: 256 routed experts of 2048, top-8, one
# shared expert of 2048, first_k_dense_replace 3, MLA q/kv LoRA ranks 1536/512, qk nope/rope 128/64, v 128)
# on 32 nodes, seq 4096, global batch 1024. pp 8 splits its 61 layers 6, 8 x 6, 7; dp = 256 / 8 = 32;
# ga = 1024 / (32 x 1) = 32.
MOE_MODEL = get_model("deepseek-v3")
MOE_CLUSTER = ClusterSpec(gpu="h100", gpus_per_node=8, nodes=32)
MOE_TRAINING = TrainingSpec(seq_len=4096, global_batch=1024, precision="bf16")
MOE_CASES = {
    "megatron_moe.sh": dict(pp=8, ep=32, zero=1, recompute="selective"),
    "torchtitan_moe.sh": dict(pp=8, ep=32, zero=3),
}


@pytest.mark.parametrize("name", list(MOE_CASES))
def test_moe_render_matches_golden(name):
    cfg = derive(MOE_MODEL, MOE_TRAINING, MOE_CLUSTER.gpus, **MOE_CASES[name])
    exporter = get_exporter(Path(name).stem.removesuffix("_moe"))
    _assert_golden(name, exporter.render(MOE_MODEL, MOE_TRAINING, MOE_CLUSTER, cfg))


def test_moe_megatron_golden_carries_dispatcher_shared_expert_and_mla_flags():
    from tests.contract.launchers import flags, read_script

    f = flags(read_script((GOLDEN / "megatron_moe.sh").read_text(), "pretrain_gpt.py").args)
    assert (f["--num-experts"], f["--moe-router-topk"], f["--moe-ffn-hidden-size"]) == ("256", "8", "2048")
    assert f["--moe-token-dispatcher-type"] == "alltoall" and f["--moe-grouped-gemm"] is True
    assert f["--moe-shared-expert-intermediate-size"] == "2048"  # one shared expert of 2048
    assert f["--moe-layer-freq"] == "([0]*3+[1]*58)"  # 3 dense layers, then 61 - 3 = 58 MoE layers
    assert (f["--expert-model-parallel-size"], f["--expert-tensor-parallel-size"]) == ("32", "1")
    assert f["--multi-latent-attention"] is True
    assert (f["--q-lora-rank"], f["--kv-lora-rank"], f["--qk-head-dim"], f["--qk-pos-emb-head-dim"],
            f["--v-head-dim"]) == ("1536", "512", "128", "64", "128")
    assert (f["--decoder-first-pipeline-num-layers"], f["--decoder-last-pipeline-num-layers"]) == ("6", "7")


def test_moe_megatron_golden_passes_megatrons_parser():
    """The checked-in MoE script through Megatron-LM's parse_args + validate_args (needs MEGATRON_LM_PATH)."""
    from tests.contract import launchers

    script = launchers.read_script((GOLDEN / "megatron_moe.sh").read_text(), "pretrain_gpt.py")
    (got,) = launchers.megatron_lm([(script, MOE_CLUSTER.gpus)])
    assert got == dict(tp=1, pp=8, cp=1, dp=32, micro=1, global_batch=1024, rotary_base=10000, vocab=129280)


def test_moe_torchtitan_golden_passes_its_parser():
    """torchtitan 0.3.0 parses the checked-in script and its ParallelDims validates on 256 ranks."""
    from tests.contract import launchers

    script = launchers.read_script((GOLDEN / "torchtitan_moe.sh").read_text(), "torchtitan.train")
    config, dims = launchers.torchtitan_config(script, MOE_CLUSTER.gpus)
    assert (dims.pp, dims.dp_shard, dims.ep, dims.tp) == (8, 32, 32, 1)
    # 8 layers per stage, the first stage 2 short (6), the last 1 short (7): 6 + 6 x 8 + 7 = 61
    p = config.parallelism
    assert (p.pipeline_parallel_layers_per_stage, p.pipeline_parallel_first_stage_less_layers,
            p.pipeline_parallel_last_stage_less_layers) == (8, 2, 1)


def test_moe_deepspeed_refuses_with_its_reason():
    cfg = derive(MOE_MODEL, MOE_TRAINING, MOE_CLUSTER.gpus, ep=32, zero=1)
    with pytest.raises(InfeasibleConfig, match=r"^deepspeed: experts=256 is not supported \(mixture-of-experts"
                                               r" models are not exported to DeepSpeed: its MoE layer gates top-1/"
                                               r"top-2 only"):
        get_exporter("deepspeed").render(MOE_MODEL, MOE_TRAINING, MOE_CLUSTER, cfg)
