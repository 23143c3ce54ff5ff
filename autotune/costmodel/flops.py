"""FLOPs of one training iteration, counted GEMM by GEMM from the model's shapes.

Narayanan et al. 2021 ("Efficient Large-Scale Language Model Training on GPU Clusters Using
Megatron-LM", §5.1) count, per token and per layer in forward, 2·(in·out) FLOPs for every linear layer
and 4·s·h for the attention core (Q·Kᵀ and softmax·V over all s keys, causal mask ignored). For GPT
(multi-head, f = 4h): QKV 6h², output projection 2h², MLP 16h², i.e. 24h² + 4sh; the output layer adds
2hV per token once. Backward costs twice the forward, so the model FLOPs of an iteration of B sequences
are 3·B·s·(l·(24h² + 4sh) + 2hV) = 72·B·s·l·h²·(1 + s/6h + V/12lh).

Here the same count is taken from ModelSpec: grouped-query attention projects keys and values to
g·d = kv_heads·head_dim columns (QKV = 2h·(h + 2gd)); SwiGLU has three h×f matrices (6hf) instead of
two (4hf). Hardware FLOPs add recomputation: full recompute re-runs each recomputed layer's forward
(not the output layer), which turns the factor 3 into 4 and gives Narayanan's
96·B·s·l·h²·(1 + s/6h + V/16lh); selective recompute re-runs only the attention core (4sh per token per
layer; Korthikanti et al. 2022, §5); full recompute of ``recompute_layers`` of a stage's layers
(l/pp, or the stage's own count when stages are uneven) re-runs that many layers on every stage.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autotune.costmodel.layout import Layout
from autotune.pipeline import stage_layers
from autotune.spec import ModelSpec, TrainingSpec

__all__ = [
    "layer_linear_flops",
    "attention_core_flops",
    "logit_flops",
    "stage_recomputed_fraction",
    "recomputed_fraction",
    "iteration_flops",
]


def layer_linear_flops(model: ModelSpec) -> float:
    """Forward FLOPs per token of one layer's linear layers: 2h(h + 2gd) + 2h² + (6 or 4)·h·f."""
    h, f, kvd = model.hidden, model.ffn, model.n_kv_heads * model.head_dim
    mlp_mats = 3 if model.activation == "swiglu" else 2
    return 2.0 * h * (h + 2 * kvd) + 2.0 * h * h + 2.0 * mlp_mats * h * f


def attention_core_flops(model: ModelSpec, seq_len: int) -> float:
    """Forward FLOPs per token of one layer's attention core, Q·Kᵀ and P·V over s keys: 4·s·h."""
    return 4.0 * seq_len * model.hidden


def logit_flops(model: ModelSpec) -> float:
    """Forward FLOPs per token of the output layer: 2·h·V."""
    return 2.0 * model.hidden * model.vocab


def stage_recomputed_fraction(recompute_layers: Any, stage_layers: Any) -> Any:
    """Fraction of a stage's ``stage_layers`` layers that full recompute re-runs: ``recompute_layers`` of
    them (at most all; 0 = all)."""
    k = recompute_layers
    return np.where(k > 0, np.minimum(k, stage_layers) / np.maximum(stage_layers, 1), 1.0)


def recomputed_fraction(model: ModelSpec, L: Layout) -> Any:
    """Fraction of the model's layers that full recompute re-runs: ``recompute_layers`` per pipeline stage
    (at most the stage's layers; 0 = all), summed over the first, the p − 2 middle and the last stage."""
    k, pp = L["recompute_layers"], L["pp"]
    first, mid, last = stage_layers(model.layers, L)
    ends = np.where(pp > 1, np.minimum(k, first) + np.minimum(k, last), np.minimum(k, first))
    total = ends + np.maximum(pp - 2, 0) * np.minimum(k, mid)
    return np.where(k > 0, total / model.layers, 1.0)


def iteration_flops(model: ModelSpec, training: TrainingSpec, L: Layout) -> tuple[Any, Any]:
    """(model FLOPs, hardware FLOPs) of one iteration on the whole cluster.

    Tokens per iteration are micro_batch · grad_accum · dp · seq_len.
    """
    s = training.seq_len
    linear, core = layer_linear_flops(model), attention_core_flops(model, s)
    tokens = L["micro_batch"] * L["grad_accum"] * L["dp"] * s
    per_token = 3.0 * (model.layers * (linear + core) + logit_flops(model))
    rc = L["recompute"]
    extra = np.where(rc == 2, recomputed_fraction(model, L) * (linear + core), np.where(rc == 1, core, 0.0))
    model_flops = tokens * per_token
    return model_flops, model_flops + tokens * model.layers * extra
