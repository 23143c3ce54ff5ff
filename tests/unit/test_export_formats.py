"""Format-specific mappings of each exporter, and the DeepSpeed config checked by DeepSpeed itself."""

from __future__ import annotations

import json
import tomllib

import pytest

from autotune.config import derive
from autotune.export import get_exporter, launcher_args
from autotune.search.frameworks import unsupported_reason
from autotune.spec import ClusterSpec, ModelSpec, TrainingSpec

MODEL = ModelSpec(name="tiny", layers=8, hidden=1024, heads=16, vocab=32000)
TRAINING = TrainingSpec(seq_len=2048, global_batch=64, precision="bf16")
CLUSTER = ClusterSpec(gpu="h100", gpus_per_node=8, nodes=2)


def _render(fmt: str, model: ModelSpec = MODEL, training: TrainingSpec = TRAINING, **layout) -> str:
    cfg = derive(model, training, CLUSTER.gpus, **layout)
    return get_exporter(fmt).render(model, training, CLUSTER, cfg)


def _lines(text: str) -> list[str]:
    return [line.removesuffix(" \\") for line in text.splitlines()]


def test_megatron_gpt_defaults():
    lines = _lines(_render("megatron", training=TRAINING.model_copy(update={"precision": "fp32"})))
    for absent in ("--use-distributed-optimizer", "--overlap-param-gather", "--bf16", "--fp16", "--swiglu",
                   "--group-query-attention", "--sequence-parallel", "--tp-comm-overlap"):
        assert absent not in lines
    assert {"--normalization LayerNorm", "--position-embedding-type rope", "--overlap-grad-reduce",
            "--untie-embeddings-and-output-weights", "--disable-bias-linear", "--context-parallel-size 1"} <= set(lines)
    assert not any(line.startswith("--recompute") for line in lines)


def test_megatron_model_variants():
    gpt2 = MODEL.model_copy(update={"bias": "qkv", "position_embedding": "learned", "tied_embeddings": True,
                                    "dropout": True, "max_seq_len": 4096})
    lines = _lines(_render("megatron", model=gpt2, training=TRAINING.model_copy(update={"flash_attention": False})))
    assert {"--add-qkv-bias", "--disable-bias-linear", "--position-embedding-type learned_absolute",
            "--max-position-embeddings 4096"} <= set(lines)
    for absent in ("--untie-embeddings-and-output-weights", "--attention-dropout 0", "--use-flash-attn"):
        assert absent not in lines


def test_megatron_zero1_and_recompute():
    lines = _lines(_render("megatron", zero=1, recompute="selective", overlap_grad_reduce=False))
    assert {"--use-distributed-optimizer", "--overlap-param-gather", "--recompute-granularity selective"} <= set(lines)
    assert "--overlap-grad-reduce" not in lines
    assert not any(line.startswith("--num-distributed-optimizer-instances") for line in lines)


@pytest.mark.parametrize(("zero", "dp_shard", "replicate", "shard", "reshard"), [
    (0, None, 16, 1, "default"),
    (2, None, 1, 16, "never"),
    (3, None, 1, 16, "always"),
    (3, 4, 4, 4, "always"),
])
def test_torchtitan_data_parallel(zero, dp_shard, replicate, shard, reshard):
    p = tomllib.loads(_render("torchtitan", zero=zero, dp_shard=dp_shard))["parallelism"]
    assert (p["data_parallel_replicate_degree"], p["data_parallel_shard_degree"]) == (replicate, shard)
    assert p["fsdp_reshard_after_forward"] == reshard
    assert "pipeline_parallel_schedule" not in p


@pytest.mark.parametrize(("layout", "schedule"), [
    (dict(pp=2), "1F1B"), (dict(pp=2, vpp=2), "Interleaved1F1B"), (dict(pp=2, pp_schedule="gpipe"), "GPipe"),
])
def test_torchtitan_pipeline(layout, schedule):
    c = tomllib.loads(_render("torchtitan", micro_batch=2, **layout))
    p = c["parallelism"]
    assert p["pipeline_parallel_schedule"] == schedule
    assert p["pipeline_parallel_layers_per_stage"] == 8 // (2 * layout.get("vpp", 1))
    assert c["training"]["local_batch_size"] == 2 * 64 // (2 * 8)  # micro · GA: one local batch per step


@pytest.mark.parametrize(("precision", "param", "converters"), [
    ("fp32", "float32", None), ("bf16", "bfloat16", None), ("fp8", "bfloat16", ["float8"]),
])
def test_torchtitan_precision(precision, param, converters):
    c = tomllib.loads(_render("torchtitan", training=TRAINING.model_copy(update={"precision": precision})))
    assert c["training"]["mixed_precision_param"] == param
    assert c["model"].get("converters") == converters


@pytest.mark.parametrize("mode", ["none", "selective", "full"])
def test_torchtitan_activation_checkpoint(mode):
    ac = tomllib.loads(_render("torchtitan", recompute=mode))["activation_checkpoint"]
    assert ac["mode"] == mode
    assert ac.get("selective_ac_option") == ("op" if mode == "selective" else None)


@pytest.mark.parametrize(("zero", "keys"), [
    (0, {"stage"}),
    (1, {"stage", "reduce_bucket_size", "allgather_bucket_size", "overlap_comm", "contiguous_gradients"}),
    (3, {"stage", "reduce_bucket_size", "overlap_comm", "contiguous_gradients", "stage3_prefetch_bucket_size",
         "stage3_param_persistence_threshold"}),
])
def test_deepspeed_zero_section(zero, keys):
    assert set(json.loads(_render("deepspeed", zero=zero))["zero_optimization"]) == keys


def test_deepspeed_launcher_args_pipeline():
    cfg = derive(MODEL, TRAINING, CLUSTER.gpus, pp=2, zero=1, recompute="selective")
    lines = _lines(launcher_args(TRAINING, CLUSTER, cfg, config_path="/cfg/ds.json"))
    assert "--no-pipeline-parallel" not in lines
    assert lines[-3:] == ["--zero-stage 1", "--deepspeed", "--deepspeed_config /cfg/ds.json"]


DS_LAYOUTS = [dict(), dict(zero=1, pp=2), dict(zero=2, tp=2, sequence_parallel=True, micro_batch=2),
              dict(zero=3, recompute="full"), dict(tp=4, pp=2, recompute="full", recompute_layers=2)]


class _DataParallel:
    """The one thing DeepSpeedConfig asks an mpu: the data-parallel world size."""

    def __init__(self, dp: int) -> None:
        self.dp = dp

    def get_data_parallel_world_size(self) -> int:
        return self.dp


@pytest.fixture
def deepspeed_config(monkeypatch):
    ds_config = pytest.importorskip(
        "deepspeed.runtime.config",
        reason="deepspeed is not installed (optional: pip install deepspeed; CPU-only works)",
    )
    monkeypatch.setattr(ds_config.dist, "get_rank", lambda *a, **k: 0)  # no process group in a unit test
    return ds_config.DeepSpeedConfig


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("layout", DS_LAYOUTS, ids=str)
def test_deepspeed_accepts_the_config(deepspeed_config, layout, precision):
    training = TRAINING.model_copy(update={"precision": precision})
    cfg = derive(MODEL, training, CLUSTER.gpus, **layout)
    assert unsupported_reason("deepspeed", cfg, training) is None
    parsed = deepspeed_config(json.loads(get_exporter("deepspeed").render(MODEL, training, CLUSTER, cfg)),
                              mpu=_DataParallel(cfg.dp))
    assert (parsed.train_batch_size, parsed.train_micro_batch_size_per_gpu, parsed.gradient_accumulation_steps) \
        == (64, cfg.micro_batch, cfg.grad_accum)
    assert parsed.zero_optimization_stage == cfg.zero
    precisions = (parsed.bfloat16_config.enabled, parsed.float16_config.enabled)
    assert precisions == (precision == "bf16", precision == "fp16")
    if cfg.recompute == "full":
        checkpointing = parsed.activation_checkpointing_config
        assert checkpointing.number_checkpoints == (cfg.recompute_layers or MODEL.layers // cfg.pp)
        assert checkpointing.partition_activations == (cfg.tp > 1)


def test_deepspeed_checks_batch_arithmetic(deepspeed_config):
    cfg = derive(MODEL, TRAINING, CLUSTER.gpus, tp=2)
    text = get_exporter("deepspeed").render(MODEL, TRAINING, CLUSTER, cfg)
    with pytest.raises(AssertionError, match="train_batch_size is not equal"):
        deepspeed_config(json.loads(text), mpu=_DataParallel(CLUSTER.gpus))  # dp is 8, not the 16 GPUs
