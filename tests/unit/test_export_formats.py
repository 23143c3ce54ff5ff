"""Format-specific mappings of each exporter, and the DeepSpeed config checked by DeepSpeed itself."""

from __future__ import annotations

import json

import pytest

from autotune.catalog import from_hf_config, get_model
from autotune.config import derive
from autotune.errors import InfeasibleConfig
from autotune.export import get_exporter, launch_script
from autotune.export.launch import vocab_divisor
from autotune.export.torchtitan import CONFIGS, find_config
from autotune.search.frameworks import unsupported_reason
from autotune.spec import ClusterSpec, ModelSpec, TrainingSpec
from tests.contract.launchers import flags, read_script

MODEL = ModelSpec(name="tiny", layers=8, hidden=1024, heads=16, vocab=32000)
TRAINING = TrainingSpec(seq_len=2048, global_batch=64, precision="bf16")
CLUSTER = ClusterSpec(gpu="h100", gpus_per_node=8, nodes=2)


def _render(fmt: str, model: ModelSpec = MODEL, training: TrainingSpec = TRAINING, **layout) -> str:
    cfg = derive(model, training, CLUSTER.gpus, **layout)
    return get_exporter(fmt).render(model, training, CLUSTER, cfg)


def _lines(text: str) -> list[str]:
    return [line.removesuffix(" \\").strip() for line in text.splitlines()]


LLAMA3 = get_model("llama3-8b")


def _titan(model: ModelSpec = LLAMA3, training: TrainingSpec = TRAINING, **layout) -> dict:
    """The torchtitan flags (without ``--``) of a rendered script, plus the AC subcommand."""
    text = _render("torchtitan", model=model, training=training, **layout)
    return {k.removeprefix("--"): v for k, v in flags(read_script(text, "torchtitan.train").args).items()}


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
    f = _titan(zero=zero, dp_shard=dp_shard)
    assert (f["parallelism.data_parallel_replicate_degree"], f["parallelism.data_parallel_shard_degree"]) == (
        str(replicate), str(shard))
    assert f["parallelism.fsdp_reshard_after_forward"] == reshard
    assert "parallelism.pipeline_parallel_schedule" not in f and "training.disable_cuda_graphs" not in f


@pytest.mark.parametrize(("layout", "schedule"), [
    (dict(pp=2), "1F1B"), (dict(pp=2, vpp=2), "Interleaved1F1B"), (dict(pp=2, pp_schedule="gpipe"), "GPipe"),
])
def test_torchtitan_pipeline(layout, schedule):
    f = _titan(micro_batch=2, **layout)
    assert f["parallelism.pipeline_parallel_schedule"] == schedule
    assert f["parallelism.pipeline_parallel_layers_per_stage"] == str(32 // (2 * layout.get("vpp", 1)))
    assert f["training.local_batch_size"] == str(2 * 64 // (2 * 8))  # micro · GA: one local batch per step
    assert f["training.disable_cuda_graphs"] is True  # CUDA graphs do not support pipelining


@pytest.mark.parametrize(("precision", "param"), [("fp32", "float32"), ("bf16", "bfloat16")])
def test_torchtitan_precision(precision, param):
    f = _titan(training=TRAINING.model_copy(update={"precision": precision}))
    assert f["training.mixed_precision_param"] == param and f["config"] == "llama3_8b"


@pytest.mark.parametrize("mode", ["none", "selective", "full"])
def test_torchtitan_activation_checkpoint_is_the_last_subcommand(mode):
    text = _render("torchtitan", model=LLAMA3, recompute=mode)
    assert text.endswith(f'"$@" \\\n  activation-checkpoint:{mode}\n')


def test_torchtitan_async_tp_needs_compile():
    f = _titan(tp=2, sequence_parallel=True, tp_comm_overlap=True)
    assert f["compile.enable"] is True and f["compile.enable_async_tensor_parallel"] is True
    f = _titan(tp=2)
    assert "compile.no-enable" in f and "compile.no-enable-async-tensor-parallel" in f
    assert "parallelism.no-enable-sequence-parallel" in f


def test_torchtitan_picks_the_config_by_shape_and_precision():
    assert _titan(model=get_model("llama3-70b"), tp=8, sequence_parallel=True)["config"] == "llama3_70b"
    fp8 = TRAINING.model_copy(update={"precision": "fp8"})
    assert _titan(model=get_model("llama3-405b"), training=fp8, tp=8, pp=2)["config"] == "llama3_405b"
    with pytest.raises(InfeasibleConfig, match=r"^torchtitan: precision=bf16 with model 'llama3-405b' is not su"):
        _render("torchtitan", model=get_model("llama3-405b"), tp=8, pp=2)
    with pytest.raises(InfeasibleConfig, match=r"^torchtitan: model 'tiny' is not a registered torchtitan 0.3.0"):
        _render("torchtitan")
    theta = LLAMA3.model_copy(update={"rope_theta": 10000.0})  # same shape, another RoPE base
    with pytest.raises(InfeasibleConfig, match="allowed: llama3_8b: layers=32 hidden=4096"):
        _render("torchtitan", model=theta)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.module == "llama3"], ids=lambda c: c.function)
def test_torchtitan_config_table_matches_torchtitan(config):
    """The shapes of CONFIGS against the model torchtitan's own config function builds."""
    registry = pytest.importorskip("torchtitan.models.llama3.config_registry",
                                   reason="torchtitan is not installed (pip install torchtitan==0.3.0)")
    try:
        spec = getattr(registry, config.function)().model_spec
    except (ImportError, ValueError) as e:  # llama3_405b's float8 converter needs torchao and an SM89+ GPU
        pytest.skip(f"{config.function}: {e}")
    model = spec.model
    block = model.layers[0]
    rope = block.attention.rope
    shape = (len(model.layers), model.dim, block.attention.n_heads, block.attention.n_kv_heads,
             block.feed_forward.w1.out_features, model.vocab_size, float(rope.theta))
    assert shape == config.shape()


def test_torchtitan_deepseek_v3_config_matches_torchtitan():
    """deepseek_v3_671b's entry against the config torchtitan 0.3.0 builds (dense layers 0-2, MoE from 3)."""
    registry = pytest.importorskip("torchtitan.models.deepseek_v3.config_registry",
                                   reason="torchtitan is not installed (pip install torchtitan==0.3.0)")
    (config,) = [c for c in CONFIGS if c.function == "deepseek_v3_671b"]
    model = registry.deepseek_v3_671b().model_spec.model
    first_moe = next(i for i, b in enumerate(model.layers) if b.moe is not None)
    attn, moe = model.layers[first_moe].attention, model.layers[first_moe].moe
    shared = moe.shared_experts.w1.out_features
    shape = (len(model.layers), model.dim, attn.n_heads, attn.n_heads, model.layers[0].feed_forward.w1.out_features,
             model.vocab_size, float(attn.rope.theta), moe.num_experts, moe.router.top_k,
             moe.routed_experts.inner_experts.hidden_dim, 1, shared, first_moe, 1, None, attn.q_lora_rank,
             attn.kv_lora_rank, attn.qk_rope_head_dim, attn.qk_nope_head_dim, attn.v_head_dim)
    assert shape == config.shape() and not model.mtp_layers
    assert find_config(get_model("deepseek-v3"), TrainingSpec(seq_len=4096, global_batch=64)) == config


def test_megatron_script_sets_the_environment_and_launcher():
    text = _render("megatron", model=LLAMA3, tp=2, sequence_parallel=True)
    script = read_script(text, "pretrain_gpt.py")
    assert script.env == {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    assert script.launcher[:5] == ["torchrun", "--nnodes", "2", "--nproc-per-node", "8"]
    f = flags(script.args)
    assert (f["--rotary-base"], f["--vocab-size"], f["--tokenizer-type"]) == ("500000", "128256", "NullTokenizer")
    assert read_script(_render("megatron", pp=2), "pretrain_gpt.py").env == {}  # no tp, no cp


@pytest.mark.parametrize(("vocab", "tp", "divisor"), [
    (128256, 1, 128), (128256, 4, 64), (128256, 8, 32), (32000, 8, 32), (50257, 2, 1), (152064, 8, 64)])
def test_vocab_divisor_leaves_the_vocabulary_unpadded(vocab, tp, divisor):
    # 128256 = 2**8 * 501 and 32000 = 2**8 * 125: divisor * tp may hold at most 2**8; 152064 = 2**9 * 297;
    # 50257 is odd, so tp=2 must pad.
    assert vocab_divisor(vocab, tp) == divisor


def test_rope_theta_flows_from_config_json_to_the_flags():
    hf = {"architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 4, "hidden_size": 1024, "num_attention_heads": 16,
          "num_key_value_heads": 4, "intermediate_size": 2816, "vocab_size": 151936, "rope_theta": 1000000.0}
    model = from_hf_config(hf, name="qwen-like")
    assert model.rope_theta == 1e6 and get_model("qwen2.5-7b").rope_theta == 1e6
    assert "--rotary-base 1000000" in _lines(_render("megatron", model=model))
    assert from_hf_config({k: v for k, v in hf.items() if k != "rope_theta"}).rope_theta == 10000.0


def test_deepspeed_refuses_qkv_bias():
    with pytest.raises(InfeasibleConfig, match=r"^deepspeed: bias=qkv is not supported"):
        _render("deepspeed", model=MODEL.model_copy(update={"bias": "qkv"}))


@pytest.mark.parametrize(("zero", "keys"), [
    (0, {"stage"}),
    (1, {"stage", "reduce_bucket_size", "allgather_bucket_size", "overlap_comm", "contiguous_gradients"}),
    (3, {"stage", "reduce_bucket_size", "overlap_comm", "contiguous_gradients", "stage3_prefetch_bucket_size",
         "stage3_param_persistence_threshold"}),
])
def test_deepspeed_zero_section(zero, keys):
    assert set(json.loads(_render("deepspeed", zero=zero))["zero_optimization"]) == keys


def test_deepspeed_launch_script_pipeline():
    cfg = derive(MODEL, TRAINING, CLUSTER.gpus, pp=2, zero=1, recompute="selective")
    script = read_script(launch_script(MODEL, TRAINING, CLUSTER, cfg, config_path="/cfg/ds.json"), "pretrain_gpt.py")
    assert "--no-pipeline-parallel" not in script.args
    assert script.args[-5:] == ["--zero-stage", "1", "--deepspeed", "--deepspeed_config", "/cfg/ds.json"]
    assert script.launcher[:5] == ["deepspeed", "--num_nodes", "2", "--num_gpus", "8"]


@pytest.mark.parametrize(("tp", "partition"), [(1, False), (2, True)])
def test_deepspeed_partitioned_activations_are_on_the_command_line(tp, partition):
    cfg = derive(MODEL, TRAINING, CLUSTER.gpus, tp=tp, recompute="full")
    config = json.loads(get_exporter("deepspeed").render(MODEL, TRAINING, CLUSTER, cfg))
    checkpointing = config["activation_checkpointing"]
    assert checkpointing["partition_activations"] is checkpointing["contiguous_memory_optimization"] is partition
    args = read_script(launch_script(MODEL, TRAINING, CLUSTER, cfg), "pretrain_gpt.py").args
    assert ("--partition-activations" in args, "--contigious-checkpointing" in args) == (partition, partition)


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


class _Mesh(_DataParallel):
    """What ``deepspeed.checkpointing.configure`` also asks: rank 0 of a tp-wide model-parallel group."""

    def __init__(self, dp: int, tp: int) -> None:
        super().__init__(dp)
        self.tp = tp

    def get_model_parallel_rank(self) -> int:
        return 0

    def get_model_parallel_world_size(self) -> int:
        return self.tp

    def get_model_parallel_group(self) -> None:
        return None


@pytest.mark.parametrize("tp", [1, 2])
def test_deepspeed_checkpointing_accepts_the_config_alone(deepspeed_config, tmp_path, tp):
    """``deepspeed.checkpointing.configure`` from the JSON alone: contiguous checkpointing only with partitions."""
    from deepspeed import checkpointing

    cfg = derive(MODEL, TRAINING, CLUSTER.gpus, tp=tp, recompute="full")
    path = tmp_path / "ds.json"
    path.write_text(get_exporter("deepspeed").render(MODEL, TRAINING, CLUSTER, cfg))
    checkpointing.configure(_Mesh(cfg.dp, tp), deepspeed_config=str(path))
    assert checkpointing.PARTITION_ACTIVATIONS is checkpointing.CONTIGUOUS_CHECKPOINTING is (tp > 1)
