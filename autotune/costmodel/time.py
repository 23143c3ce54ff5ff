"""Step time of one optimizer step: the analytic model that scores a layout (scalar or vectorised).

The slowest pipeline stage (the last: its l/pp layers plus the output layer) sets the pace. Per
micro-batch it spends t_mb = compute (forward + 2× backward) + recompute + exposed TP + exposed CP
communication; a step runs m = grad_accum micro-batches, so

    step = m·t_mb + bubble + p2p + exposed DP/ZeRO communication + optimizer,
    bubble = (p−1)/v · t_mb     (1F1B: fraction (p−1)/m of the busy time; interleaved: (p−1)/(v·m)),

(Narayanan et al. 2021, §2.2; GPipe, ``pp_schedule`` 1, has the same (p−1)/m bubble, Huang et al.
2019). Point-to-point sends sit on the critical path: each micro-batch crosses v boundaries of the
stage forward and v backward, plus p−1 hops to fill and drain the pipeline.

Overlap (only the exposed part counts):
- TP with ``tp_comm_overlap``: at most TP_OVERLAP of the collectives hide behind at most TP_OVERLAP of
  the linear GEMMs (Megatron-LM / Transformer Engine userbuffers overlap pipelines GEMM chunks with
  communication chunks; Wang et al. 2023, ASPLOS, hide most but not all of it).
- CP: each ring step's K/V transfer overlaps the attention core of the chunk in hand (Ring Attention,
  Liu et al. 2023): only the excess of transfer over core time is exposed.
- DP/ZeRO (see :func:`dp_comm_exposed`): bucketed and overlapped with backward (gradients) and forward
  (parameter gathers); the first/last bucket can never hide.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autotune.costmodel.comm import (
    all_gather,
    all_reduce,
    cp_ring_bytes,
    link,
    p2p,
    pp_message_bytes,
    reduce_scatter,
    spans,
    tp_message_bytes,
)
from autotune.costmodel.compute import activation_dtype_bytes, layer_forward_times, logits_forward_time, peak_flops
from autotune.costmodel.flops import iteration_flops, recomputed_fraction
from autotune.costmodel.layout import Layout
from autotune.costmodel.memory import model_state_bytes, stage_params
from autotune.costmodel.moe import expert_shard, expert_stage_params
from autotune.spec import GPUSpec, ModelSpec, TrainingSpec

__all__ = ["TP_OVERLAP", "BUCKET_PARAMS", "BREAKDOWN", "dp_comm_exposed", "optimizer_time", "step_time"]

TP_OVERLAP = 0.8
"""Largest fraction of TP collectives (and of the linear GEMM time) that ``tp_comm_overlap`` overlaps."""

BUCKET_PARAMS = 40e6
"""Gradient bucket, parameters: Megatron-LM's DDP default (``--ddp-bucket-size`` 40M)."""

BREAKDOWN = ("compute", "recompute", "tp_comm", "cp_comm", "pp_bubble", "pp_p2p", "dp_comm_exposed", "optimizer")
"""Keys of ``time_breakdown_s``, in seconds per optimizer step; they sum to ``step_time_s``."""


def _hide(comm: Any, window: Any, flag: Any, frac: Any) -> Any:
    """Exposed part of ``comm`` overlapped (if ``flag``) with ``window``; ``frac`` never hides."""
    return np.where(flag > 0, np.maximum(comm - window, comm * frac), comm)


def dp_comm_exposed(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, gpus_per_node: int, L: Layout,
                    win_fwd: Any, win_bwd: Any, order: str) -> Any:
    """Exposed data-parallel / ZeRO communication per step, seconds.

    Ψ = parameters of the largest stage on a rank; gradients are replicated over dp·cp ranks, sharded
    over n = dp_shard, and all-reduced across the r = dp·cp/n replicas (HSDP, context parallel).
    zero 0: one all-reduce of Ψ gradients per step (no_sync under gradient accumulation).
    zero 1–2: reduce-scatter Ψ gradients + all-gather Ψ parameters, once per step (Rajbhandari et al.
    2020: the same 2Ψ volume as an all-reduce). zero 3: all-gathers of Ψ parameters in forward and
    again in backward, and the gradient reduce-scatter, on every micro-batch (sharded gradients cannot
    be accumulated unsharded); ZeRO-3's 3Ψ. The replica all-reduce follows the last micro-batch and
    shares its backward window. Gradients travel in fp32 when Megatron-style fp32 main
    grads are kept (``grad_buffers='fp32'``) or training is fp32, else in the parameter dtype.

    ZeRO-3 gathers and reduces each layer's parameters separately (FSDP wraps every block, torchtitan;
    DeepSpeed's stage 3 fetches per module), so its latency term counts once per call: layers of the
    stage + 1 (embedding, norm and output) calls per collective. Negligible at GPU link latencies of
    microseconds; not on CPU ranks, where a call costs a millisecond.
    """
    first, last = stage_params(model, L["tp"], L["pp"])
    psi = np.maximum(first, last)
    gb = 4.0 if training.precision == "fp32" or training.grad_buffers == "fp32" else 2.0
    pb = activation_dtype_bytes(training.precision)
    zero, m = L["zero"], L["grad_accum"]
    n = np.where(zero >= 1, L["dp_shard"], 1)
    reps = L["dp"] * L["cp"] / n
    sp = spans(L, order)
    shard_bw, shard_lat = link(gpu, gpus_per_node, sp["dp"] / L["dp"] * n)
    rep_bw, rep_lat = link(gpu, gpus_per_node, np.maximum(sp["dp"], sp["cp"]))
    frac = np.minimum(1.0, BUCKET_PARAMS / psi)
    ogr, opg = L["overlap_grad_reduce"], L["overlap_param_gather"]
    replica_ar = all_reduce(psi * gb / n, reps, rep_bw, rep_lat)
    shard_lat = shard_lat * np.where(zero >= 3, model.layers / L["pp"] + 1.0, 1.0)
    rs = reduce_scatter(psi * gb, n, shard_bw, shard_lat)
    ag = all_gather(psi * pb, n, shard_bw, shard_lat)
    low = _hide(rs + replica_ar, win_bwd, ogr, frac) + _hide(ag, win_fwd, opg, frac)
    bwd = ag + rs
    high = (m * _hide(ag, win_fwd, opg, frac) + (m - 1) * _hide(bwd, win_bwd, ogr * opg, frac)
            + _hide(bwd + replica_ar, win_bwd, ogr * opg, frac))
    return np.where(zero >= 3, high, low)


def optimizer_time(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, L: Layout) -> Any:
    """Memory-bound optimizer step, seconds: each rank updates Ψ/n parameters (n = dp_shard under
    ZeRO ≥ 1; routed experts over their own ZeRO group, :func:`autotune.costmodel.moe.expert_shard`),
    reading and writing the optimizer states (fp32 master + moments), reading the gradient
    and writing the working weights."""
    first, last = stage_params(model, L["tp"], L["pp"])
    ex_first, ex_last = expert_stage_params(model, L)
    sharded = L["zero"] >= 1
    psi = np.maximum(first / np.where(sharded, L["dp_shard"], 1) + ex_first / np.where(sharded, expert_shard(L), 1),
                     last / np.where(sharded, L["dp_shard"], 1) + ex_last / np.where(sharded, expert_shard(L), 1))
    w, g, o = model_state_bytes(1.0, 0, 1, training)
    return psi * (2.0 * o + g + w) / (gpu.hbm_gbps * 1e9)


def step_time(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, gpus_per_node: int, L: Layout, *,
              order: str = "tp-cp-dp-pp") -> dict[str, Any]:
    """Time breakdown (seconds per optimizer step, keys :data:`BREAKDOWN`), ``step_time_s``,
    ``tokens_per_s``, ``model_flops``/``hw_flops`` (per iteration, whole cluster), per-GPU
    ``tflops_per_gpu``/``hw_tflops_per_gpu``, ``mfu`` and ``hfu`` for layout ``L`` (ints or arrays)."""
    tp, pp, cp, v, m = L["tp"], L["pp"], L["cp"], L["vpp"], L["grad_accum"]
    dtype = activation_dtype_bytes(training.precision)
    tokens = L["micro_batch"] * training.seq_len / cp
    n_layers = model.layers / pp
    t = layer_forward_times(model, training, gpu, L)
    fwd_layer = t["linear"] + t["core"] + t["elementwise"] + t["softmax"] + t["overhead"]
    fwd_mb = n_layers * fwd_layer + logits_forward_time(model, training, gpu, L)
    rc = L["recompute"]
    full = np.where(rc == 2, recomputed_fraction(model, L), 0.0)
    recompute_mb = n_layers * (full * fwd_layer + np.where(rc == 1, t["core"] + t["softmax"], 0.0))
    sp = spans(L, order)

    tp_bw, tp_lat = link(gpu, gpus_per_node, sp["tp"])
    tp_raw = n_layers * (4.0 + 2.0 * full) * all_reduce(tp_message_bytes(model.hidden, tokens, dtype), tp, tp_bw,
                                                         tp_lat)
    gemm = n_layers * (3.0 + full) * t["linear"]
    tp_mb = np.where(L["tp_comm_overlap"] > 0,
                     np.maximum(tp_raw - TP_OVERLAP * gemm, (1.0 - TP_OVERLAP) * tp_raw), tp_raw)

    cp_bw, cp_lat = link(gpu, gpus_per_node, sp["cp"])
    kv_local = model.head_dim * np.maximum(model.n_kv_heads / tp, 1.0)
    ring = (cp - 1) * p2p(cp_ring_bytes(kv_local, tokens, dtype), cp_bw, cp_lat)
    passes = 3.0 + full + np.where(rc == 1, 1.0, 0.0)
    cp_mb = n_layers * passes * np.maximum(ring - t["core"], 0.0)

    t_mb = 3.0 * fwd_mb + recompute_mb + tp_mb + cp_mb
    pp_bw, pp_lat = link(gpu, gpus_per_node, sp["pp"])
    msg = p2p(pp_message_bytes(model.hidden, tokens, tp, dtype), pp_bw, pp_lat)
    win_bwd = 2.0 * fwd_mb + recompute_mb
    out = {
        "compute": 3.0 * m * fwd_mb,
        "recompute": m * recompute_mb,
        "tp_comm": m * tp_mb,
        "cp_comm": m * cp_mb,
        "pp_bubble": (pp - 1) / v * t_mb,
        "pp_p2p": np.where(pp > 1, 2.0 * (m * v + pp - 1) * msg, 0.0),
        "dp_comm_exposed": dp_comm_exposed(model, training, gpu, gpus_per_node, L, fwd_mb, win_bwd, order),
        "optimizer": optimizer_time(model, training, gpu, L),
    }
    step = sum(out[k] for k in BREAKDOWN)
    world = tp * pp * cp * L["dp"]
    model_flops, hw_flops = iteration_flops(model, training, L)
    peak = peak_flops(gpu, training.precision)[0]
    out["step_time_s"] = step
    out["tokens_per_s"] = L["micro_batch"] * m * L["dp"] * training.seq_len / step
    out["model_flops"] = model_flops
    out["hw_flops"] = hw_flops
    out["tflops_per_gpu"] = model_flops / step / world / 1e12
    out["hw_tflops_per_gpu"] = hw_flops / step / world / 1e12
    out["mfu"] = out["tflops_per_gpu"] * 1e12 / peak
    out["hfu"] = out["hw_tflops_per_gpu"] * 1e12 / peak
    shape = np.broadcast_shapes(*(np.shape(x) for x in L.values()))
    if shape == ():
        return {k: float(x) for k, x in out.items()}
    return {k: np.broadcast_to(np.asarray(x, dtype=float), shape).copy() for k, x in out.items()}
