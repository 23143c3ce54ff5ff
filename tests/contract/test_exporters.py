"""One contract suite run over every exporter: renders, batch arithmetic, refusals, determinism.

Each format is parsed back (the launch script's flags, ``json.loads``) to check that
micro-batch · gradient accumulation · data-parallel degree = global batch, as the target computes it,
and that the launcher starts one process per GPU on every node. Where the launchers' own parsers are
installed, every rendered layout also goes through them (tests/contract/launchers.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import pytest

from autotune.catalog import get_model as get_model_preset
from autotune.config import ParallelConfig, derive
from autotune.errors import InfeasibleConfig, SpecError
from autotune.export import EXPORTERS, Exporter, get_exporter, launch_script
from autotune.search.frameworks import FRAMEWORKS, unsupported_reason
from autotune.spec import ClusterSpec, ModelSpec, TrainingSpec
from tests.contract import launchers
from tests.contract.launchers import flags, read_script

# torchtitan 0.3.0 builds only its registered configs, so the suite runs the Llama 3 8B shape.
MODEL = ModelSpec(name="llama3-8b", layers=32, hidden=4096, heads=32, kv_heads=8, ffn_hidden=14336,
                  vocab=128256, activation="swiglu", norm="rmsnorm", rope_theta=500000, max_seq_len=8192)
TRAINING = TrainingSpec(seq_len=4096, global_batch=64, precision="bf16")
CLUSTER = ClusterSpec(gpu="h100", gpus_per_node=8, nodes=2)

LAYOUTS = {
    "dp-only": dict(micro_batch=2),
    "tp-pp-zero1-full": dict(tp=2, pp=2, zero=1, sequence_parallel=True, recompute="full"),
    "tp-zero2-selective": dict(tp=2, zero=2, sequence_parallel=True, recompute="selective", micro_batch=2),
    "hsdp-cp": dict(cp=2, zero=3, dp_shard=2),
    "tp4-pp2-ddp": dict(tp=4, pp=2, sequence_parallel=True, recompute="full", micro_batch=4),
    "interleaved-cp-zero1": dict(tp=2, pp=2, vpp=2, cp=2, zero=1, sequence_parallel=True,
                                 tp_comm_overlap=True),
    "pp-zero3-interleaved": dict(tp=2, pp=2, vpp=2, zero=3, sequence_parallel=True, recompute="selective"),
    "gpipe-zero2": dict(pp=4, zero=2, pp_schedule="gpipe", micro_batch=2),
}

UNSUPPORTED = {  # one layout each target cannot express, and the field its message names
    "megatron": (dict(zero=3), "zero=3"),
    "deepspeed": (dict(cp=2), "cp=2"),
    "torchtitan": (dict(zero=1), "zero=1"),
}


@dataclass(frozen=True)
class Parsed:
    """What a target reads back from a rendered config."""

    tp: int
    pp: int
    cp: int
    dp: int
    micro: int
    grad_accum: int
    global_batch: int


def _launched(script) -> int:
    """Processes the launcher starts: nodes × processes per node."""
    f = flags(script.launcher)
    if script.launcher[0] == "torchrun":
        return int(f["--nnodes"]) * int(f["--nproc-per-node"])
    assert script.launcher[0] == "deepspeed"
    return int(f["--num_nodes"]) * int(f["--num_gpus"])


def _parse_megatron(text: str, cfg: ParallelConfig) -> Parsed:
    script = read_script(text, "pretrain_gpt.py")
    f = flags(script.args)
    tp, pp, cp = (int(f[k]) for k in ("--tensor-model-parallel-size", "--pipeline-model-parallel-size",
                                       "--context-parallel-size"))
    dp = _launched(script) // (tp * pp * cp)
    micro, gbs = int(f["--micro-batch-size"]), int(f["--global-batch-size"])
    return Parsed(tp, pp, cp, dp, micro, gbs // (micro * dp), gbs)


def _parse_deepspeed(text: str, cfg: ParallelConfig) -> Parsed:
    c = json.loads(text)
    script = read_script(launch_script(MODEL, TRAINING, CLUSTER, cfg), "pretrain_gpt.py")
    f = flags(script.args)
    tp, pp = int(f["--tensor-model-parallel-size"]), int(f["--pipeline-model-parallel-size"])
    assert int(f["--zero-stage"]) == c["zero_optimization"]["stage"]
    dp = _launched(script) // (tp * pp)
    return Parsed(tp, pp, 1, dp, c["train_micro_batch_size_per_gpu"], c["gradient_accumulation_steps"],
                  c["train_batch_size"])


def _parse_torchtitan(text: str, cfg: ParallelConfig) -> Parsed:
    script = read_script(text, "torchtitan.train")
    f = {k.removeprefix("--"): v for k, v in flags(script.args).items()}
    dp = int(f["parallelism.data_parallel_replicate_degree"]) * int(f["parallelism.data_parallel_shard_degree"])
    local, gbs = int(f["training.local_batch_size"]), int(f["training.global_batch_size"])
    micro = int(f.get("parallelism.pipeline_parallel_microbatch_size", local))
    ga = gbs // (local * dp) * (local // micro)  # torchtitan's accumulation × pipeline micro-batches
    degrees = tuple(int(f[f"parallelism.{k}_parallel_degree"]) for k in ("tensor", "pipeline", "context"))
    assert dp * degrees[0] * degrees[1] * degrees[2] == _launched(script)
    return Parsed(*degrees, dp, micro, ga, gbs)


PARSERS = {"megatron": _parse_megatron, "deepspeed": _parse_deepspeed, "torchtitan": _parse_torchtitan}


def _cfg(**kwargs) -> ParallelConfig:
    return derive(MODEL, TRAINING, CLUSTER.gpus, **kwargs)


@pytest.fixture(params=list(EXPORTERS), ids=list(EXPORTERS))
def exporter(request) -> Exporter:
    return EXPORTERS[request.param]


def test_registry_covers_the_framework_table():
    assert tuple(EXPORTERS) == FRAMEWORKS
    assert PARSERS.keys() == EXPORTERS.keys()


def test_protocol(exporter):
    assert isinstance(exporter, Exporter)
    assert get_exporter(exporter.name) is exporter
    assert exporter.suffix.startswith(".")


def test_unknown_format():
    allowed = r"\(allowed: megatron, deepspeed, torchtitan\)$"
    with pytest.raises(SpecError, match=r"^format: unknown 'x' " + allowed):
        get_exporter("x")


def _split(cases):
    """(target, case) pairs, split by whether the framework table lets the target run them."""
    ok, refused = [], []
    for name in EXPORTERS:
        for case, (cfg, training) in cases.items():
            (ok if unsupported_reason(name, cfg, training) is None else refused).append((name, case))
    return ok, refused


RUNS, REFUSED = _split({n: (_cfg(**kw), TRAINING) for n, kw in LAYOUTS.items()})
PRECISIONS, _ = _split({p: (_cfg(tp=2, sequence_parallel=True), TRAINING.model_copy(update={"precision": p}))
                        for p in ("fp32", "bf16", "fp16", "fp8")})


@pytest.mark.parametrize(("name", "layout"), RUNS)
def test_render_round_trips_the_layout(name, layout):
    cfg = _cfg(**LAYOUTS[layout])
    text = get_exporter(name).render(MODEL, TRAINING, CLUSTER, cfg)
    assert text.endswith("\n")
    got = PARSERS[name](text, cfg)
    assert got.micro * got.grad_accum * got.dp == got.global_batch == TRAINING.global_batch
    want = Parsed(cfg.tp, cfg.pp, cfg.cp, cfg.dp, cfg.micro_batch, cfg.grad_accum, TRAINING.global_batch)
    assert got == want


def test_renders_at_least_three_layouts(exporter):
    assert sum(name == exporter.name for name, _ in RUNS) >= 3


@pytest.mark.parametrize(("name", "layout"), REFUSED)
def test_unsupported_layouts_raise_the_table_message(name, layout):
    cfg = _cfg(**LAYOUTS[layout])
    with pytest.raises(InfeasibleConfig) as info:
        get_exporter(name).render(MODEL, TRAINING, CLUSTER, cfg)
    assert str(info.value) == unsupported_reason(name, cfg, TRAINING)


def test_unsupported_layout_names_target_and_field(exporter):
    kwargs, field = UNSUPPORTED[exporter.name]
    with pytest.raises(InfeasibleConfig, match=f"^{exporter.name}: .*{field}"):
        exporter.render(MODEL, TRAINING, CLUSTER, _cfg(**kwargs))


def test_layout_must_fill_the_cluster(exporter):
    cfg = derive(MODEL, TRAINING, 8)
    match = f"^{exporter.name}: layout .*=8 does not match the cluster's 16 GPUs$"
    with pytest.raises(InfeasibleConfig, match=match):
        exporter.render(MODEL, TRAINING, CLUSTER, cfg)


def test_layout_must_meet_the_global_batch(exporter):
    cfg = replace(_cfg(), grad_accum=3)
    with pytest.raises(InfeasibleConfig, match=f"^{exporter.name}: .*does not equal global_batch=64"):
        exporter.render(MODEL, TRAINING, CLUSTER, cfg)


# torchtitan's fp8 is a model config of its own (llama3_405b builds float8 linears; 8B never does).
MODEL_REFUSED = {("torchtitan", "fp8"): "torchtitan: precision=fp8 with model 'llama3-8b' is not supported"}


@pytest.mark.parametrize(("name", "precision"), PRECISIONS)
def test_every_supported_precision_renders(name, precision):
    training = TRAINING.model_copy(update={"precision": precision})
    cfg = _cfg(tp=2, sequence_parallel=True)
    if (name, precision) in MODEL_REFUSED:
        with pytest.raises(InfeasibleConfig, match="^" + MODEL_REFUSED[name, precision]):
            get_exporter(name).render(MODEL, training, CLUSTER, cfg)
    else:
        assert get_exporter(name).render(MODEL, training, CLUSTER, cfg)


def test_output_is_deterministic(exporter):
    layout = dict(tp=2, sequence_parallel=True, recompute="full")
    first = exporter.render(MODEL, TRAINING, CLUSTER, _cfg(**layout))
    assert type(exporter)().render(MODEL, TRAINING, CLUSTER, _cfg(**layout)) == first


def _runs(name: str) -> list[tuple[str, ParallelConfig]]:
    return [(layout, _cfg(**LAYOUTS[layout])) for target, layout in RUNS if target == name]


def _want(cfg: ParallelConfig) -> dict:
    return dict(tp=cfg.tp, pp=cfg.pp, dp=cfg.dp, micro=cfg.micro_batch, global_batch=TRAINING.global_batch)


def test_megatron_lm_parser_accepts_every_layout():
    runs = _runs("megatron")
    scripts = [read_script(get_exporter("megatron").render(MODEL, TRAINING, CLUSTER, cfg), "pretrain_gpt.py")
               for _, cfg in runs]
    got = launchers.megatron_lm([(s, CLUSTER.gpus) for s in scripts])
    for (layout, cfg), parsed in zip(runs, got, strict=True):
        assert "error" not in parsed, (layout, parsed)
        assert parsed == _want(cfg) | dict(cp=cfg.cp, rotary_base=500000, vocab=MODEL.vocab), layout


def test_megatron_deepspeed_parser_accepts_every_layout():
    runs = _runs("deepspeed")
    scripts = [read_script(launch_script(MODEL, TRAINING, CLUSTER, cfg, "/cfg/ds.json"), "pretrain_gpt.py")
               for _, cfg in runs]
    got = launchers.megatron_deepspeed([(s, CLUSTER.gpus) for s in scripts])
    for (layout, cfg), parsed in zip(runs, got, strict=True):
        assert "error" not in parsed, (layout, parsed)
        checkpointing = json.loads(get_exporter("deepspeed").render(MODEL, TRAINING, CLUSTER, cfg)).get(
            "activation_checkpointing", {})
        assert parsed == _want(cfg) | dict(
            layers=MODEL.layers, kv_heads=MODEL.n_kv_heads, rope_theta=500000, vocab=MODEL.vocab,
            partition_activations=checkpointing.get("partition_activations", False),
            contiguous=checkpointing.get("contiguous_memory_optimization", False),
            deepspeed_config="/cfg/ds.json"), layout


@pytest.mark.parametrize("layout", [layout for name, layout in RUNS if name == "torchtitan"])
def test_torchtitan_parser_accepts_every_layout(layout):
    cfg = _cfg(**LAYOUTS[layout])
    script = read_script(get_exporter("torchtitan").render(MODEL, TRAINING, CLUSTER, cfg), "torchtitan.train")
    config, dims = launchers.torchtitan_config(script, CLUSTER.gpus)
    assert (dims.tp, dims.pp, dims.cp, dims.dp_replicate * dims.dp_shard) == (cfg.tp, cfg.pp, cfg.cp, cfg.dp)
    t, par = config.training, config.parallelism
    assert t.global_batch_size == TRAINING.global_batch and t.seq_len == TRAINING.seq_len
    micro = par.pipeline_parallel_microbatch_size if cfg.pp > 1 else t.local_batch_size
    assert micro == cfg.micro_batch and t.local_batch_size * cfg.dp * (1 if cfg.pp > 1 else cfg.grad_accum) == 64
    assert par.enable_sequence_parallel == cfg.sequence_parallel
    assert config.compile.enable_async_tensor_parallel == cfg.tp_comm_overlap
    assert t.disable_cuda_graphs == (cfg.pp > 1)
    ac = {"none": "NoneType", "selective": "Config", "full": "Config"}[cfg.recompute]
    assert type(config.activation_checkpoint).__name__ == ac
    if cfg.recompute != "none":
        kind = "SelectiveAC" if cfg.recompute == "selective" else "FullAC"
        assert type(config.activation_checkpoint).__qualname__ == f"{kind}.Config"


# Mixture of experts: Megatron-LM takes any expert layout of the parallel folding; torchtitan 0.3.0 only its
# registered DeepSeek-V3 671B shape; DeepSpeed refuses MoE models by name.
MOE = ModelSpec(name="moe-8x", layers=16, hidden=2048, heads=16, kv_heads=4, ffn_hidden=8192, vocab=32000,
                activation="swiglu", norm="rmsnorm", experts=16, experts_per_token=2, expert_ffn_hidden=1024,
                shared_experts=2, first_dense_layers=1, moe_every=3)
MOE_LAYOUTS = {
    "ep16": dict(ep=16, zero=1),
    "tp2-sp-ep4-etp2": dict(tp=2, sequence_parallel=True, ep=4, etp=2),
    "pp2-ep8": dict(pp=2, ep=8, zero=1),
    "tp2-sp-etp2": dict(tp=2, sequence_parallel=True, etp=2),
}


def _moe_cfg(model: ModelSpec = MOE, **kwargs) -> ParallelConfig:
    return derive(model, TRAINING, CLUSTER.gpus, **kwargs)


@pytest.mark.parametrize("layout", list(MOE_LAYOUTS))
def test_megatron_moe_flags(layout):
    cfg = _moe_cfg(**MOE_LAYOUTS[layout])
    f = flags(read_script(get_exporter("megatron").render(MOE, TRAINING, CLUSTER, cfg), "pretrain_gpt.py").args)
    # layers 1, 4, 7, 10, 13 are MoE (first_dense_layers 1, every 3rd): one 0/1 entry per layer.
    assert f["--moe-layer-freq"] == "[0,1,0,0,1,0,0,1,0,0,1,0,0,1,0,0]"
    assert (f["--num-experts"], f["--moe-router-topk"], f["--moe-ffn-hidden-size"]) == ("16", "2", "1024")
    assert f["--moe-shared-expert-intermediate-size"] == "2048"  # 2 shared experts of 1024
    assert (f["--expert-model-parallel-size"], f["--expert-tensor-parallel-size"]) == (str(cfg.ep), str(cfg.etp))
    assert f["--moe-grouped-gemm"] is True and f["--moe-token-dispatcher-type"] == "alltoall"
    assert "--multi-latent-attention" not in f and "--moe-expert-capacity-factor" not in f


def test_megatron_mla_flags():
    m = get_model_preset("deepseek-v3")
    cfg = _moe_cfg(m, ep=16, zero=1)
    f = flags(read_script(get_exporter("megatron").render(m, TRAINING, CLUSTER, cfg), "pretrain_gpt.py").args)
    assert f["--multi-latent-attention"] is True
    assert (f["--q-lora-rank"], f["--kv-lora-rank"], f["--qk-head-dim"], f["--qk-pos-emb-head-dim"],
            f["--v-head-dim"]) == ("1536", "512", "128", "64", "128")
    assert f["--moe-layer-freq"] == "([0]*3+[1]*58)" and f["--ffn-hidden-size"] == "18432"
    assert "--group-query-attention" not in f


def test_megatron_dense_scripts_carry_no_moe_flags():
    text = get_exporter("megatron").render(MODEL, TRAINING, CLUSTER, _cfg(tp=2, sequence_parallel=True))
    assert "expert" not in text and "moe" not in text


def test_megatron_refuses_moe_tp_without_sp():
    with pytest.raises(InfeasibleConfig, match=r"^megatron: tp=2 with sequence_parallel=False is not supported for"
                                               r" the mixture-of-experts model 'moe-8x'"):
        get_exporter("megatron").render(MOE, TRAINING, CLUSTER, _moe_cfg(tp=2))


def test_deepspeed_refuses_moe_by_name():
    with pytest.raises(InfeasibleConfig, match=r"^deepspeed: experts=16 is not supported"):
        get_exporter("deepspeed").render(MOE, TRAINING, CLUSTER, _moe_cfg(ep=4))


def test_torchtitan_deepseek_v3_expert_parallel_degree():
    m = get_model_preset("deepseek-v3")
    cfg = _moe_cfg(m, zero=3, ep=16)
    script = read_script(get_exporter("torchtitan").render(m, TRAINING, CLUSTER, cfg), "torchtitan.train")
    f = flags(script.args)
    assert (f["--module"], f["--config"], f["--parallelism.expert_parallel_degree"]) == (
        "deepseek_v3", "deepseek_v3_671b", "16")
    config, dims = launchers.torchtitan_config(script, CLUSTER.gpus)
    assert (config.parallelism.expert_parallel_degree, dims.ep, dims.dp_shard) == (16, 16, 16)


def test_torchtitan_refuses_other_moe_shapes_and_untied_etp():
    with pytest.raises(InfeasibleConfig, match=r"^torchtitan: model 'moe-8x' is not a registered torchtitan"):
        get_exporter("torchtitan").render(MOE, TRAINING, CLUSTER, _moe_cfg(zero=3, ep=4))
    m = get_model_preset("deepseek-v3")
    with pytest.raises(InfeasibleConfig, match=r"^torchtitan: etp=1 with ep=1 and tp=2 is not supported"):
        get_exporter("torchtitan").render(m, TRAINING, CLUSTER, _moe_cfg(m, zero=3, tp=2, sequence_parallel=True))


def test_megatron_lm_parser_accepts_moe_layouts():
    m = get_model_preset("deepseek-v3")
    runs = [(MOE, _moe_cfg(**kw)) for kw in MOE_LAYOUTS.values()] + [(m, _moe_cfg(m, ep=16, zero=1))]
    scripts = [read_script(get_exporter("megatron").render(model, TRAINING, CLUSTER, cfg), "pretrain_gpt.py")
               for model, cfg in runs]
    got = launchers.megatron_lm([(s, CLUSTER.gpus) for s in scripts])
    for (_, cfg), parsed in zip(runs, got, strict=True):
        assert "error" not in parsed, parsed
        assert parsed["tp"] == cfg.tp and parsed["dp"] == cfg.dp
