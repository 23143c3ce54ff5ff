"""Per-rank memory of one training step, for the worst rank (first or last pipeline stage).

Model states (Rajbhandari et al. 2020, ZeRO): with Ψ parameters on a rank and N = dp_shard,
mixed-precision Adam keeps 2Ψ weights + 2Ψ gradients + 12Ψ optimizer states (fp32 master, m, v):
stage 0: 16Ψ; stage 1: 4Ψ + 12Ψ/N; stage 2: 2Ψ + 14Ψ/N; stage 3: 16Ψ/N. Megatron-LM keeps fp32 main
gradients (4Ψ) instead of bf16 ones, hence its 18 bytes/param (6 + 12/N with the distributed optimizer);
``TrainingSpec.grad_buffers`` chooses. fp32 training: 4 + 4 + 8 = 16 bytes/param. fp8 compute keeps bf16
weights (as Transformer Engine does), so its states equal bf16's.

Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation"), bytes per layer per
micro-batch of b sequences of s tokens, bf16, GPT (a heads, f = 4h, dropout): s·b·h·(34 + 5·a·s/h).
The 34 splits into 4 (two norm inputs) + 11 (attention: QKV input 2, Q 2, K 2, V 2, projection input 2,
dropout mask 1) + 19 (MLP: fc1 input 2, GELU input 8 = 2f, fc2 input 8 = 2f, dropout mask 1). For GQA
with kv_heads g and head size d, K and V take 2·2·g·d instead of 2·2·h; for SwiGLU the MLP stores fc1's
two outputs (2·2f) and fc2's input (2f) = 6f instead of 4f; without dropout the two 1-byte masks and the
attention-dropout output (2as) vanish, so the core is 2·a·s instead of 5·a·s. Llama-3-8B (g·d = h/4,
f = 3.5h, no dropout) lands on 34·s·b·h again by coincidence. With tp = t the QKV/projection/MLP terms
and the attention core divide by t; the norm inputs, the QKV and fc1 inputs and the masks (10·s·b·h in
GPT) divide by t only with sequence parallelism — Korthikanti's s·b·h·(10 + 24/t + 5as/(ht)).
FlashAttention (default) stores no s×s matrices, only a fp32 log-sum-exp (4·a·s·b/t); selective
recompute drops the core the same way; full recompute keeps only each layer's input (2·s·b·h, /t with
SP) plus one layer's activations live while it is recomputed. Context parallelism divides s by cp.
1F1B keeps min(p, m) micro-batches in flight on the first stage and one on the last (GPipe all m on every
stage, each with its logits on the last); the interleaved schedule multiplies
the stage's activations by 1 + (p−1)/(p·v) (Korthikanti §4.2.3, Megatron theoretical_memory_usage).
The last stage adds fp32 logits, 4·s·b·V/t bytes, and while the vocab-parallel cross-entropy makes that
fp32 copy the low-precision logits (2·s·b·V/t, none in fp32 training) are alive too; that moment and a
fully recomputed layer's re-run (in backward, after the logits are freed) do not coexist, so the stage
keeps the larger of the two — both found by the fake-tensor dry run (benchmarks/memory_fidelity.py).

Mixture of experts (:mod:`autotune.costmodel.moe`): the routed experts' weights, gradients and optimizer states
are sharded over ep·etp and ZeRO-sharded over the expert data-parallel group edp; everything else (attention,
router, shared experts, dense layers) as above over tp and dp_shard. An MoE layer stores, per token entering it
(s·b/cp, over tp with SP): the router's fp32 logits (4·E bytes), and for each of the k routed copies — times
the busiest rank's imbalance, and etp times over when etp ranks share an expert — the permuted input of the
expert (2h), its MLP activations (6·f_e/etp with SwiGLU, 4·f_e/etp with GELU, as a dense MLP of width f_e) and
its permuted output kept for the probability-weighted combine (2h): Megatron-LM's token dispatcher
(megatron/core/transformer/moe/token_dispatcher.py, core_v0.19.0) permutes tokens before and unpermutes them
after the grouped GEMMs. Shared experts store a dense MLP's activations.
Multi-head latent attention (DeepSeek-V2, Liu et al. 2024, §2.1) stores the compressed latents — the query
latent as its norm's input and output (2·2·q_lora), the key/value latent the same way (2·2·kv_lora) and the
shared rotary key (2·rope) — on every tp rank (Megatron-LM's down projections are duplicated across tp), and
per head Q and K of nope + rope dims, V and the output projection's input of v dims (2·a·(2·qk + 2·v)/t).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autotune.costmodel.layout import Layout
from autotune.costmodel.moe import (
    expert_params_per_layer,
    expert_shard,
    expert_stage_params,
    routed_copies_per_rank,
    stage_layer_counts,
)
from autotune.spec import GPUSpec, ModelSpec, TrainingSpec

__all__ = [
    "GIB",
    "model_state_bytes",
    "stage_params",
    "activation_bytes_per_layer",
    "activation_bytes",
    "memory_breakdown",
]

GIB = float(2**30)


def _bytes_per_param(training: TrainingSpec) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes per parameter before sharding."""
    states = 8.0 if training.optimizer == "adam" else 4.0
    if training.precision == "fp32":
        return 4.0, 4.0, states
    grads = {"fp32": 4.0, "low": 2.0, "both": 6.0}[training.grad_buffers]
    return 2.0, grads, 4.0 + states


def model_state_bytes(psi: Any, zero: Any, n_shard: Any, training: TrainingSpec) -> tuple[Any, Any, Any]:
    """Weights, gradients, optimizer bytes of ``psi`` parameters under ZeRO ``zero`` over ``n_shard`` ranks."""
    w, g, o = _bytes_per_param(training)
    n = np.asarray(n_shard, dtype=float) if isinstance(n_shard, np.ndarray) else float(n_shard)
    weights = psi * w / np.where(zero >= 3, n, 1.0)
    grads = psi * g / np.where(zero >= 2, n, 1.0)
    opt = psi * o / np.where(zero >= 1, n, 1.0)
    return weights, grads, opt


def _block_params(model: ModelSpec, tp: Any, moe: bool) -> Any:
    """Parameters one rank holds of one block apart from routed experts: linear weights over tp, norms and the
    router replicated (Megatron-LM's TopKRouter weight is not tensor-parallel)."""
    norms = 2 * model.norm_params()
    if not moe:
        return (model.layer_params() - norms) / tp + norms
    router = model.router_params()
    rest = model.moe_layer_params() - model.experts * model.mlp_params(model.expert_ffn) - router - norms
    return rest / tp + router + norms


def stage_params(model: ModelSpec, tp: Any, pp: Any) -> tuple[Any, Any]:
    """Parameters on one rank of the first and of the last pipeline stage, routed experts excepted
    (:func:`autotune.costmodel.moe.expert_stage_params`; a dense model has none).

    Linear weights divide by tp, norms are replicated. The first stage holds the embedding (vocab-
    parallel, /tp); the last holds the final norm and the output layer; with tied embeddings and
    pp > 1 the last stage keeps its own copy of the embedding matrix (Megatron-LM does).
    """
    (dense_first, moe_first), (dense_last, moe_last) = stage_layer_counts(model, pp)
    dense, moe = _block_params(model, tp, False), _block_params(model, tp, True)
    layers_first = dense_first * dense + moe_first * moe
    layers_last = dense_last * dense + moe_last * moe
    emb = model.embedding_params() / tp
    out = model.vocab * model.hidden / tp
    head = model.norm_params() + np.where(model.tied_embeddings & (pp > 1), out, 0.0)
    head = head + (0.0 if model.tied_embeddings else out)
    single = pp == 1
    first = layers_first + emb + np.where(single, head, 0.0)
    last = layers_last + head + np.where(single, emb, 0.0)
    return first, last


def _mlp_act(model: ModelSpec, width: Any) -> Any:
    """Bytes per token an MLP of inner width ``width`` stores: SwiGLU 6·width, GELU 4·width."""
    return (6 if model.activation == "swiglu" else 4) * width


def _attention_act(model: ModelSpec, t: Any) -> Any:
    """Bytes per token the attention projections store (input norm and core aside)."""
    h = model.hidden
    if model.is_mla:
        rope, kvl, ql = model.qk_rope_head_dim or 0, model.kv_lora_rank or 0, model.q_lora_rank or 0
        qk, v = (model.qk_nope_head_dim or 0) + rope, model.v_head_dim or 0
        return 2 * model.heads * (2 * qk + 2 * v) / t + 2 * (2 * ql + 2 * kvl + rope)
    kv_local = model.head_dim * np.maximum(model.n_kv_heads / t, 1.0)
    return (2 * h + 2 * h) / t + 4 * kv_local


def activation_bytes_per_layer(model: ModelSpec, training: TrainingSpec, L: Layout,
                               moe: bool = False) -> tuple[Any, Any]:
    """(stored, checkpoint) bytes of one layer (``moe``: an MoE layer) for one micro-batch on one rank.

    ``stored`` is what a layer keeps for backward under L['recompute'] none (0) or selective (1);
    ``checkpoint`` is the layer input kept under full recompute.
    """
    h, f, a = model.hidden, model.ffn, model.heads
    t, sp = L["tp"], L["sequence_parallel"]
    s_loc = training.seq_len / L["cp"]
    tokens = s_loc * L["micro_batch"]
    mask = 1.0 if model.dropout else 0.0
    sharded = _attention_act(model, t) + _mlp_act(model, f) / t
    if moe:
        routed = routed_copies_per_rank(model, training, L) / tokens * (
            4 * h + _mlp_act(model, model.expert_ffn) / L["etp"])
        router = 4.0 * model.experts / np.where(sp > 0, t, 1)
        sharded = _attention_act(model, t) + model.shared_experts * _mlp_act(model, model.shared_expert_ffn) / t
        sharded = sharded + routed + router
    replicated = 4 * h + 2 * h + 2 * h + 2 * mask * h
    per_token = sharded + np.where(sp > 0, replicated / t, replicated)
    if training.flash_attention:
        core = 4.0 * a / t
    else:
        core = (5.0 if model.dropout else 2.0) * a * training.seq_len / t
    per_token = per_token + np.where(L["recompute"] == 1, 0.0, core)
    checkpoint = tokens * 2 * h / np.where(sp > 0, t, 1)
    return tokens * per_token, checkpoint


def activation_bytes(model: ModelSpec, training: TrainingSpec, L: Layout) -> tuple[Any, Any]:
    """Activation bytes on a rank of the first and of the last pipeline stage."""
    stored, checkpoint = activation_bytes_per_layer(model, training, L)
    pp, m = L["pp"], L["grad_accum"]
    n_layers = model.layers / pp
    rec_layers = np.where(L["recompute_layers"] > 0, L["recompute_layers"], n_layers)
    full = L["recompute"] == 2
    if model.is_moe:  # the stage's mean layer; a recomputed MoE layer is the largest transient
        stored_moe = activation_bytes_per_layer(model, training, L, moe=True)[0]
        (dense_first, moe_first), (dense_last, moe_last) = stage_layer_counts(model, pp)
        mean_first = (dense_first * stored + moe_first * stored_moe) / n_layers
        mean_last = (dense_last * stored + moe_last * stored_moe) / n_layers
        largest_first = np.where(moe_first > 0, np.maximum(stored, stored_moe), stored)
        largest_last = np.where(moe_last > 0, np.maximum(stored, stored_moe), stored)
    else:
        mean_first = mean_last = largest_first = largest_last = stored
    per_mb = np.where(full, rec_layers * checkpoint + (n_layers - rec_layers) * mean_first, n_layers * mean_first)
    per_mb_last = np.where(full, rec_layers * checkpoint + (n_layers - rec_layers) * mean_last, n_layers * mean_last)
    transient = np.where(full, largest_first, 0.0)
    transient_last = np.where(full, largest_last, 0.0)
    one_f_one_b = np.where(L["vpp"] > 1, pp * (1 + (pp - 1) / (pp * L["vpp"])), np.minimum(pp, m))
    in_flight = np.where((L["pp_schedule"] == 1) & (pp > 1), m, one_f_one_b)
    tokens = training.seq_len / L["cp"] * L["micro_batch"]
    emb_mask = tokens * model.hidden * (1.0 if model.dropout else 0.0) / np.where(L["sequence_parallel"] > 0,
                                                                                   L["tp"], 1)
    saved_logits = 4.0 * tokens * model.vocab / L["tp"]
    logits = saved_logits + (0.0 if training.precision == "fp32" else 2.0) * tokens * model.vocab / L["tp"]
    with_logits = np.maximum(transient, logits)
    first = in_flight * (per_mb + emb_mask) + np.where(pp == 1, with_logits, transient)
    last_in_flight = np.where((L["pp_schedule"] == 1) & (pp > 1), m, 1)
    last = last_in_flight * per_mb_last + (last_in_flight - 1) * saved_logits + np.maximum(transient_last, logits)
    return first, last


def memory_breakdown(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, L: Layout) -> dict[str, Any]:
    """Per-rank memory of the worst pipeline stage, GiB: weights, gradients, optimizer, activations,
    other (framework overhead + ZeRO-3 gather buffers), total, plus capacity and fits."""
    first_p, last_p = stage_params(model, L["tp"], L["pp"])
    act_first, act_last = activation_bytes(model, training, L)
    zero, shard = L["zero"], L["dp_shard"]
    w1, g1, o1 = model_state_bytes(first_p, zero, shard, training)
    w2, g2, o2 = model_state_bytes(last_p, zero, shard, training)
    if model.is_moe:
        ex_first, ex_last = expert_stage_params(model, L)
        ew1, eg1, eo1 = model_state_bytes(ex_first, zero, expert_shard(L), training)
        ew2, eg2, eo2 = model_state_bytes(ex_last, zero, expert_shard(L), training)
        w1, g1, o1, w2, g2, o2 = w1 + ew1, g1 + eg1, o1 + eo1, w2 + ew2, g2 + eg2, o2 + eo2
    total_first = w1 + g1 + o1 + act_first
    total_last = w2 + g2 + o2 + act_last
    use_first = total_first >= total_last
    weights, grads, opt, acts = (np.where(use_first, a, b) for a, b in
                                 ((w1, w2), (g1, g2), (o1, o2), (act_first, act_last)))
    layer_local = _block_params(model, L["tp"], False)
    if model.is_moe:
        moe_local = _block_params(model, L["tp"], True) + expert_params_per_layer(model, L["ep"], L["etp"])
        layer_local = np.maximum(layer_local, moe_local)
    w_bytes = 4.0 if training.precision == "fp32" else 2.0
    gather = np.where(zero >= 3, 2 * layer_local * w_bytes, 0.0)
    other = gpu.overhead_gib * GIB + gather
    total = weights + grads + opt + acts + other
    capacity = gpu.memory_gib * gpu.usable_fraction
    out = {
        "weights": weights / GIB,
        "gradients": grads / GIB,
        "optimizer": opt / GIB,
        "activations": acts / GIB,
        "other": other / GIB,
        "total": total / GIB,
    }
    out["fits"] = out["total"] <= capacity
    out["capacity"] = capacity
    out["worst_stage"] = np.where(use_first, 0, L["pp"] - 1)
    return out
