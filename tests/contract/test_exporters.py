"""One contract suite run over every exporter: renders, batch arithmetic, refusals, determinism.

Each format is parsed back (flags, ``json.loads``, ``tomllib.loads``) to check that
micro-batch · gradient accumulation · data-parallel degree = global batch, as the target computes it.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, replace

import pytest

from autotune.config import ParallelConfig, derive
from autotune.errors import InfeasibleConfig, SpecError
from autotune.export import EXPORTERS, Exporter, get_exporter, launcher_args
from autotune.search.frameworks import FRAMEWORKS, unsupported_reason
from autotune.spec import ClusterSpec, ModelSpec, TrainingSpec

MODEL = ModelSpec(name="tiny-llama", layers=8, hidden=1024, heads=16, kv_heads=4, ffn_hidden=2816,
                  vocab=32000, activation="swiglu", norm="rmsnorm")
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
    "torchtitan": (dict(tp=2, zero=2), "sequence_parallel=False"),
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


def _flags(text: str) -> dict[str, str | bool]:
    """Parse ``--flag value`` / ``--switch`` lines joined by backslash continuations."""
    tokens = text.replace("\\\n", " ").split()
    out: dict[str, str | bool] = {}
    for i, tok in enumerate(tokens):
        if tok.startswith("--"):
            nxt = tokens[i + 1] if i + 1 < len(tokens) else "--"
            out[tok] = True if nxt.startswith("--") else nxt
    return out


def _parse_megatron(text: str, cfg: ParallelConfig) -> Parsed:
    f = _flags(text)
    tp, pp, cp = (int(f[k]) for k in ("--tensor-model-parallel-size", "--pipeline-model-parallel-size",
                                       "--context-parallel-size"))
    dp = CLUSTER.gpus // (tp * pp * cp)
    micro, gbs = int(f["--micro-batch-size"]), int(f["--global-batch-size"])
    return Parsed(tp, pp, cp, dp, micro, gbs // (micro * dp), gbs)


def _parse_deepspeed(text: str, cfg: ParallelConfig) -> Parsed:
    c = json.loads(text)
    f = _flags(launcher_args(TRAINING, CLUSTER, cfg))
    tp, pp = int(f["--tensor-model-parallel-size"]), int(f["--pipeline-model-parallel-size"])
    assert int(f["--zero-stage"]) == c["zero_optimization"]["stage"]
    dp = CLUSTER.gpus // (tp * pp)
    return Parsed(tp, pp, 1, dp, c["train_micro_batch_size_per_gpu"], c["gradient_accumulation_steps"],
                  c["train_batch_size"])


def _parse_torchtitan(text: str, cfg: ParallelConfig) -> Parsed:
    c = tomllib.loads(text)
    p, t = c["parallelism"], c["training"]
    dp = p["data_parallel_replicate_degree"] * p["data_parallel_shard_degree"]
    local, gbs = t["local_batch_size"], t["global_batch_size"]
    micro = p.get("pipeline_parallel_microbatch_size", local)
    ga = gbs // (local * dp) * (local // micro)  # torchtitan's accumulation × pipeline micro-batches
    degrees = (p["tensor_parallel_degree"], p["pipeline_parallel_degree"], p["context_parallel_degree"])
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


@pytest.mark.parametrize(("name", "precision"), PRECISIONS)
def test_every_supported_precision_renders(name, precision):
    training = TRAINING.model_copy(update={"precision": precision})
    assert get_exporter(name).render(MODEL, training, CLUSTER, _cfg(tp=2, sequence_parallel=True))


def test_output_is_deterministic(exporter):
    layout = dict(tp=2, sequence_parallel=True, recompute="full")
    first = exporter.render(MODEL, TRAINING, CLUSTER, _cfg(**layout))
    assert type(exporter)().render(MODEL, TRAINING, CLUSTER, _cfg(**layout)) == first
