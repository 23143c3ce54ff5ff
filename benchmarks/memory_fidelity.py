"""Analytic memory model against the fake-tensor dry run, layout by layout.

For a grid of layouts over Llama-3-8B, Llama-3-70B, a GPT-3 style model and, cut to 4-6 layers at full width,
Gemma 2 9B, Gemma 3 1B, Qwen3-8B, OLMo 2 7B, Phi-3-mini and Minitron 4B (tp, pp, vpp, dp, ZeRO 0–3,
HSDP, sequence parallelism, recomputation, micro-batch, schedule), compares
:func:`autotune.costmodel.memory.memory_breakdown` with :func:`workers.dryrun.dry_run` and prints the
relative error of the total and of each category, its distribution, and the share of layouts within 5 %.
Totals exclude the GPU profile's fixed ``overhead_gib`` (the same constant on both sides), so the error
is that of the terms the models compute. The GPT-3 model is built without dropout: the reference
transformer has no dropout layers, so the dry run could not see the masks.

Terms the analytic model does not see (the layouts outside 5 %): torch FSDP's ZeRO-2 all-gather/reduce-scatter
buffers (the dry run leaves out FSDP's bf16 shard of its bf16 parameters, a copy no stack keeps beside the
gathered weights: :mod:`workers.dryrun`); and with full
recompute under TP + pipelining the backward peak carries bf16 weight gradients that autograd
materialises before the hook adds them into the fp32 main gradients (Megatron's gradient-accumulation
fusion writes them straight into the main gradient).

MoE rows (``--moe``, :data:`MOE_GRID`): scaled-down mixture-of-experts models with their real expert counts
and widths but 4 layers (Mixtral 8x7B, Qwen3-30B-A3B's 128 experts of 768, DeepSeek-V3's 256 routed + one
shared expert of 2048 with its first layer dense, with standard attention and with DeepSeek-V3's multi-head
latent attention), over ep, etp, edp, ZeRO, tp + sp and pp. The dry run routes balanced and gives the ep rank it
simulates the analytic model's busiest-rank load (:func:`autotune.costmodel.moe.imbalance`); with ep = 1 no
tokens move and its experts see exactly k copies per token. All 19 rows are within 5 % on the total (max 2.7 %);
the terms found by listing the dry run's live tensors at its peak (creating op, shape, module):

- The MoE activation gap (about -3 % on the DeepSeek-MoE and Qwen3-MoE rows): the combine stores 4h per copy of
  the rank's own k copies per token, the reverse all-to-all's output (kept by ``index_copy``'s backward) and
  the copies in token order (kept by the probability-weighted sum), where the analytic model had counted 2h
  per routed copy (imbalance · k): 1.5 · h · k bytes per token and MoE layer more (0.33 GiB a layer on
  dsv3moe-4l ep 64).
- The expert backward's working set (Mixtral-4l ep 8 pp 2, -6.9 % before): the first stage peaks in w2's
  backward of its last MoE layer with 0.736 GiB of ``other``: the arriving gradient and w2's input gradient
  of the rank's 10,240 routed copies, one expert's GEMM result and the stacked weight gradient, 788.5 MB
  (:func:`autotune.costmodel.moe.expert_backward_bytes`, less the combine's copies already freed); -0.7 % now.
- DeepSeek-V3-4l with MLA, ep 64 (-2.7 %): the dry run's fused SDPA on CPU needs V as wide as Q and K, so
  it stores V and the attention output zero-padded from 128 to 192 per head and, for the output
  projection, a compact copy of the 128-wide slice: 2 · a · (64 + 64 + 128) B per token and layer more than
  a kernel with native MLA widths stores (Q, K, V and one output, the analytic 2 · a · (2 · 192 + 2 · 128)),
  1.0 GiB or 2.5 % of the rank.
- Not modelled, on stages that do not decide here: the MoE forward's exchange buffers (the dispatched copies,
  the received ones and the expert output with its reordered copy, alive together while the reference model's
  exchange runs): on dsv3moe-4l ep 32 pp 2 the first stage's dry-run peak (22.7 GiB, in layer 1's forward)
  is 1.0 GiB above the analytic first stage; the last stage (26.9 GiB) decides.

Run: ``.venv/bin/python benchmarks/memory_fidelity.py [--moe] [--limit N] [--models NAME ...] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from autotune.catalog import get_gpu, get_model
from autotune.config import derive
from autotune.costmodel.estimate import MEMORY_KEYS
from autotune.costmodel.layout import layout_scalars
from autotune.costmodel.memory import GIB, memory_breakdown
from autotune.spec import ModelSpec, TrainingSpec
from workers.dryrun import dry_run


def _cut(preset: str, layers: int) -> ModelSpec:
    """A preset at full width with only ``layers`` blocks."""
    return get_model(preset).model_copy(update={"layers": layers})


MODELS: dict[str, tuple[ModelSpec, TrainingSpec]] = {
    "llama3-8b": (get_model("llama3-8b"), TrainingSpec(seq_len=8192, global_batch=256)),
    "llama3-70b": (get_model("llama3-70b"), TrainingSpec(seq_len=8192, global_batch=256)),
    "gpt3-18.4b": (get_model("gpt3-18.4b").model_copy(update={"dropout": False}),
                   TrainingSpec(seq_len=2048, global_batch=256)),
    # Shapes beyond Llama at full width, cut to a few layers (issue 16 item 6).
    "gemma2-9b/4": (_cut("gemma2-9b", 4), TrainingSpec(seq_len=8192, global_batch=64)),
    "gemma3-1b/6": (_cut("gemma3-1b", 6), TrainingSpec(seq_len=8192, global_batch=64)),
    "qwen3-8b/4": (_cut("qwen3-8b", 4), TrainingSpec(seq_len=8192, global_batch=64)),
    "olmo2-7b/4": (_cut("olmo2-7b", 4), TrainingSpec(seq_len=4096, global_batch=64)),
    "phi3-mini/4": (_cut("phi3-mini", 4), TrainingSpec(seq_len=4096, global_batch=64)),
    "minitron-4b/4": (_cut("minitron-4b", 4), TrainingSpec(seq_len=4096, global_batch=64)),
    "llama3-405b": (get_model("llama3-405b"), TrainingSpec(seq_len=8192, global_batch=256)),
}
_MIXTRAL = get_model("mixtral-8x7b")
_MOE_TRAIN = TrainingSpec(seq_len=4096, global_batch=256)
MODELS |= {
    "mixtral-4l": (_MIXTRAL.model_copy(update={"name": "mixtral-4l", "layers": 4}), _MOE_TRAIN),
    "qwen3moe-4l": (_MIXTRAL.model_copy(update={
        "name": "qwen3moe-4l", "layers": 4, "hidden": 2048, "heads": 16, "kv_heads": 4, "ffn_hidden": 6144,
        "vocab": 151936, "experts": 128, "experts_per_token": 8, "expert_ffn_hidden": 768}), _MOE_TRAIN),
    "dsv3moe-4l": (_MIXTRAL.model_copy(update={
        "name": "dsv3moe-4l", "layers": 4, "hidden": 7168, "heads": 56, "kv_heads": 8, "ffn_hidden": 18432,
        "vocab": 129280, "experts": 256, "experts_per_token": 8, "expert_ffn_hidden": 2048, "shared_experts": 1,
        "first_dense_layers": 1}), _MOE_TRAIN),
    "dsv3-4l": (get_model("deepseek-v3").model_copy(update={"name": "dsv3-4l", "layers": 4, "first_dense_layers": 1}),
                _MOE_TRAIN),
}
MOE_GRID: list[tuple[str, int, dict[str, Any]]] = [
    ("mixtral-4l", 8, dict(zero=1)), ("mixtral-4l", 8, dict(ep=8, zero=1)), ("mixtral-4l", 8, dict(ep=2, zero=1)),
    ("mixtral-4l", 8, dict(ep=4, zero=3)), ("mixtral-4l", 8, dict(ep=4, tp=2, zero=1, sequence_parallel=True)),
    ("mixtral-4l", 16, dict(ep=8, pp=2, zero=1)),
    ("qwen3moe-4l", 8, dict(ep=8, zero=1)), ("qwen3moe-4l", 16, dict(ep=16, zero=1)),
    ("qwen3moe-4l", 8, dict(ep=4, tp=2, zero=1, sequence_parallel=True)), ("qwen3moe-4l", 16, dict(ep=8, pp=2)),
    ("qwen3moe-4l", 8, dict(ep=8, zero=1, recompute="full")), ("qwen3moe-4l", 8, dict(ep=4, etp=2, zero=1)),
    ("mixtral-4l", 8, dict(ep=4, etp=2, tp=2, zero=1, sequence_parallel=True)),
    ("dsv3moe-4l", 64, dict(ep=64, zero=1)), ("dsv3moe-4l", 64, dict(ep=32, pp=2, zero=1)),
    ("dsv3moe-4l", 16, dict(ep=16, zero=2)),
    ("dsv3-4l", 64, dict(ep=64, zero=1)), ("dsv3-4l", 64, dict(ep=32, pp=2, zero=1)),
    ("dsv3-4l", 32, dict(ep=16, tp=2, zero=1, sequence_parallel=True)),
]
# (model, gpus, layout keywords); global_batch=16 rows keep the all-forwards GPipe cases short.
GRID: list[tuple[str, int, dict[str, Any]]] = [
    ("llama3-8b", 8, dict(zero=0)), ("llama3-8b", 8, dict(zero=1)), ("llama3-8b", 8, dict(zero=2)),
    ("llama3-8b", 8, dict(zero=3)), ("llama3-8b", 8, dict(zero=1, recompute="full")),
    ("llama3-8b", 8, dict(zero=3, recompute="selective")),
    ("llama3-8b", 8, dict(zero=1, recompute="full", recompute_layers=16)),
    ("llama3-8b", 8, dict(tp=2, zero=1)), ("llama3-8b", 8, dict(tp=2, zero=1, sequence_parallel=True)),
    ("llama3-8b", 8, dict(tp=4, zero=1, sequence_parallel=True)),
    ("llama3-8b", 8, dict(tp=8, zero=0, sequence_parallel=True)),
    ("llama3-8b", 8, dict(tp=4, zero=1, sequence_parallel=True, recompute="selective")),
    ("llama3-8b", 8, dict(tp=2, zero=3, sequence_parallel=True, micro_batch=2)),
    ("llama3-8b", 8, dict(tp=2, zero=2, sequence_parallel=True)),
    ("llama3-8b", 8, dict(tp=2, pp=2, zero=1, sequence_parallel=True)),
    ("llama3-8b", 8, dict(pp=4, zero=1)), ("llama3-8b", 8, dict(pp=2, zero=0, micro_batch=2)),
    ("llama3-8b", 8, dict(tp=2, pp=2, vpp=2, zero=1, sequence_parallel=True)),
    ("llama3-8b", 8, dict(tp=2, pp=4, zero=1, sequence_parallel=True, recompute="full")),
    ("llama3-8b", 16, dict(tp=4, zero=3, dp_shard=2, sequence_parallel=True)),
    ("llama3-8b", 16, dict(zero=3, micro_batch=2, recompute="full")),
    ("llama3-8b", 32, dict(tp=2, pp=2, zero=1, sequence_parallel=True, micro_batch=2)),
    ("llama3-8b", 8, dict(pp=2, zero=1, pp_schedule="gpipe", global_batch=16)),
    ("llama3-70b", 64, dict(tp=8, pp=4, zero=1, sequence_parallel=True)),
    ("llama3-70b", 64, dict(tp=8, pp=8, zero=1, sequence_parallel=True)),
    ("llama3-70b", 64, dict(tp=4, pp=4, zero=1, sequence_parallel=True)),
    ("llama3-70b", 64, dict(tp=8, pp=4, zero=1, sequence_parallel=True, recompute="full")),
    ("llama3-70b", 64, dict(tp=8, pp=4, zero=1, sequence_parallel=True, recompute="selective")),
    ("llama3-70b", 64, dict(tp=8, pp=4, vpp=2, zero=1, sequence_parallel=True)),
    ("llama3-70b", 64, dict(tp=8, pp=2, zero=3, sequence_parallel=True)),
    ("llama3-70b", 64, dict(tp=8, pp=8, zero=0, sequence_parallel=True, recompute="full")),
    ("llama3-70b", 128, dict(tp=8, pp=4, zero=2, sequence_parallel=True, micro_batch=2, recompute="full")),
    ("llama3-70b", 128, dict(tp=8, pp=8, vpp=2, zero=1, sequence_parallel=True)),
    ("llama3-70b", 64, dict(tp=4, pp=8, zero=1, sequence_parallel=True, recompute="full",
                            recompute_layers=5)),
    ("llama3-70b", 64, dict(tp=8, pp=4, zero=1)),
    ("llama3-70b", 64, dict(tp=8, pp=8, zero=1, sequence_parallel=True, pp_schedule="gpipe",
                            global_batch=16)),
    ("gpt3-18.4b", 16, dict(zero=3)), ("gpt3-18.4b", 16, dict(zero=1)),
    ("gpt3-18.4b", 16, dict(tp=2, zero=1, sequence_parallel=True)),
    ("gpt3-18.4b", 16, dict(tp=4, zero=1, sequence_parallel=True)), ("gpt3-18.4b", 16, dict(tp=4, zero=0)),
    ("gpt3-18.4b", 16, dict(tp=8, zero=1, sequence_parallel=True, micro_batch=4)),
    ("gpt3-18.4b", 16, dict(tp=2, zero=2, sequence_parallel=True, micro_batch=2)),
    ("gpt3-18.4b", 16, dict(tp=4, pp=2, zero=1, sequence_parallel=True)),
    ("gpt3-18.4b", 16, dict(tp=2, pp=4, zero=1, sequence_parallel=True)),
    ("gpt3-18.4b", 16, dict(tp=2, pp=4, vpp=2, zero=1, sequence_parallel=True)),
    ("gpt3-18.4b", 16, dict(tp=4, pp=2, zero=1, sequence_parallel=True, recompute="full")),
    ("gpt3-18.4b", 16, dict(tp=4, zero=1, sequence_parallel=True, recompute="selective", micro_batch=2)),
    ("gpt3-18.4b", 32, dict(tp=4, zero=3, dp_shard=4, sequence_parallel=True)),
    ("gpt3-18.4b", 32, dict(tp=8, pp=2, zero=1, sequence_parallel=True, micro_batch=2)),
    ("gpt3-18.4b", 16, dict(pp=4, zero=1, micro_batch=2)),
    ("gpt3-18.4b", 16, dict(tp=2, zero=3, recompute="full", micro_batch=4)),
    ("gpt3-18.4b", 16, dict(tp=4, pp=4, zero=0, sequence_parallel=True, recompute="full",
                            recompute_layers=5)),
    ("gemma2-9b/4", 8, dict(zero=1)), ("gemma2-9b/4", 8, dict(tp=2, zero=1, sequence_parallel=True)),
    ("gemma2-9b/4", 8, dict(tp=4, zero=1, sequence_parallel=True, recompute="selective")),
    ("gemma2-9b/4", 8, dict(tp=2, pp=2, zero=1, sequence_parallel=True)),
    ("gemma3-1b/6", 8, dict(zero=1, micro_batch=2)), ("gemma3-1b/6", 8, dict(zero=3, recompute="full")),
    ("qwen3-8b/4", 8, dict(zero=1)), ("qwen3-8b/4", 8, dict(tp=4, zero=1, sequence_parallel=True)),
    ("qwen3-8b/4", 8, dict(tp=8, zero=0)), ("qwen3-8b/4", 8, dict(pp=2, zero=1, recompute="full")),
    ("olmo2-7b/4", 8, dict(zero=1)), ("olmo2-7b/4", 8, dict(zero=3, micro_batch=2)),
    ("olmo2-7b/4", 8, dict(pp=2, zero=1)),
    ("phi3-mini/4", 8, dict(zero=1)), ("phi3-mini/4", 8, dict(tp=2, zero=1, sequence_parallel=True)),
    ("minitron-4b/4", 8, dict(zero=1)), ("minitron-4b/4", 8, dict(tp=4, zero=1, sequence_parallel=True)),
    ("minitron-4b/4", 8, dict(tp=2, zero=2, sequence_parallel=True, micro_batch=2)),
    # Uneven pipeline stages (autotune.pipeline): 80 layers on pp 6 split 12, 14 x 4, 12; an override with a
    # heavier middle (6, 11 x 6, 8); Llama 3.1 405B's 126 layers as Megatron accounts embedding and loss
    # (pp 8: 15, 16 x 6, 15; pp 16: 7, 8 x 14, 7), interleaved too.
    ("llama3-70b", 48, dict(tp=8, pp=6, zero=1, sequence_parallel=True)),
    ("llama3-70b", 64, dict(tp=8, pp=8, pp_first_layers=6, pp_last_layers=8, zero=1, sequence_parallel=True)),
    ("llama3-405b", 512, dict(tp=8, pp=8, zero=1, sequence_parallel=True, recompute="selective")),
    ("llama3-405b", 512, dict(tp=8, pp=8, vpp=2, zero=1, sequence_parallel=True, recompute="selective")),
    ("llama3-405b", 1024, dict(tp=8, pp=16, zero=1, sequence_parallel=True, recompute="selective")),
]


def compare(name: str, gpus: int, kw: dict[str, Any]) -> dict[str, Any]:
    """Analytic and dry-run bytes per category (fixed overhead left out) of one grid row."""
    model, training = MODELS[name]
    layout = {k: v for k, v in kw.items() if k != "global_batch"}
    if "global_batch" in kw:
        training = training.model_copy(update={"global_batch": kw["global_batch"]})
    cfg = derive(model, training, gpus, **layout)
    gpu = get_gpu("h100-sxm")
    ana = memory_breakdown(model, training, gpu, layout_scalars(cfg))
    analytic = {k: float(ana[k]) * GIB for k in MEMORY_KEYS}
    analytic["other"] -= gpu.overhead_gib * GIB
    analytic["total"] -= gpu.overhead_gib * GIB
    start = time.perf_counter()
    dry = dry_run(model, training, cfg)["memory_bytes"]
    return {"model": name, "gpus": gpus, "layout": kw, "analytic": analytic, "dryrun": dry,
            "wall_s": time.perf_counter() - start}


def rel(row: dict[str, Any], key: str) -> float:
    """(analytic − dry run) / dry-run total: each category's error as a share of the rank's memory."""
    return (row["analytic"][key] - row["dryrun"][key]) / row["dryrun"]["total"]


def line(r: dict[str, Any]) -> str:
    """One row: layout, both totals (GiB), the error per category, dry-run seconds."""
    parts = " ".join(f"{k[:3]} {rel(r, k):+6.1%}" for k in MEMORY_KEYS)
    return (f"{r['model']:13s} {r['gpus']:4d} {json.dumps(r['layout']):60s} dry {r['dryrun']['total'] / GIB:6.1f} "
            f"ana {r['analytic']['total'] / GIB:6.1f} GiB | {parts} | {r['wall_s']:5.1f}s")


def summary(rows: list[dict[str, Any]]) -> None:
    """Print the distribution of relative errors per category."""
    print(f"\n{len(rows)} layouts; error = (analytic - dryrun) / dryrun total")
    for k in MEMORY_KEYS:
        e = np.abs([rel(r, k) for r in rows])
        q = np.percentile(e, [50, 90, 95, 100])
        print(f"{k:12s} |err| p50 {q[0]:6.2%} p90 {q[1]:6.2%} p95 {q[2]:6.2%} max {q[3]:6.2%}"
              f"  within 5%: {np.mean(e <= 0.05):6.1%}")


def main() -> None:
    """Run the grid (or its first ``--limit`` rows) and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="Only the first N layouts.")
    ap.add_argument("--json", default=None, help="Also write the rows to this file.")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=None, help="Only these models' rows.")
    ap.add_argument("--moe", action="store_true", help="The mixture-of-experts grid instead of the dense one.")
    args = ap.parse_args()
    rows = []
    grid = MOE_GRID if args.moe else [r for r in GRID if args.models is None or r[0] in args.models]
    for row in grid[: args.limit]:
        rows.append(compare(*row))
        print(line(rows[-1]), flush=True)
    summary(rows)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
