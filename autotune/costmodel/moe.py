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
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autotune.costmodel.layout import Layout
from autotune.spec import ModelSpec, TrainingSpec

__all__ = ["DROPLESS_IMBALANCE", "imbalance", "moe_layers_below", "stage_layer_counts", "expert_params_per_layer",
           "expert_stage_params", "expert_shard", "moe_tokens_per_rank", "routed_copies_per_rank"]

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


def stage_layer_counts(model: ModelSpec, pp: Any) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """((dense, MoE) layers of the first stage, (dense, MoE) layers of the last), stages of layers/pp
    consecutive layers (the interleaved schedule's chunks are counted as one block)."""
    n = model.layers / np.asarray(pp, dtype=float)
    moe_first = moe_layers_below(model, n)
    moe_last = model.moe_layers - moe_layers_below(model, model.layers - n)
    return (n - moe_first, moe_first), (n - moe_last, moe_last)


def expert_params_per_layer(model: ModelSpec, ep: Any, etp: Any) -> Any:
    """Routed-expert parameters one rank holds of one MoE layer: experts/ep experts, each over etp ranks."""
    return model.experts / ep * model.mlp_params(model.expert_ffn) / etp


def expert_stage_params(model: ModelSpec, L: Layout) -> tuple[Any, Any]:
    """Routed-expert parameters on one rank of the first and of the last pipeline stage."""
    (_, moe_first), (_, moe_last) = stage_layer_counts(model, L["pp"])
    per_layer = expert_params_per_layer(model, L["ep"], L["etp"])
    return moe_first * per_layer, moe_last * per_layer


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
