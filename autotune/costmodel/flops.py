"""FLOPs of one training iteration, counted GEMM by GEMM from the model's shapes.

Narayanan et al. 2021 ("Efficient Large-Scale Language Model Training on GPU Clusters Using
Megatron-LM", §5.1) count, per token and per layer in forward, 2·(in·out) FLOPs for every linear layer
and 4·s·h for the attention core (Q·Kᵀ and softmax·V over all s keys, causal mask ignored). For GPT
(multi-head, f = 4h): QKV 6h², output projection 2h², MLP 16h², i.e. 24h² + 4sh; the output layer adds
2hV per token once. Backward costs twice the forward, so the model FLOPs of an iteration of B sequences
are 3·B·s·(l·(24h² + 4sh) + 2hV) = 72·B·s·l·h²·(1 + s/6h + V/12lh).

MFU definition used everywhere here: model FLOPs = 3 × forward FLOPs, the forward counting 2·in·out for
every weight matrix (output layer included, embedding lookup excluded) and the causal attention core,
2·s·h per token per layer (Q·Kᵀ and P·V over the s/2 keys a causal token sees on average: PaLM's
6N + 12·L·h·s per token, halved for the causal mask — the work a causal model needs). Recompute is in the
hardware FLOPs (HFU), never in the model FLOPs. So a layout's MFU is at most the largest efficiency any of
its kernels reaches, whatever the sequence length. (Narayanan's Table 1 counts the full s² core, 4sh; the
reference loader converts its figures to step times with the paper's own formula.)

Here the same count is taken from ModelSpec: queries project to heads·d columns and keys and values to
kv_heads·d (QKV = 2h·(q_dim + 2·kv_dim), the output projection 2·q_dim·h; q_dim = h unless head_dim is
decoupled, as in Gemma, Qwen3 and Minitron); the gated SwiGLU and GeGLU have three h×f matrices (6hf),
GELU and squared ReLU two (4hf). The core scores heads·d channels against the keys a layer attends to,
4·keys·heads·d per token: s keys in a full layer, min(s, w) in a sliding-window one, averaged over the
layer pattern (``ModelSpec.attention_keys``); the model FLOPs take the causal keys, ``attention_keys(s, causal=True)``:
s/2 in a full layer, the band w − w²/2s in a windowed one.
Hardware FLOPs add recomputation: full recompute re-runs each recomputed layer's forward
(not the output layer), which turns the factor 3 into 4 and gives Narayanan's
96·B·s·l·h²·(1 + s/6h + V/16lh); selective recompute re-runs only the attention core (4sh per token per
layer; Korthikanti et al. 2022, §5); full recompute of ``recompute_layers`` of a stage's layers
(l/pp, or the stage's own count when stages are uneven) re-runs that many layers on every stage.

Mixture of experts: an MoE layer counts the FLOPs a token actually runs — the router (2·h·E), its k routed
experts and the shared experts (2·(3 or 2)·h·f_e each) — not the idle experts, so model FLOPs and MFU are
active-parameter FLOPs (the convention of the DeepSeek-V3 and Megatron-LM MoE throughput reports:
6·N_active·tokens plus attention). :func:`layer_linear_flops` is the mean over the model's dense and MoE
layers (the model-FLOPs count); the time model times the two kinds of layer separately
(:func:`block_linear_flops` and :mod:`autotune.costmodel.moe_time`). Multi-head latent attention (DeepSeek-V2)
counts its down/up projections (2 FLOPs per weight) and a core of 2·s·a·(qk + v): Q·Kᵀ over nope + rope dims,
P·V over v dims.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autotune.costmodel.layout import Layout
from autotune.pipeline import stage_layers
from autotune.spec import ModelSpec, TrainingSpec

__all__ = [
    "layer_linear_flops",
    "block_linear_flops",
    "attention_core_flops",
    "causal_core_flops",
    "logit_flops",
    "stage_recomputed_fraction",
    "recomputed_fraction",
    "iteration_flops",
]


def _mlp_flops(model: ModelSpec, width: int) -> float:
    return 2.0 * model.mlp_matrices * model.hidden * width


def _attention_linear_flops(model: ModelSpec) -> float:
    h = model.hidden
    if model.is_mla:
        latent_norms = (model.q_lora_rank or 0) + (model.kv_lora_rank or 0)
        return 2.0 * (model.mla_params() - latent_norms * (2 if model.norm == "layernorm" else 1))
    return 2.0 * h * (model.q_dim + 2 * model.kv_dim) + 2.0 * model.q_dim * h


def block_linear_flops(model: ModelSpec, mlp_width: int | None = None) -> float:
    """Forward FLOPs per token of one block's tensor-parallel linear layers: attention's (see
    :func:`layer_linear_flops`) plus a dense MLP of inner width ``mlp_width`` (default ffn_hidden: a dense
    layer; an MoE layer's shared experts, 0 without them)."""
    return _attention_linear_flops(model) + _mlp_flops(model, model.ffn if mlp_width is None else mlp_width)


def layer_linear_flops(model: ModelSpec) -> float:
    """Forward FLOPs per token of one layer's linear layers: 2h(q_dim + 2·kv_dim) + 2·q_dim·h + (6 or 4)·h·f
    (MLA: twice its projections' weights); for an MoE model the mean over its layers of the active ones
    (router + k routed + shared experts in MoE layers)."""
    h = model.hidden
    attn = _attention_linear_flops(model)
    dense = block_linear_flops(model)
    if not model.is_moe:
        return dense
    moe = (attn + 2.0 * h * model.experts + model.experts_per_token * _mlp_flops(model, model.expert_ffn)
           + model.shared_experts * _mlp_flops(model, model.shared_expert_ffn))
    return ((model.layers - model.moe_layers) * dense + model.moe_layers * moe) / model.layers


def attention_core_flops(model: ModelSpec, seq_len: int) -> float:
    """Forward FLOPs per token of one layer's attention core, Q·Kᵀ and P·V: 4·keys·heads·d (4·s·h for a
    full-attention model with d = h/heads; MLA: 2·keys·a·(qk_nope + qk_rope + v)), keys averaged over the
    layers' windows, every key of a full layer counted (Narayanan's convention)."""
    keys = model.attention_keys(seq_len)
    if model.is_mla:
        qk = (model.qk_nope_head_dim or 0) + (model.qk_rope_head_dim or 0)
        return 2.0 * keys * model.heads * (qk + (model.v_head_dim or 0))
    return 4.0 * keys * model.q_dim


def causal_core_flops(model: ModelSpec, seq_len: int) -> float:
    """The attention core's FLOPs per token a causal model needs: the keys inside the causal mask
    (``attention_keys(s, causal=True)``: s/2 in a full layer), the count model FLOPs and MFU use."""
    return attention_core_flops(model, seq_len) * model.attention_keys(seq_len, causal=True) / model.attention_keys(
        seq_len)


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


def iteration_flops(model: ModelSpec, training: TrainingSpec, L: Layout, selective: str = "attention_core"
                    ) -> tuple[Any, Any]:
    """(model FLOPs, hardware FLOPs) of one iteration on the whole cluster.

    Tokens per iteration are micro_batch · grad_accum · dp · seq_len. ``selective`` is the stack's
    ``selective_recompute``: Megatron's re-runs the attention core; torchtitan's op-level SAC re-runs only
    element-wise ops, which add no hardware FLOPs.
    """
    s = training.seq_len
    linear, core = layer_linear_flops(model), causal_core_flops(model, s)
    tokens = L["micro_batch"] * L["grad_accum"] * L["dp"] * s
    per_token = 3.0 * (model.layers * (linear + core) + logit_flops(model))
    rc = L["recompute"]
    selective_flops = core if selective == "attention_core" else 0.0
    extra = np.where(rc == 2, recomputed_fraction(model, L) * (linear + core), np.where(rc == 1, selective_flops, 0.0))
    model_flops = tokens * per_token
    return model_flops, model_flops + tokens * model.layers * extra
