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
layer; Korthikanti et al. 2022, §5); full recompute of ``recompute_layers`` of a stage's l/pp layers
re-runs that fraction of the layers.

Mixture of experts: an MoE layer counts the FLOPs a token actually runs — the router (2·h·E), its k routed
experts and the shared experts (2·(3 or 2)·h·f_e each) — not the idle experts, so model FLOPs and MFU are
active-parameter FLOPs (the convention of the DeepSeek-V3 and Megatron-LM MoE throughput reports:
6·N_active·tokens plus attention). :func:`layer_linear_flops` is the mean over the model's dense and MoE
layers, so per-layer compute time is the active layer's on average. Multi-head latent attention (DeepSeek-V2)
counts its down/up projections (2 FLOPs per weight) and a core of 2·s·a·(qk + v): Q·Kᵀ over nope + rope dims,
P·V over v dims.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autotune.costmodel.layout import Layout
from autotune.spec import ModelSpec, TrainingSpec

__all__ = [
    "layer_linear_flops",
    "attention_core_flops",
    "logit_flops",
    "recomputed_fraction",
    "iteration_flops",
]


def _mlp_flops(model: ModelSpec, width: int) -> float:
    return 2.0 * (3 if model.activation == "swiglu" else 2) * model.hidden * width


def layer_linear_flops(model: ModelSpec) -> float:
    """Forward FLOPs per token of one layer's linear layers: 2h(h + 2gd) + 2h² + (6 or 4)·h·f; for an MoE
    model the mean over its layers of the active ones (router + k routed + shared experts in MoE layers)."""
    h, f, kvd = model.hidden, model.ffn, model.n_kv_heads * model.head_dim
    if model.is_mla:
        latent_norms = (model.q_lora_rank or 0) + (model.kv_lora_rank or 0)
        attn = 2.0 * (model.mla_params() - latent_norms * (2 if model.norm == "layernorm" else 1))
    else:
        attn = 2.0 * h * (h + 2 * kvd) + 2.0 * h * h
    dense = attn + _mlp_flops(model, f)
    if not model.is_moe:
        return dense
    moe = (attn + 2.0 * h * model.experts + model.experts_per_token * _mlp_flops(model, model.expert_ffn)
           + model.shared_experts * _mlp_flops(model, model.shared_expert_ffn))
    return ((model.layers - model.moe_layers) * dense + model.moe_layers * moe) / model.layers


def attention_core_flops(model: ModelSpec, seq_len: int) -> float:
    """Forward FLOPs per token of one layer's attention core, Q·Kᵀ and P·V over s keys: 4·s·h
    (MLA: 2·s·a·(qk_nope + qk_rope + v))."""
    if model.is_mla:
        qk = (model.qk_nope_head_dim or 0) + (model.qk_rope_head_dim or 0)
        return 2.0 * seq_len * model.heads * (qk + (model.v_head_dim or 0))
    return 4.0 * seq_len * model.hidden


def logit_flops(model: ModelSpec) -> float:
    """Forward FLOPs per token of the output layer: 2·h·V."""
    return 2.0 * model.hidden * model.vocab


def recomputed_fraction(model: ModelSpec, L: Layout) -> Any:
    """Fraction of a stage's layers that full recompute re-runs (recompute_layers 0 = all)."""
    per_stage = model.layers / L["pp"]
    return np.where(L["recompute_layers"] > 0, L["recompute_layers"] / per_stage, 1.0)


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
