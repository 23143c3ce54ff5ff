"""Mixture-of-experts quantities the memory and time models share: which layers of a pipeline stage are MoE,
the routed-expert parameters a rank holds, the ZeRO group of the expert states and the routed token copies
a rank processes after dispatch.

Megatron-LM's MoE parallel folding (core_v0.19.0, megatron/core/transformer/moe/README.md): on each pipeline
stage the attention and dense parts use tp × cp × dp ranks and the experts use etp × ep × edp over the same
ranks, so a rank holds experts/ep routed experts, each sharded over etp, and the expert states are replicated
(and ZeRO-sharded by the distributed optimizer) over edp = tp·cp·dp / (etp·ep) ranks.

A token-choice router sends each token to k = experts_per_token experts. Balanced, every rank of an ep group
receives as many token copies as its ranks sent: k per local token; with etp > 1 the etp ranks sharing an
expert each process the copies of all of them, at 1/etp of the expert width. Routing is never perfectly
balanced: dropless training (Megatron-LM's default) lets the busiest expert take more; a capacity factor c
caps it at c times the balanced load (GShard, Lepikhin et al. 2021; Switch Transformer, Fedus et al. 2022).
After the experts the reverse all-to-all brings every copy back to the rank of its token, which weights and sums
its own k copies per token (:func:`combine_copies_per_rank`); the experts' backward holds activation and
weight gradients beyond the stored activations (:func:`expert_backward_bytes`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autotune.costmodel.layout import Layout
from autotune.pipeline import stage_layers
from autotune.spec import ModelSpec, TrainingSpec

__all__ = ["DROPLESS_IMBALANCE", "imbalance", "moe_layers_below", "stage_ranges", "stage_layer_counts",
           "busiest_stage_moe_layers",
           "expert_params_per_layer",
           "expert_stage_params", "expert_shard", "moe_tokens_per_rank", "routed_copies_per_rank",
           "combine_copies_per_rank", "expert_backward_bytes"]

DROPLESS_IMBALANCE = 1.25
"""Busiest rank's routed tokens over the balanced share under dropless routing: the capacity factor 1.25 that
Switch Transformer (Fedus et al. 2022, §2.2 and Table 1) trains with: room for the overflow its routing
produced with few tokens dropped (Megatron-LM's --moe-expert-capacity-factor sets the same bound). An
allowance for memory, not a measured load of a given router."""


def imbalance(model: ModelSpec) -> float:
    """Routed-load factor of the busiest rank: the capacity factor when tokens beyond it are dropped, else
    :data:`DROPLESS_IMBALANCE`."""
    return model.capacity_factor if model.capacity_factor is not None else DROPLESS_IMBALANCE


def moe_layers_below(model: ModelSpec, index: Any) -> Any:
    """MoE layers among layers 0 .. index-1 (layers first_dense_layers + j·moe_every are MoE)."""
    if not model.is_moe:
        return np.zeros_like(np.asarray(index, dtype=float))
    x = np.minimum(np.asarray(index, dtype=float), model.layers) - model.first_dense_layers
    return np.where(x > 0, np.floor((x - 1) / model.moe_every) + 1, 0.0)


def stage_ranges(model: ModelSpec, L: Layout) -> tuple[tuple[Any, Any], ...]:
    """(first layer, layer count) of the first pipeline stage, of stage 1 (a middle one) and of the last,
    from :func:`autotune.pipeline.stage_layers` (even or uneven splits; the interleaved schedule's chunks are
    counted as one block of consecutive layers)."""
    n_first, n_mid, n_last = stage_layers(model.layers, L)
    return (0.0, n_first), (n_first, n_mid), (model.layers - n_last, n_last)


def stage_layer_counts(model: ModelSpec, L: Layout) -> tuple[tuple[Any, Any], ...]:
    """(dense, MoE) layers of the first stage, of stage 1 and of the last (see :func:`stage_ranges`)."""
    out = []
    for start, n in stage_ranges(model, L):
        moe = moe_layers_below(model, start + n) - moe_layers_below(model, start)
        out.append((n - moe, moe))
    return tuple(out)


def busiest_stage_moe_layers(model: ModelSpec, L: Layout) -> tuple[Any, Any, Any]:
    """MoE layers of the first stage, of the middle stage that holds the most of them, and of the last: the time
    model's stages (memory scores stage 1, the one with the most micro-batches in flight). The middle one is
    stage p − 2, the last before the last stage: dense layers lead the model (first_dense_layers), so it
    holds at least as many as any other middle stage, within one when moe_every > 1."""
    (_, first), _, (_, last) = stage_layer_counts(model, L)
    n_first, n_mid, n_last = stage_layers(model.layers, L)
    end = model.layers - n_last
    return first, moe_layers_below(model, end) - moe_layers_below(model, end - n_mid), last


def expert_params_per_layer(model: ModelSpec, ep: Any, etp: Any) -> Any:
    """Routed-expert parameters one rank holds of one MoE layer: experts/ep experts, each over etp ranks."""
    return model.experts / ep * model.mlp_params(model.expert_ffn) / etp


def expert_stage_params(model: ModelSpec, L: Layout) -> tuple[Any, Any, Any]:
    """Routed-expert parameters on one rank of the first stage, of stage 1 and of the last."""
    per_layer = expert_params_per_layer(model, L["ep"], L["etp"])
    return tuple(moe * per_layer for _, moe in stage_layer_counts(model, L))


def expert_shard(L: Layout) -> Any:
    """Ranks the expert states are ZeRO-sharded over: the expert data-parallel group edp, cut like the dense
    group when ZeRO shards over dp_shard < dp ranks (HSDP); at least 1."""
    edp = L["tp"] * L["cp"] * L["dp"] / (L["etp"] * L["ep"])
    return np.maximum(1.0, edp * L["dp_shard"] / L["dp"])


def moe_tokens_per_rank(training: TrainingSpec, L: Layout) -> Any:
    """Tokens of one micro-batch entering an MoE layer on a rank: s/cp·b, over tp with sequence parallelism."""
    tokens = training.seq_len / L["cp"] * L["micro_batch"]
    return tokens / np.where(L["sequence_parallel"] > 0, L["tp"], 1)


def routed_copies_per_rank(model: ModelSpec, training: TrainingSpec, L: Layout) -> Any:
    """Token copies the busiest rank's experts process in one MoE layer per micro-batch after dispatch:
    imbalance · k · etp · tokens per rank (each copy at expert width / etp)."""
    return imbalance(model) * model.experts_per_token * L["etp"] * moe_tokens_per_rank(training, L)


def combine_copies_per_rank(model: ModelSpec, training: TrainingSpec, L: Layout) -> Any:
    """Token copies a rank weights and sums back into its own tokens in one MoE layer per micro-batch: k per
    token entering the layer there, after the reverse all-to-all (no imbalance: every rank combines its own)."""
    return model.experts_per_token * moe_tokens_per_rank(training, L)


def expert_backward_bytes(model: ModelSpec, training: TrainingSpec, L: Layout) -> Any:
    """Bytes the backward of one MoE layer's routed experts holds beyond the activations stored for it, at its
    largest moment, on the busiest rank (n = :func:`routed_copies_per_rank` copies of width h, inner width
    f = expert_ffn/etp over the E/ep local experts, the largest expert's slice n/(E/ep) under balanced
    routing, w the weights' bytes), as :class:`workers.moe._GroupedMM`'s backward allocates them:

    * fc2 (w2): the gradient arriving at the expert outputs (2h·n), the input gradient (2f·n), the per-expert
      GEMM result before it is copied into place (2f per copy of one expert's slice), and the stacked weight
      gradient of every local expert (w·(E/ep)·f·h) before the gradient hook adds it into the main gradient;
    * fc1 (w1, the last): the gradient of its output (2f·n), the input gradient (2h·n; gated, w3's as well,
      which autograd sums into: 2·2h·n), one expert's GEMM result (2h per copy of a slice) and the stacked
      weight gradient, while fc2's input and the activation's inputs (6f·n gated, 4f·n otherwise) are freed.

    The larger of the two moments (fc2 when f > h, fc1 for DeepSeek-V3's 2048-wide experts of h 7168), less
    the combine's stored copies (4h per :func:`combine_copies_per_rank`), freed when the backward reaches the
    experts; at least 0. The shared experts' backward runs first (autograd takes the branch created last) and
    leaves only its input gradient; the residual stream's gradient (2h per token, not per copy) is left out.

    Megatron-LM's grouped MLP (core_v0.19.0, megatron/core/transformer/moe/experts.py, TEGroupedMLP over
    Transformer Engine's GroupedLinear) writes each grouped GEMM's input gradient into one tensor and, with
    gradient-accumulation fusion, the weight gradients straight into the fp32 main gradient: the same activation
    gradients without the per-expert slice and the stacked weight gradient."""
    n = routed_copies_per_rank(model, training, L)
    h, f, local = model.hidden, model.expert_ffn / L["etp"], model.experts / L["ep"]
    w = 4.0 if training.precision == "fp32" else 2.0
    weight_grad = w * local * f * h
    slice_rows = n / local
    fc2 = n * (2 * h + 2 * f) + slice_rows * 2 * f + weight_grad
    gated = model.mlp_matrices == 3
    fc1 = n * (2 * f + (4 if gated else 2) * h - (6 if gated else 4) * f) + slice_rows * 2 * h + weight_grad
    return np.maximum(np.maximum(fc2, fc1) - 4 * h * combine_copies_per_rank(model, training, L), 0.0)
