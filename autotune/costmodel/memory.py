"""Per-rank memory of one training step, for the worst rank (first, a middle or the last pipeline stage).

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
f = 3.5h, no dropout) lands on 34·s·b·h again by coincidence. Decoupled heads (q_dim = heads·d ≠ h) store
Q and the projection input at 2·q_dim each; GeGLU stores what SwiGLU does (6f), squared ReLU what GELU
does (its input and fc2's input, 4f); q/k norms store their inputs (2·q_dim + 2·kv_dim) and one fp32
rstd per normalised row (per head, or per token for OLMo 2's projection-wide norms); every extra
hidden-width norm (Gemma's sandwich: 4 per layer) stores its 2h input beside the two of a pre-norm block
(OLMo 2's post-norms store their 2h inputs in the same places). Sliding windows change no stored tensor:
FlashAttention's windowed kernel saves the same Q, K, V, output and log-sum-exp.
With tp = t the QKV/projection/MLP terms
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
(s·b/cp, over tp with SP): the router's fp32 logits (4·E bytes), for each of the k routed copies — times
the busiest rank's imbalance, and etp times over when etp ranks share an expert — the permuted input of the
expert (2h) and its MLP activations (6·f_e/etp with SwiGLU, 4·f_e/etp with GELU, as a dense MLP of width f_e),
and for each of the rank's own k copies, back from the reverse all-to-all, the combine's 4h: the reference
model (workers/model.py ``MoE.forward``) keeps the returned copies (``index_copy``'s backward keeps its
source) and the copies in token order (saved by the probability-weighted sum). Megatron-LM's token dispatcher
(megatron/core/transformer/moe/token_dispatcher.py, core_v0.19.0) permutes tokens before and unpermutes them
after the grouped GEMMs; its TEGroupedMLP (moe/experts.py) multiplies the probabilities into the activation
(weighted_bias_swiglu) and its unpermute is a scatter-add, so it stores neither combine copy. Shared experts
store a dense MLP's activations. The backward of a stage's MoE layers holds the experts' activation and
weight gradients (:func:`autotune.costmodel.moe.expert_backward_bytes`; 0.61 GiB on Mixtral's 4,096 · 2 · 1.25
copies of one expert per rank), a transient like the re-run layer's and the logits' (the largest of the
three counts; under full recompute on top of the re-run MoE layer).
Multi-head latent attention (DeepSeek-V2, Liu et al. 2024, §2.1) stores the compressed latents — the query
latent as its norm's input and output (2·2·q_lora), the key/value latent the same way (2·2·kv_lora) and the
shared rotary key (2·rope) — on every tp rank (Megatron-LM's down projections are duplicated across tp), and
per head Q and K of nope + rope dims, V and the output projection's input of v dims (2·a·(2·qk + 2·v)/t).
Uneven pipeline stages (:mod:`autotune.pipeline`): each stage holds its own decoder layer count (the
first, the middle ones, the last), with full recompute of ``recompute_layers`` counted per stage (at most
the stage's layers). Besides the first and the last stage, stage 1 — the middle stage with the most
micro-batches in flight — is scored, and the largest total is the worst rank (``worst_stage`` 0, 1 or
p − 1). Evenly split, a middle stage holds the first stage's layers without its embedding and with fewer
micro-batches in flight, so it never decides.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autotune.catalog import resolve_stack
from autotune.costmodel.layout import Layout
from autotune.costmodel.moe import (
    combine_copies_per_rank,
    expert_backward_bytes,
    expert_params_per_layer,
    expert_shard,
    expert_stage_params,
    moe_layers_below,
    routed_copies_per_rank,
    stage_ranges,
)
from autotune.pipeline import stage_layers
from autotune.spec import GPUSpec, ModelSpec, TrainingSpec

__all__ = [
    "GIB",
    "model_state_bytes",
    "stage_params",
    "middle_stage_params",
    "largest_stage_params",
    "activation_bytes_per_layer",
    "activation_bytes",
    "middle_activation_bytes",
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
    norms = model.replicated_layer_params()
    if not moe:
        return (model.layer_params() - norms) / tp + norms
    router = model.router_params()
    rest = model.moe_layer_params() - model.experts * model.mlp_params(model.expert_ffn) - router - norms
    return rest / tp + router + norms


def _layers_params(model: ModelSpec, tp: Any, start: Any, layers: Any) -> Any:
    """Parameters on a rank of decoder layers start .. start + layers − 1, routed experts excepted."""
    moe = moe_layers_below(model, start + layers) - moe_layers_below(model, start)
    return (layers - moe) * _block_params(model, tp, False) + moe * _block_params(model, tp, True)


def stage_params(model: ModelSpec, tp: Any, pp: Any, first_layers: Any = None, last_layers: Any = None
                 ) -> tuple[Any, Any]:
    """Parameters on one rank of the first and of the last pipeline stage, routed experts excepted
    (:func:`autotune.costmodel.moe.expert_stage_params`; a dense model has none).

    Linear weights divide by tp, norms are replicated. The first stage holds the embedding (vocab-
    parallel, /tp); the last holds the final norm and the output layer; with tied embeddings and
    pp > 1 the last stage keeps its own copy of the embedding matrix (Megatron-LM does).
    ``first_layers``/``last_layers``: decoder layers on those stages (default layers/pp, the even split).
    """
    even = model.layers / pp
    n_first = even if first_layers is None else first_layers
    n_last = even if last_layers is None else last_layers
    emb = model.embedding_params() / tp
    out = model.vocab * model.hidden / tp
    head = model.norm_params() + np.where(model.tied_embeddings & (pp > 1), out, 0.0)
    head = head + (0.0 if model.tied_embeddings else out)
    single = pp == 1
    first = _layers_params(model, tp, 0.0, n_first) + emb + np.where(single, head, 0.0)
    last = _layers_params(model, tp, model.layers - n_last, n_last) + head + np.where(single, emb, 0.0)
    return first, last


def middle_stage_params(model: ModelSpec, tp: Any, start: Any, layers: Any) -> Any:
    """Parameters on one rank of a middle pipeline stage of ``layers`` decoder layers from layer ``start``
    (no embedding or head; routed experts excepted)."""
    return _layers_params(model, tp, start, layers)


def _stage_states(model: ModelSpec, training: TrainingSpec, L: Layout) -> list[tuple[Any, Any, Any]]:
    """(weights, gradients, optimizer) bytes on a rank of the first stage, of stage 1 and of the last: the
    dense parts ZeRO-sharded over dp_shard, the routed experts over their expert data-parallel group."""
    n_first, n_mid, n_last = stage_layers(model.layers, L)
    first_p, last_p = stage_params(model, L["tp"], L["pp"], n_first, n_last)
    mid_p = np.where(L["pp"] > 2, middle_stage_params(model, L["tp"], n_first, n_mid), 0.0)
    zero = L["zero"]
    out = []
    for dense, experts in zip((first_p, mid_p, last_p), expert_stage_params(model, L), strict=True):
        w, g, o = model_state_bytes(dense, zero, L["dp_shard"], training)
        if model.is_moe:
            ew, eg, eo = model_state_bytes(experts, zero, expert_shard(L), training)
            w, g, o = w + ew, g + eg, o + eo
        out.append((w, g, o))
    return out


def largest_stage_params(model: ModelSpec, L: Layout, experts: bool = True, expert_divisor: Any = 1.0,
                         dense_divisor: Any = 1.0) -> Any:
    """Parameters on a rank of the pipeline stage that holds the most (first, a middle one or the last):
    dense parts / ``dense_divisor`` plus (with ``experts``) routed experts / ``expert_divisor`` (their own
    ZeRO shard, say)."""
    n_first, n_mid, n_last = stage_layers(model.layers, L)
    first, last = stage_params(model, L["tp"], L["pp"], n_first, n_last)
    mid = np.where(L["pp"] > 2, middle_stage_params(model, L["tp"], n_first, n_mid), 0.0)
    ex = expert_stage_params(model, L) if experts else (0.0, 0.0, 0.0)
    per_stage = [d / dense_divisor + e / expert_divisor for d, e in zip((first, mid, last), ex, strict=True)]
    return np.maximum(np.maximum(per_stage[0], per_stage[2]), per_stage[1])


def _mlp_act(model: ModelSpec, width: Any) -> Any:
    """Bytes per token an MLP of inner width ``width`` stores: gated (SwiGLU, GeGLU) 6·width, GELU and squared
    ReLU 4·width."""
    return (6 if model.mlp_matrices == 3 else 4) * width


def _attention_act(model: ModelSpec, t: Any) -> Any:
    """Bytes per token the attention projections store (input norm and core aside)."""
    if model.is_mla:
        rope, kvl, ql = model.qk_rope_head_dim or 0, model.kv_lora_rank or 0, model.q_lora_rank or 0
        qk, v = (model.qk_nope_head_dim or 0) + rope, model.v_head_dim or 0
        return 2 * model.heads * (2 * qk + 2 * v) / t + 2 * (2 * ql + 2 * kvl + rope)
    kv_local = model.head_dim * np.maximum(model.n_kv_heads / t, 1.0)
    out = (2 * model.q_dim + 2 * model.q_dim) / t + 4 * kv_local
    if model.qk_norm:
        rows = (model.heads / t + kv_local / model.head_dim) if model.qk_norm_scope == "head" else 2.0
        out = out + 2 * model.q_dim / t + 2 * kv_local + 4 * rows
    return out


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
            2 * h + _mlp_act(model, model.expert_ffn) / L["etp"])
        routed = routed + combine_copies_per_rank(model, training, L) / tokens * 4 * h
        router = 4.0 * model.experts / np.where(sp > 0, t, 1)
        sharded = _attention_act(model, t) + model.shared_experts * _mlp_act(model, model.shared_expert_ffn) / t
        sharded = sharded + routed + router
    replicated = 2 * model.norms_per_layer * h + 2 * h + 2 * h + 2 * mask * h
    per_token = sharded + np.where(sp > 0, replicated / t, replicated)
    if training.flash_attention:
        core = 4.0 * a / t
    else:
        core = (5.0 if model.dropout else 2.0) * a * training.seq_len / t
    per_token = per_token + np.where(L["recompute"] == 1, 0.0, core)
    checkpoint = tokens * 2 * h / np.where(sp > 0, t, 1)
    return tokens * per_token, checkpoint


def _stage_activations(model: ModelSpec, training: TrainingSpec, L: Layout, start: Any, layers: Any
                       ) -> tuple[Any, Any]:
    """(one micro-batch's activations, the stage's backward transient) of the stage of ``layers`` decoder
    layers from layer ``start``: its dense and MoE layers each store their own; full recompute keeps
    ``recompute_layers`` (per stage, at most its layers) as checkpoints, and re-runs one layer at a time (the
    transient: the largest layer's stored bytes). With MoE layers the transient is at least one MoE layer's
    expert backward (:func:`autotune.costmodel.moe.expert_backward_bytes`), on top of that layer's re-run
    under full recompute."""
    stored, checkpoint = activation_bytes_per_layer(model, training, L)
    k = L["recompute_layers"]
    rec_layers = np.where(k > 0, np.minimum(k, layers), layers)
    full = L["recompute"] == 2
    mean, largest = stored, stored
    if model.is_moe:
        stored_moe = activation_bytes_per_layer(model, training, L, moe=True)[0]
        moe = moe_layers_below(model, start + layers) - moe_layers_below(model, start)
        mean = ((layers - moe) * stored + moe * stored_moe) / np.maximum(layers, 1)
        largest = np.where(moe > 0, np.maximum(stored, stored_moe), stored)
    per_mb = np.where(full, rec_layers * checkpoint + (layers - rec_layers) * mean, layers * mean)
    transient = np.where(full, largest, 0.0)
    if model.is_moe:
        backward = expert_backward_bytes(model, training, L) + np.where(full, stored_moe, 0.0)
        transient = np.where(moe > 0, np.maximum(transient, backward), transient)
    return per_mb, transient


def activation_bytes(model: ModelSpec, training: TrainingSpec, L: Layout) -> tuple[Any, Any]:
    """Activation bytes on a rank of the first and of the last pipeline stage."""
    pp, m = L["pp"], L["grad_accum"]
    (s_first, n_first), _, (s_last, n_last) = stage_ranges(model, L)
    per_first, transient = _stage_activations(model, training, L, s_first, n_first)
    per_last, transient_last = _stage_activations(model, training, L, s_last, n_last)
    one_f_one_b = np.where(L["vpp"] > 1, pp * (1 + (pp - 1) / (pp * L["vpp"])), np.minimum(pp, m))
    in_flight = np.where((L["pp_schedule"] == 1) & (pp > 1), m, one_f_one_b)
    tokens = training.seq_len / L["cp"] * L["micro_batch"]
    emb_mask = tokens * model.hidden * (1.0 if model.dropout else 0.0) / np.where(L["sequence_parallel"] > 0,
                                                                                   L["tp"], 1)
    saved_logits = 4.0 * tokens * model.vocab / L["tp"]
    logits = saved_logits + (0.0 if training.precision == "fp32" else 2.0) * tokens * model.vocab / L["tp"]
    first = in_flight * (per_first + emb_mask) + np.where(pp == 1, np.maximum(transient, logits), transient)
    last_in_flight = np.where((L["pp_schedule"] == 1) & (pp > 1), m, 1)
    last = last_in_flight * per_last + (last_in_flight - 1) * saved_logits + np.maximum(transient_last, logits)
    return first, last


def middle_activation_bytes(model: ModelSpec, training: TrainingSpec, L: Layout) -> Any:
    """Activation bytes on a rank of pipeline stage 1, the middle stage with the most micro-batches in
    flight: 1F1B keeps min(p − 1, m), interleaved 1F1B (p − 2)·2 + (v − 1)·p + 1 chunks of 1/v of the stage
    (Megatron's warm-up count for rank 1; p + (p − 1)/v on rank 0 is Korthikanti's factor), GPipe m."""
    pp, m, v = L["pp"], L["grad_accum"], L["vpp"]
    _, (s_mid, n_mid), _ = stage_ranges(model, L)
    per_mb, transient = _stage_activations(model, training, L, s_mid, n_mid)
    one_f_one_b = np.where(v > 1, pp + (pp - 3) / v, np.minimum(pp - 1, m))
    in_flight = np.where(L["pp_schedule"] == 1, m, one_f_one_b)
    return in_flight * per_mb + transient


def memory_breakdown(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, L: Layout) -> dict[str, Any]:
    """Per-rank memory of the worst pipeline stage, GiB: weights, gradients, optimizer, activations,
    other (framework overhead + ZeRO-3 gather buffers), total, plus capacity and fits.

    ZeRO-3 / FSDP holds the layer it computes unsharded plus the ``StackSpec.fsdp_prefetch`` layers whose
    all-gathers it issued ahead (FSDP2's implicit next-block prefetch, FSDP1's BACKWARD_PRE, DeepSpeed's
    prefetch bucket of about a layer). ``GPUSpec.overhead_gib`` is the CUDA context, NCCL buffers and
    workspaces; ``usable_fraction`` leaves the caching allocator's fragmentation (PyTorch CUDA memory
    notes: reserved exceeds allocated by a few per cent in steady training)."""
    (w1, g1, o1), (w3, g3, o3), (w2, g2, o2) = _stage_states(model, training, L)
    act_first, act_last = activation_bytes(model, training, L)
    act_mid = middle_activation_bytes(model, training, L)
    zero = L["zero"]
    total_first = w1 + g1 + o1 + act_first
    total_last = w2 + g2 + o2 + act_last
    use_first = total_first >= total_last
    use_mid = (L["pp"] > 2) & (w3 + g3 + o3 + act_mid > np.where(use_first, total_first, total_last))
    weights, grads, opt, acts = (np.where(use_mid, c, np.where(use_first, a, b)) for a, b, c in
                                 ((w1, w2, w3), (g1, g2, g3), (o1, o2, o3), (act_first, act_last, act_mid)))
    layer_local = _block_params(model, L["tp"], False)
    if model.is_moe:
        moe_local = _block_params(model, L["tp"], True) + expert_params_per_layer(model, L["ep"], L["etp"])
        layer_local = np.maximum(layer_local, moe_local)
    w_bytes = 4.0 if training.precision == "fp32" else 2.0
    prefetch = resolve_stack(training.stack).fsdp_prefetch
    gather = np.where(zero >= 3, (1 + prefetch) * layer_local * w_bytes, 0.0)
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
    out["worst_stage"] = np.where(use_mid, 1, np.where(use_first, 0, L["pp"] - 1))
    return out
