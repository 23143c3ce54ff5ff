"""Uneven pipeline stages: derive's default split, its refusals, the worst stage's memory and the slowest
stage's time by hand, Llama 3.1 405B estimated on pp 8 and 16, and the exported flags read back by
Megatron-LM's and torchtitan's own rules.

Megatron-LM core_v0.19.0 balances 126 layers over pp stages by counting the embedding and the loss as one
layer each (``account_for_embedding_in_pipeline_split`` / ``account_for_loss_in_pipeline_split``,
``megatron/core/transformer/transformer_block.py`` ``get_num_layers_to_build``): (126 + 2) / pp per stage,
one fewer on the first and the last.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from autotune.catalog import get_gpu, get_model
from autotune.config import derive
from autotune.costmodel.estimate import estimate
from autotune.costmodel.layout import layout_scalars
from autotune.costmodel.memory import GIB, memory_breakdown
from autotune.costmodel.time import step_time
from autotune.errors import InfeasibleConfig
from autotune.export import get_exporter
from autotune.pipeline import pipeline_stage_layers, virtual_stage_layers
from autotune.search.frameworks import unsupported_reason
from autotune.search.space import load_space
from autotune.spec import ClusterSpec, GPUSpec, ModelSpec, TrainingSpec
from tests.contract.launchers import flags, read_script

L405 = get_model("llama3-405b")
T405 = TrainingSpec(seq_len=8192, global_batch=2048)
C405 = ClusterSpec(gpu="h100-sxm", nodes=256)  # 2048 H100

# A toy model with round numbers: MHA, GELU f = 4h, RMSNorm, no biases, untied, no dropout.
# Parameters per layer 4h² (attention) + 8h² (MLP) + 2h (norms) = 12·1024² + 2048 = 12,584,960.
TOY = ModelSpec(name="toy", layers=10, hidden=1024, heads=16, vocab=8000, activation="gelu", norm="rmsnorm",
                bias="none", tied_embeddings=False, position_embedding="rope", dropout=False)
TOY_T = TrainingSpec(seq_len=8192, global_batch=8)
# 100 TFLOP/s at a flat 50 % GEMM efficiency, no fixed costs: a layer's forward is FLOPs / 5e13 s.
FLAT = GPUSpec(name="flat", memory_gib=80, peak_tflops={"bf16": 100.0}, hbm_gbps=1e6, intra_node_gbps=1e6,
               inter_node_gbps=1e6, gemm_eff_max=0.5, gemm_k_dim=0, gemm_k_tokens=0, gemm_latency_us=0,
               elementwise_bytes_per_token_hidden=0, layer_overhead_us=0, tp_layer_overhead_us=0)


@pytest.mark.parametrize(("pp", "vpp", "ends", "virtual"), [
    # (126 + 2) / 8 = 16 per stage: 15 on the ends; per virtual stage 16 / vpp, the first one a layer short
    (8, 1, 15, [15, 16, 16, 16, 16, 16, 16, 15]),
    (8, 2, 15, [7] + [8] * 14 + [7]),
    (8, 8, 15, [1] + [2] * 62 + [1]),
    # (126 + 2) / 16 = 8 per stage: 7 on the ends; vpp 8 leaves the first virtual stage only the embedding
    (16, 1, 7, [7] + [8] * 14 + [7]),
    (16, 2, 7, [3] + [4] * 30 + [3]),
    (16, 8, 7, [0] + [1] * 126 + [0]),
])
def test_405b_default_split_counts_embedding_and_loss(pp, vpp, ends, virtual) -> None:
    cfg = derive(L405, T405, 2048, tp=8, pp=pp, vpp=vpp)
    assert (cfg.pp_first_layers, cfg.pp_last_layers) == (ends, ends)
    assert pipeline_stage_layers(126, pp, ends, ends) == [ends] + [ends + 1] * (pp - 2) + [ends]
    assert virtual_stage_layers(126, pp, vpp, ends, ends) == virtual
    assert sum(virtual) == 126


@pytest.mark.parametrize(("layers", "pp", "vpp", "split", "stages"), [
    (32, 4, 1, (None, None), [8, 8, 8, 8]),  # even: nothing set
    (32, 3, 1, (10, None), [10, 11, 11]),  # 33 / 3 = 11: the embedding alone counts as a layer
    # no (126 + e) / 12 is whole: middle m = 22 (even, 6·22 >= 126), ends 126 - 4·22 = 38 = 18 + 20
    (126, 6, 2, (18, 20), [18, 22, 22, 22, 22, 20]),
])
def test_default_split_other_cases(llama8b, layers, pp, vpp, split, stages) -> None:
    model = llama8b.model_copy(update={"layers": layers})
    cfg = derive(model, T405, pp, pp=pp, vpp=vpp)
    assert (cfg.pp_first_layers, cfg.pp_last_layers) == split
    assert pipeline_stage_layers(layers, pp, *split) == stages


def test_given_even_counts_are_stored_as_even(llama8b) -> None:
    cfg = derive(llama8b, T405, 4, pp=4, pp_first_layers=8, pp_last_layers=8)
    assert (cfg.pp_first_layers, cfg.pp_last_layers) == (None, None)


@pytest.mark.parametrize(("layers", "kwargs", "message"), [
    (126, dict(pp=1, pp_first_layers=3), "pp_first_layers=3 needs pp > 1 (pp=1)"),
    (126, dict(pp=8, pp_first_layers=0), "pp_first_layers=0 must be a positive integer"),
    (126, dict(pp=8, pp_first_layers=10),
     "layers=126 - pp_first_layers=10 = 116 layers do not split evenly over the other 7 pipeline stages"),
    (126, dict(pp=8, vpp=2, pp_first_layers=15, pp_last_layers=21),
     "each middle pipeline stage's 15 layers (layers=126 - pp_first_layers=15 - pp_last_layers=21 over 6 stages)"
     " are not divisible by vpp=2"),
    (126, dict(pp=2, pp_first_layers=60, pp_last_layers=60),
     "pp_first_layers + pp_last_layers = 60+60 = 120 must equal layers=126 with pp=2"),
    # 125, 126, 127 are not divisible by 8, and 125 is odd: no vpp-2 chunks of equal middle stages
    (125, dict(pp=4, vpp=2), "layers=125 is not divisible by pp*vpp=4*2=8 and no first/last stage split"),
    (126, dict(pp=8, recompute="full", recompute_layers=17),
     "recompute_layers=17 must be in 1..the largest stage's layers=16"),
])
def test_refusals_carry_the_numbers(llama8b, layers, kwargs, message) -> None:
    model = llama8b.model_copy(update={"layers": layers})
    with pytest.raises(InfeasibleConfig, match="^" + message.replace("*", r"\*").replace("(", r"\(")
                       .replace(")", r"\)").replace("+", r"\+")):
        derive(model, T405, kwargs["pp"], **kwargs)


def test_worst_stage_memory_by_hand() -> None:
    """10 layers on pp 4: (10 + 2) / 4 = 3, so 2, 3, 3, 2. s = 8192, b = 1, m = 8 micro-batches, bf16 with
    fp32 main grads and Adam: 2 + 4 + 12 = 18 bytes/param. Stored activations per layer (flash, tp 1, no
    dropout): per token 4h (QKV + projection inputs) + 4h (Q, K, V) + 16h (fc1 input, GELU input, fc2
    input: 2f + 2·2f... = 4f = 16h) + 8h (norm inputs, residual) = 32h, plus the fp32 log-sum-exp 4a = 64:
    A = 8192·(32·1024 + 64) = 268,959,744 B.

    first: params 2·12,584,960 + 8000·1024 = 33,361,920 -> 600,514,560 B; 1F1B keeps min(p, m) = 4
      micro-batches x 2 layers = 8A = 2,151,677,952 B; total 2,752,192,512 B.
    stage 1: params 3·12,584,960 = 37,754,880 -> 679,587,840 B; min(p - 1, m) = 3 x 3 layers = 9A =
      2,420,637,696 B; total 3,100,225,536 B: the worst.
    last: params 33,361,920 + 1024 -> 600,532,992 B; 2A + fp32 and bf16 logits 6·8192·8000 = 931,135,488 B;
      total 1,531,668,480 B.
    """
    cfg = derive(TOY, TOY_T, 4, pp=4)
    assert (cfg.pp_first_layers, cfg.pp_last_layers, cfg.grad_accum) == (2, 2, 8)
    mem = memory_breakdown(TOY, TOY_T, FLAT, layout_scalars(cfg))
    assert int(mem["worst_stage"]) == 1
    assert float(mem["activations"]) * GIB == pytest.approx(9 * 268_959_744)
    assert float(mem["weights"] + mem["gradients"] + mem["optimizer"]) * GIB == pytest.approx(679_587_840)
    assert float(mem["total"] - mem["other"]) * GIB == pytest.approx(3_100_225_536)


def test_slowest_stage_time_by_hand() -> None:
    """A layer's forward: 8192 tokens x (24h² linear + 4sh/2 causal core) = 8192 x 41,943,040 FLOPs over
    5e13 FLOP/s = 6.8719 ms; the output layer 8192 x 2hV / 5e13 = 2.6844 ms. Stages 2, 3, 3, 2: first
    13.744 ms, middle 20.616 ms, last 13.744 + 2.684 = 16.428 ms, so a middle stage paces the pipeline:
    compute = 3·m·20.616 ms = 494.78 ms, bubble (p - 1)·3·20.616 ms = 185.54 ms."""
    layer = 8192 * (24 * 1024**2 + 2 * 8192 * 1024) / 5e13
    cfg = derive(TOY, TOY_T, 4, pp=4)
    t = step_time(TOY, TOY_T, FLAT, 8, layout_scalars(cfg))
    assert t["slowest_stage"] == 1
    assert t["compute"] == pytest.approx(3 * 8 * 3 * layer)
    assert t["pp_bubble"] == pytest.approx(3 * 3 * 3 * layer)
    # 4 layers on the first stage (the others 2, 2, 2 + the output layer) make it the slowest
    heavy = derive(TOY, TOY_T, 4, pp=4, pp_first_layers=4, pp_last_layers=2)
    t = step_time(TOY, TOY_T, FLAT, 8, layout_scalars(heavy))
    assert t["slowest_stage"] == 0 and t["compute"] == pytest.approx(3 * 8 * 4 * layer)


def test_vectorised_path_matches_the_scalar_one() -> None:
    cfgs = [derive(TOY, TOY_T, 4, pp=4), derive(TOY, TOY_T, 4, pp=4, pp_first_layers=4, pp_last_layers=2),
            derive(TOY, TOY_T, 4, pp=2, pp_first_layers=4), derive(TOY, TOY_T, 4, pp=1)]
    L = {k: np.array([layout_scalars(c)[k] for c in cfgs]) for k in layout_scalars(cfgs[0])}
    many = step_time(TOY, TOY_T, FLAT, 8, L)
    mem = memory_breakdown(TOY, TOY_T, FLAT, L)
    for i, c in enumerate(cfgs):
        one = step_time(TOY, TOY_T, FLAT, 8, layout_scalars(c))
        assert many["step_time_s"][i] == one["step_time_s"] and many["slowest_stage"][i] == one["slowest_stage"]
        assert mem["total"][i] == float(memory_breakdown(TOY, TOY_T, FLAT, layout_scalars(c))["total"])


@pytest.mark.parametrize(("pp", "vpp"), [(8, 1), (8, 2), (8, 8), (16, 1)])
def test_405b_is_estimated_on_tp8(pp, vpp) -> None:
    cfg = derive(L405, T405, 2048, tp=8, pp=pp, vpp=vpp, zero=1, sequence_parallel=True, recompute="full")
    assert unsupported_reason("megatron", cfg, T405, layers=126) is None
    est = estimate(L405, T405, get_gpu("h100-sxm"), C405, cfg)
    assert est["worst_stage"] in (0, 1, pp - 1) and est["slowest_stage"] in (0, 1, pp - 1)
    assert est["fits"] and 0 < est["mfu"] < 1 and est["step_time_s"] > 0


def test_megatron_space_reaches_405b_on_pp8_and_16() -> None:
    space = load_space("megatron").specialise(layers=126, heads=128, seq_len=8192, global_batch=2048,
                                              gpu_counts=[2048])
    dims = {d.name: d.choices for d in space.dimensions}
    assert {"tp=8 pp=8 cp=1", "tp=8 pp=16 cp=1"} <= set(dims["tp_pp_cp"])
    assert {1, 2, 8} <= set(dims["vpp"])


def test_frameworks_refuse_splits_they_cannot_build() -> None:
    cfg = derive(L405, T405, 2048, tp=8, pp=8, vpp=8)
    assert unsupported_reason("deepspeed", derive(L405, T405, 2048, tp=8, pp=8), T405, layers=126).startswith(
        "deepspeed: pp_first_layers=15 pp_last_layers=15 is not supported")
    assert unsupported_reason("torchtitan", cfg, T405, layers=126) is None
    # 14 and 14 on the ends, 98 / 6 = 16.33: not whole; 12 and 18 leave 16 per middle stage, and 12 is not
    # one short of 16, nor are 12 and 18 divisible by vpp = 8.
    odd = derive(L405, T405, 2048, tp=8, pp=8, vpp=8, pp_first_layers=12, pp_last_layers=18)
    assert unsupported_reason("megatron", odd, T405, layers=126) == (
        "megatron: pp_first_layers=12 pp_last_layers=18 with vpp=8 is not supported (stages hold"
        " 12,16,16,16,16,16,16,18 layers: Megatron-LM needs vpp to divide every stage, or the first/last stage one"
        " layer short of the others, --account-for-embedding/loss-in-pipeline-split)")
    assert unsupported_reason("torchtitan", odd, T405, layers=126).startswith("torchtitan: pp_first_layers=12")


def _megatron_parser() -> argparse.ArgumentParser:
    """The pipeline flags of Megatron-LM core_v0.19.0, names and types as ``megatron/training/arguments.py``
    declares them: ``--pipeline-model-parallel-size`` and ``--num-layers`` (int), and in
    ``_add_distributed_args`` ``--decoder-first-pipeline-num-layers``, ``--decoder-last-pipeline-num-layers``,
    ``--num-layers-per-virtual-pipeline-stage``, ``--num-virtual-stages-per-pipeline-rank`` (type=int,
    default None); the TransformerConfig booleans ``account_for_embedding_in_pipeline_split`` and
    ``account_for_loss_in_pipeline_split`` (default False) become store_true flags through
    ``ArgumentGroupFactory`` (``megatron/training/argument_utils.py``)."""
    ap = argparse.ArgumentParser()
    for name in ("--num-layers", "--pipeline-model-parallel-size", "--decoder-first-pipeline-num-layers",
                 "--decoder-last-pipeline-num-layers", "--num-layers-per-virtual-pipeline-stage",
                 "--num-virtual-stages-per-pipeline-rank"):
        ap.add_argument(name, type=int, default=None)
    for name in ("--account-for-embedding-in-pipeline-split", "--account-for-loss-in-pipeline-split"):
        ap.add_argument(name, action="store_true")
    return ap


def _megatron_layers_to_build(a: argparse.Namespace, rank: int, chunk: int) -> int:
    """``get_num_layers_to_build`` of core_v0.19.0 transformer_block.py, transcribed."""
    pp, vpp = a.pipeline_model_parallel_size, a.num_virtual_stages_per_pipeline_rank or 1
    first, last = a.decoder_first_pipeline_num_layers, a.decoder_last_pipeline_num_layers
    if first is not None or last is not None:
        left, stages = a.num_layers - (first or 0) - (last or 0), pp - (first is not None) - (last is not None)
        per_rank = left // stages if stages else 0
        per_rank = first if rank == 0 and first is not None else last if rank == pp - 1 and last is not None \
            else per_rank
    else:
        n = a.num_layers + a.account_for_embedding_in_pipeline_split + a.account_for_loss_in_pipeline_split
        assert n % pp == 0
        per_rank = n // pp
    assert per_rank % vpp == 0
    build = per_rank // vpp
    build -= a.account_for_embedding_in_pipeline_split and chunk == 0 and rank == 0
    build -= a.account_for_loss_in_pipeline_split and chunk == vpp - 1 and rank == pp - 1
    return build


@pytest.mark.parametrize(("pp", "vpp", "kwargs"), [(8, 1, {}), (8, 8, {}), (16, 2, {}),
                                                   (8, 2, dict(pp_first_layers=14, pp_last_layers=16))])
def test_megatron_flags_build_the_split(pp, vpp, kwargs) -> None:
    cfg = derive(L405, T405, 2048, tp=8, pp=pp, vpp=vpp, zero=1, sequence_parallel=True, **kwargs)
    text = get_exporter("megatron").render(L405, T405, C405, cfg)
    args, _ = _megatron_parser().parse_known_args(read_script(text, "pretrain_gpt.py").args)
    accounted = not kwargs  # the default split is Megatron's account-for-embedding/loss one
    assert (args.account_for_embedding_in_pipeline_split, args.account_for_loss_in_pipeline_split) == \
        (accounted, accounted)
    assert args.num_layers_per_virtual_pipeline_stage is None
    assert args.num_virtual_stages_per_pipeline_rank == (vpp if vpp > 1 else None)
    built = [_megatron_layers_to_build(args, i % pp, i // pp) for i in range(pp * vpp)]
    assert built == virtual_stage_layers(126, pp, vpp, cfg.pp_first_layers, cfg.pp_last_layers)
    if kwargs:  # 14 + 6·16 + 16 = 126, all even: explicit counts
        assert (args.decoder_first_pipeline_num_layers, args.decoder_last_pipeline_num_layers) == (14, 16)


@pytest.mark.parametrize(("pp", "vpp"), [(8, 1), (8, 2), (16, 1)])
def test_torchtitan_flags_build_the_split(pp, vpp) -> None:
    """torchtitan's own split (``_generate_llm_fqn_per_model_part``, looped over the ranks) of the exported
    ``layers_per_stage`` and less-layers values; its ConfigManager when llama3_405b's config builds here."""
    pipeline = pytest.importorskip("torchtitan.distributed.pipeline_parallel",
                                   reason="torchtitan is not installed (pip install torchtitan==0.3.0)")
    fp8 = T405.model_copy(update={"precision": "fp8"})
    cfg = derive(L405, fp8, 2048, tp=8, pp=pp, vpp=vpp, zero=3, sequence_parallel=True)
    script = read_script(get_exporter("torchtitan").render(L405, fp8, C405, cfg), "torchtitan.train")
    f = flags(script.args)
    per, first, last = (int(f[f"--parallelism.pipeline_parallel_{k}"]) for k in
                        ("layers_per_stage", "first_stage_less_layers", "last_stage_less_layers"))
    assert (per, first, last) == (16 // vpp if pp == 8 else 8, 1, 1)  # (126 + 1 + 1) / (pp·vpp) per stage
    parts = pipeline._generate_llm_fqn_per_model_part(pp * vpp, 126, first, last)
    built = [sum(name.startswith("layers.") for name in part) for part in parts]
    assert built == virtual_stage_layers(126, pp, vpp, 15 if pp == 8 else 7, 15 if pp == 8 else 7)
    manager = pytest.importorskip("torchtitan.config.manager")
    try:
        config = manager.ConfigManager().parse_args(list(script.args))
    except (ImportError, ValueError) as e:  # llama3_405b's float8 converter needs torchao and an SM89+ GPU
        pytest.skip(f"torchtitan ConfigManager cannot build llama3_405b here: {e}")
    assert config.parallelism.pipeline_parallel_layers_per_stage == per
    assert config.parallelism.pipeline_parallel_first_stage_less_layers == first
