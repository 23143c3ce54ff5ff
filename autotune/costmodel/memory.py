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

from autotune.costmodel.layout import Layout
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


def stage_params(model: ModelSpec, tp: Any, pp: Any, first_layers: Any = None, last_layers: Any = None
                 ) -> tuple[Any, Any]:
    """Parameters on one rank of the first and of the last pipeline stage.

    Linear weights divide by tp, norms are replicated. The first stage holds the embedding (vocab-
    parallel, /tp); the last holds the final norm and the output layer; with tied embeddings and
    pp > 1 the last stage keeps its own copy of the embedding matrix (Megatron-LM does).
    ``first_layers``/``last_layers``: decoder layers on those stages (default layers/pp, the even split).
    """
    even = model.layers / pp
    n_first = even if first_layers is None else first_layers
    n_last = even if last_layers is None else last_layers
    per_layer = _layer_params_local(model, tp)
    emb = model.embedding_params() / tp
    out = model.vocab * model.hidden / tp
    head = model.norm_params() + np.where(model.tied_embeddings & (pp > 1), out, 0.0)
    head = head + (0.0 if model.tied_embeddings else out)
    single = pp == 1
    first = n_first * per_layer + emb + np.where(single, head, 0.0)
    last = n_last * per_layer + head + np.where(single, emb, 0.0)
    return first, last


def _layer_params_local(model: ModelSpec, tp: Any) -> Any:
    """One decoder layer's parameters on a rank: linear weights / tp, norms replicated."""
    norms = 2 * model.norm_params()
    return (model.layer_params() - norms) / tp + norms


def middle_stage_params(model: ModelSpec, tp: Any, layers: Any) -> Any:
    """Parameters on one rank of a middle pipeline stage of ``layers`` decoder layers (no embedding or head)."""
    return layers * _layer_params_local(model, tp)


def largest_stage_params(model: ModelSpec, L: Layout) -> Any:
    """Parameters on a rank of the pipeline stage that holds the most (first, a middle one or the last)."""
    n_first, n_mid, n_last = stage_layers(model.layers, L)
    first, last = stage_params(model, L["tp"], L["pp"], n_first, n_last)
    mid = np.where(L["pp"] > 2, middle_stage_params(model, L["tp"], n_mid), 0.0)
    return np.maximum(np.maximum(first, last), mid)


def activation_bytes_per_layer(model: ModelSpec, training: TrainingSpec, L: Layout) -> tuple[Any, Any]:
    """(stored, checkpoint) bytes of one layer for one micro-batch on one rank.

    ``stored`` is what a layer keeps for backward under L['recompute'] none (0) or selective (1);
    ``checkpoint`` is the layer input kept under full recompute.
    """
    h, f, a = model.hidden, model.ffn, model.heads
    t, sp = L["tp"], L["sequence_parallel"]
    s_loc = training.seq_len / L["cp"]
    tokens = s_loc * L["micro_batch"]
    kv_local = model.head_dim * np.maximum(model.n_kv_heads / t, 1.0)
    mask = 1.0 if model.dropout else 0.0
    sharded = (2 * h + 2 * h) / t + 4 * kv_local + (6 * f if model.activation == "swiglu" else 4 * f) / t
    replicated = 4 * h + 2 * h + 2 * h + 2 * mask * h
    per_token = sharded + np.where(sp > 0, replicated / t, replicated)
    if training.flash_attention:
        core = 4.0 * a / t
    else:
        core = (5.0 if model.dropout else 2.0) * a * training.seq_len / t
    per_token = per_token + np.where(L["recompute"] == 1, 0.0, core)
    checkpoint = tokens * 2 * h / np.where(sp > 0, t, 1)
    return tokens * per_token, checkpoint


def _stage_layer_bytes(stored: Any, checkpoint: Any, layers: Any, L: Layout) -> Any:
    """One micro-batch's activations of a stage of ``layers`` decoder layers (recompute_layers per stage)."""
    k = L["recompute_layers"]
    rec_layers = np.where(k > 0, np.minimum(k, layers), layers)
    full = L["recompute"] == 2
    return np.where(full, rec_layers * checkpoint + (layers - rec_layers) * stored, layers * stored)


def activation_bytes(model: ModelSpec, training: TrainingSpec, L: Layout) -> tuple[Any, Any]:
    """Activation bytes on a rank of the first and of the last pipeline stage."""
    stored, checkpoint = activation_bytes_per_layer(model, training, L)
    pp, m = L["pp"], L["grad_accum"]
    n_first, _, n_last = stage_layers(model.layers, L)
    transient = np.where(L["recompute"] == 2, stored, 0.0)
    one_f_one_b = np.where(L["vpp"] > 1, pp * (1 + (pp - 1) / (pp * L["vpp"])), np.minimum(pp, m))
    in_flight = np.where((L["pp_schedule"] == 1) & (pp > 1), m, one_f_one_b)
    tokens = training.seq_len / L["cp"] * L["micro_batch"]
    emb_mask = tokens * model.hidden * (1.0 if model.dropout else 0.0) / np.where(L["sequence_parallel"] > 0,
                                                                                   L["tp"], 1)
    saved_logits = 4.0 * tokens * model.vocab / L["tp"]
    logits = saved_logits + (0.0 if training.precision == "fp32" else 2.0) * tokens * model.vocab / L["tp"]
    with_logits = np.maximum(transient, logits)
    first = in_flight * (_stage_layer_bytes(stored, checkpoint, n_first, L) + emb_mask) + np.where(
        pp == 1, with_logits, transient)
    last_in_flight = np.where((L["pp_schedule"] == 1) & (pp > 1), m, 1)
    last = last_in_flight * _stage_layer_bytes(stored, checkpoint, n_last, L) + (last_in_flight - 1) * saved_logits \
        + with_logits
    return first, last


def middle_activation_bytes(model: ModelSpec, training: TrainingSpec, L: Layout) -> Any:
    """Activation bytes on a rank of pipeline stage 1, the middle stage with the most micro-batches in
    flight: 1F1B keeps min(p − 1, m), interleaved 1F1B (p − 2)·2 + (v − 1)·p + 1 chunks of 1/v of the stage
    (Megatron's warm-up count for rank 1; p + (p − 1)/v on rank 0 is Korthikanti's factor), GPipe m."""
    stored, checkpoint = activation_bytes_per_layer(model, training, L)
    pp, m, v = L["pp"], L["grad_accum"], L["vpp"]
    _, n_mid, _ = stage_layers(model.layers, L)
    one_f_one_b = np.where(v > 1, pp + (pp - 3) / v, np.minimum(pp - 1, m))
    in_flight = np.where(L["pp_schedule"] == 1, m, one_f_one_b)
    transient = np.where(L["recompute"] == 2, stored, 0.0)
    return in_flight * _stage_layer_bytes(stored, checkpoint, n_mid, L) + transient


def memory_breakdown(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, L: Layout) -> dict[str, Any]:
    """Per-rank memory of the worst pipeline stage, GiB: weights, gradients, optimizer, activations,
    other (framework overhead + ZeRO-3 gather buffers), total, plus capacity and fits."""
    n_first, n_mid, n_last = stage_layers(model.layers, L)
    first_p, last_p = stage_params(model, L["tp"], L["pp"], n_first, n_last)
    act_first, act_last = activation_bytes(model, training, L)
    zero, shard = L["zero"], L["dp_shard"]
    w1, g1, o1 = model_state_bytes(first_p, zero, shard, training)
    w2, g2, o2 = model_state_bytes(last_p, zero, shard, training)
    w3, g3, o3 = model_state_bytes(middle_stage_params(model, L["tp"], n_mid), zero, shard, training)
    act_mid = middle_activation_bytes(model, training, L)
    total_first = w1 + g1 + o1 + act_first
    total_last = w2 + g2 + o2 + act_last
    use_first = total_first >= total_last
    use_mid = (L["pp"] > 2) & (w3 + g3 + o3 + act_mid > np.where(use_first, total_first, total_last))
    weights, grads, opt, acts = (np.where(use_mid, c, np.where(use_first, a, b)) for a, b, c in
                                 ((w1, w2, w3), (g1, g2, g3), (o1, o2, o3), (act_first, act_last, act_mid)))
    layer_local = _layer_params_local(model, L["tp"])
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
    out["worst_stage"] = np.where(use_mid, 1, np.where(use_first, 0, L["pp"] - 1))
    return out
