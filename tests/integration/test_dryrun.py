"""The dry-run fidelity: fake-tensor peak memory against a real run and against the analytic model,
attention FLOPs counted, and its evaluator and CLI surfaces."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from autotune.catalog import get_gpu, get_model
from autotune.cli import app
from autotune.config import derive
from autotune.costmodel.estimate import MEMORY_KEYS
from autotune.costmodel.flops import iteration_flops, layer_linear_flops, logit_flops
from autotune.costmodel.layout import layout_scalars
from autotune.costmodel.memory import GIB, memory_breakdown
from autotune.errors import SpecError
from autotune.evaluation import EvalTask
from autotune.spec import TrainingSpec
from workers.dryrun import dry_run
from workers.registry import get_evaluator

TINY = get_model("tiny")
TRAIN = TrainingSpec(seq_len=256, global_batch=4)
LLAMA8B, TRAIN_8B = get_model("llama3-8b"), TrainingSpec(seq_len=8192, global_batch=256)
#: Three rows of benchmarks/memory_fidelity.py's grid on 8 GPUs: no parallelism, TP+SP with ZeRO-3, a
#: 4-stage 1F1B pipeline.
SLICE = [dict(zero=1), dict(tp=2, zero=3, sequence_parallel=True, micro_batch=2), dict(pp=4, zero=1)]


@pytest.mark.parametrize("layout", SLICE, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
def test_analytic_within_5_percent_of_dry_run(layout) -> None:
    # totals without the GPU profile's fixed overhead, the one term both add as the same constant
    cfg = derive(LLAMA8B, TRAIN_8B, 8, **layout)
    gpu = get_gpu("h100-sxm")
    ana = float(memory_breakdown(LLAMA8B, TRAIN_8B, gpu, layout_scalars(cfg))["total"]) * GIB - gpu.overhead_gib * GIB
    dry = dry_run(LLAMA8B, TRAIN_8B, cfg)["memory_bytes"]["total"]
    assert abs(ana - dry) / dry <= 0.05, (ana, dry)


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_fake_peak_matches_a_real_run(recompute) -> None:
    cfg = derive(TINY, TRAIN, 1, recompute=recompute, micro_batch=2)
    fake = dry_run(TINY, TRAIN, cfg)["memory_bytes"]
    real = dry_run(TINY, TRAIN, cfg, fake=False)["memory_bytes"]
    assert abs(fake["total"] - real["total"]) <= 0.10 * real["total"], (fake, real)
    for key in ("weights", "gradients", "optimizer"):
        assert fake[key] == real[key]


def test_attention_flops_are_counted() -> None:
    # seq 1024 at h=128: the attention core (4sh per token per layer) outweighs the linear layers.
    # Flash attention's backward recomputes Q·Kᵀ (2sh per token per layer) on top of the analytic
    # hardware FLOPs, which count the core's forward once and its backward as twice the forward.
    t = TrainingSpec(seq_len=1024, global_batch=1)
    cfg = derive(TINY, t, 1)
    counted = dry_run(TINY, t, cfg)["flops"]
    _, hardware = iteration_flops(TINY, t, layout_scalars(cfg))
    flash_recompute = 1024 * TINY.layers * 2 * 1024 * TINY.hidden
    # The analytic count is causal (2sh per token per layer); torch's SDPA FLOP counter counts the full s x s
    # scores (4sh) whatever the mask: 3 passes x the masked half on top.
    masked_half = 3 * 1024 * TINY.layers * 2 * 1024 * TINY.hidden
    assert counted == pytest.approx(float(hardware) + masked_half + flash_recompute, rel=0.01)
    without_attention = 3 * 1024 * (TINY.layers * layer_linear_flops(TINY) + logit_flops(TINY))
    assert counted > 1.5 * without_attention
    # A tensor-parallel rank does half of every GEMM and attends over half the heads.
    per_rank = dry_run(TINY, t, derive(TINY, t, 2, tp=2))["flops"]
    assert per_rank == pytest.approx(counted / 2, rel=0.01)


def test_evaluator_reports_memory_keys_and_verdict() -> None:
    cfg = derive(TINY, TRAIN, 1)
    task = EvalTask(model=TINY, training=TRAIN, gpu=get_gpu("h100-sxm"), gpus_per_node=8, config=cfg)
    result = get_evaluator("dryrun").evaluate(task)
    assert result.status == "ok" and result.fidelity == "dryrun"
    assert set(result.metrics["memory_gib"]) == set(MEMORY_KEYS)
    assert result.metrics["fits"] and result.metrics["flops"] > 0
    cp = derive(TINY, TRAIN, 2, cp=2)
    unsupported = get_evaluator("dryrun").evaluate(EvalTask(model=TINY, training=TRAIN, gpu=task.gpu,
                                                            gpus_per_node=8, config=cp))
    assert unsupported.status == "unsupported" and "context parallelism" in unsupported.reason


def test_estimate_cli_dryrun_json() -> None:
    args = ["estimate", "--model", "tiny", "--gpu", "h100-sxm", "--gpus", "2", "--seq-len", "256",
            "--global-batch", "4", "--tp", "2", "--sp", "--fidelity", "dryrun", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["fidelity"] == "dryrun" and set(out["memory_gib"]) == set(MEMORY_KEYS)
    analytic = json.loads(CliRunner().invoke(app, args[:-3] + ["--json"]).output)
    assert {"memory_gib", "capacity_gib", "fits", "worst_stage"} <= set(analytic) & set(out)
    bad = CliRunner().invoke(app, args[:-3] + ["--fidelity", "measure"])
    assert isinstance(bad.exception, SpecError) and "fidelity" in str(bad.exception)


def test_ep_rank_holds_its_experts_and_shards_expert_states_over_edp() -> None:
    # tiny-moe (1,474,688 params, 884,736 of them routed experts) on 4 ranks, ep 2 x edp 2, ZeRO-1, bf16:
    # a rank keeps 4 of 8 experts: 1,032,320 params -> 2,064,640 B of bf16 weights and 4,129,280 B of fp32
    # main gradients. Optimizer (fp32 master + 2 Adam moments, 12 B): the 589,952 dense params over dp = 4
    # (1,769,856 B) and its 442,368 expert params over edp = 2 (2,654,208 B) -> 4,424,064 B.
    moe = get_model("tiny-moe")
    mem = dry_run(moe, TRAIN, derive(moe, TRAIN, 4, ep=2, zero=1))["memory_bytes"]
    assert (mem["weights"], mem["gradients"], mem["optimizer"]) == (2_064_640, 4_129_280, 4_424_064)
