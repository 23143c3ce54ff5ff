"""Step time of one optimizer step: the analytic model that scores a layout (scalar or vectorised).

The slowest pipeline stage sets the pace: evenly split the last (its l/pp layers plus the output layer);
with uneven stages (:mod:`autotune.pipeline`) the first, a middle or the last stage, each timed with its
own layer count (``slowest_stage`` says which: 0, 1 or p − 1). Per micro-batch it spends
t_mb = compute (forward + 2× backward) + recompute + exposed TP + exposed CP communication; a step
runs m = grad_accum micro-batches, so

    step = m·t_mb + bubble + p2p + exposed DP/ZeRO communication + optimizer,
    bubble = (p−1)/v · t_mb     (1F1B: fraction (p−1)/m of the busy time; interleaved: (p−1)/(v·m)),

(Narayanan et al. 2021, §2.2; GPipe, ``pp_schedule`` 1, has the same (p−1)/m bubble, Huang et al.
2019). Point-to-point sends sit on the critical path: each micro-batch crosses v boundaries of the
stage forward and v backward, plus p−1 hops to fill and drain the pipeline.

Overlap (only the exposed part counts):
- TP with ``tp_comm_overlap``: at most TP_OVERLAP of the collectives hide behind at most TP_OVERLAP of
  the linear GEMMs (Megatron-LM / Transformer Engine userbuffers overlap pipelines GEMM chunks with
  communication chunks; Wang et al. 2023, ASPLOS, hide most but not all of it). The overlapped GEMMs slow
  by the stack's ``comm_compute_slowdown`` of the hidden time (the communication kernels hold SMs: TE's
  userbuffers reserve ``num_sm`` SMs per overlap).
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
    group_nodes,
    link,
    p2p,
    pp_message_bytes,
    reduce_scatter,
    spans,
    tp_message_bytes,
)
from autotune.costmodel.compute import (
    activation_dtype_bytes,
    fp8_active,
    layer_backward_times,
    layer_forward_times,
    layer_step_time,
    logits_forward_time,
    peak_flops,
)
from autotune.costmodel.flops import iteration_flops, stage_recomputed_fraction
from autotune.costmodel.layout import Layout
from autotune.costmodel.memory import largest_stage_params, model_state_bytes
from autotune.costmodel.moe import expert_shard
from autotune.pipeline import stage_layers
from autotune.spec import GPUSpec, ModelSpec, StackSpec, TrainingSpec

__all__ = ["TP_OVERLAP", "BUCKET_PARAMS", "BREAKDOWN", "dp_comm_exposed", "optimizer_time", "step_time"]

TP_OVERLAP = 0.8
"""Largest fraction of TP collectives (and of the linear GEMM time) that ``tp_comm_overlap`` overlaps."""

BUCKET_PARAMS = 40e6
"""Gradient bucket, parameters: Megatron-LM's DDP default (``--ddp-bucket-size`` 40M)."""

BREAKDOWN = ("compute", "recompute", "tp_comm", "cp_comm", "pp_bubble", "pp_p2p", "dp_comm_exposed", "optimizer")
"""Keys of ``time_breakdown_s``, in seconds per optimizer step; they sum to ``step_time_s``."""


def _hide(comm: Any, window: Any, flag: Any, frac: Any, slowdown: float = 0.0) -> Any:
    """Exposed part of ``comm`` overlapped (if ``flag``) with ``window``; ``frac`` never hides. While the
    hidden part runs, compute slows by ``slowdown`` of it (NCCL kernels hold SMs and HBM bandwidth)."""
    exposed = np.maximum(comm - window, comm * frac)
    return np.where(flag > 0, exposed + slowdown * (comm - exposed), comm)


def dp_comm_exposed(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, gpus_per_node: int, L: Layout,
                    win_fwd: Any, win_bwd: Any, order: str, nics_per_node: int | None = None,
                    slowdown: float = 0.0) -> Any:
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

    Bandwidths are the groups' own (:func:`autotune.costmodel.comm.link`): a shard group filling its nodes
    moves its traffic over all of their NICs; the replica all-reduce may run as a tree across nodes.
    """
    psi = largest_stage_params(model, L, experts=False)
    gb = 4.0 if training.precision == "fp32" or training.grad_buffers == "fp32" else 2.0
    pb = activation_dtype_bytes(training.precision)
    zero, m = L["zero"], L["grad_accum"]
    n = np.where(zero >= 1, L["dp_shard"], 1)
    reps = L["dp"] * L["cp"] / n
    sp = spans(L, order)
    shard_span = sp["dp"] / L["dp"] * n
    shard_bw, shard_lat = link(gpu, gpus_per_node, shard_span, n, nics_per_node)
    rep_span = np.maximum(sp["dp"], sp["cp"])
    rep_bw, rep_lat = link(gpu, gpus_per_node, rep_span, reps, nics_per_node)
    frac = np.minimum(1.0, BUCKET_PARAMS / psi)
    ogr, opg = L["overlap_grad_reduce"], L["overlap_param_gather"]
    replica_ar = all_reduce(psi * gb / n, reps, rep_bw, rep_lat, group_nodes(rep_span, gpus_per_node))
    shard_lat = shard_lat * np.where(zero >= 3, np.maximum.reduce(stage_layers(model.layers, L)) + 1.0, 1.0)
    rs = reduce_scatter(psi * gb, n, shard_bw, shard_lat)
    ag = all_gather(psi * pb, n, shard_bw, shard_lat)
    k = slowdown
    low = _hide(rs + replica_ar, win_bwd, ogr, frac, k) + _hide(ag, win_fwd, opg, frac, k)
    bwd = ag + rs
    high = (m * _hide(ag, win_fwd, opg, frac, k) + (m - 1) * _hide(bwd, win_bwd, ogr * opg, frac, k)
            + _hide(bwd + replica_ar, win_bwd, ogr * opg, frac, k))
    return np.where(zero >= 3, high, low)


def optimizer_time(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, L: Layout) -> Any:
    """Memory-bound optimizer step, seconds: each rank updates Ψ/n parameters (n = dp_shard under
    ZeRO ≥ 1; routed experts over their own ZeRO group, :func:`autotune.costmodel.moe.expert_shard`),
    reading and writing the optimizer states (fp32 master + moments), reading the gradient
    and writing the working weights."""
    sharded = L["zero"] >= 1
    psi = largest_stage_params(model, L, dense_divisor=np.where(sharded, L["dp_shard"], 1),
                               expert_divisor=np.where(sharded, expert_shard(L), 1))
    w, g, o = model_state_bytes(1.0, 0, 1, training)
    return psi * (2.0 * o + g + w) / (gpu.hbm_gbps * 1e9)


def step_time(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, gpus_per_node: int, L: Layout, *,
              order: str = "tp-cp-dp-pp", nics_per_node: int | None = None,
              stack: StackSpec | None = None) -> dict[str, Any]:
    """Time breakdown (seconds per optimizer step, keys :data:`BREAKDOWN`), ``step_time_s``, ``slowest_stage``,
    ``tokens_per_s``, ``model_flops``/``hw_flops`` (per iteration, whole cluster), per-GPU
    ``tflops_per_gpu``/``hw_tflops_per_gpu``, ``mfu`` and ``hfu`` for layout ``L`` (ints or arrays), on
    ``stack`` (default: ``training.stack``, else plain eager PyTorch).

    A layer's forward + backward per micro-batch is the sum of its parts (:mod:`autotune.costmodel.compute`),
    floored by the stack's host time per layer; the output layer adds its forward and 2× backward. MFU
    divides model FLOPs by the peak of the dtype the linear GEMMs run in (fp8 when they do)."""
    from autotune.catalog import resolve_stack

    stack = resolve_stack(stack if stack is not None else training.stack)
    tp, pp, cp, v, m = L["tp"], L["pp"], L["cp"], L["vpp"], L["grad_accum"]
    dtype = activation_dtype_bytes(training.precision)
    tokens = L["micro_batch"] * training.seq_len / cp
    shape = np.broadcast_shapes(*(np.shape(x) for x in L.values()))
    # Axis 0 runs over the first, a middle and the last pipeline stage; only the last has the output layer.
    n_layers = np.stack([np.broadcast_to(n, shape) for n in stage_layers(model.layers, L)])
    on_last = np.array([0.0, 0.0, 1.0]).reshape((3,) + (1,) * len(shape))
    t = layer_forward_times(model, training, gpu, L, stack)
    b = layer_backward_times(model, training, gpu, L, stack, t)
    fwd_layer = sum(t[k] for k in t)
    layer_fb = layer_step_time(stack, fwd_layer + sum(b[k] for k in b))
    logits = on_last * logits_forward_time(model, training, gpu, L)
    fwd_mb = n_layers * fwd_layer + logits
    compute_mb = n_layers * layer_fb + 3.0 * logits
    rc = L["recompute"]
    full = np.where(rc == 2, stage_recomputed_fraction(L["recompute_layers"], n_layers), 0.0)
    selective = t["core"] + t["softmax"] if stack.selective_recompute == "attention_core" else t["elementwise"]
    recompute_mb = n_layers * (full * fwd_layer + np.where(rc == 1, selective, 0.0))
    sp = spans(L, order)

    tp_bw, tp_lat = link(gpu, gpus_per_node, sp["tp"], tp, nics_per_node)
    tp_raw = n_layers * (4.0 + 2.0 * full) * all_reduce(tp_message_bytes(model.hidden, tokens, dtype), tp, tp_bw,
                                                         tp_lat)
    gemm = n_layers * (3.0 + full) * t["linear"]
    tp_exposed = np.maximum(tp_raw - TP_OVERLAP * gemm, (1.0 - TP_OVERLAP) * tp_raw)
    tp_mb = np.where(L["tp_comm_overlap"] > 0, tp_exposed + stack.comm_compute_slowdown * (tp_raw - tp_exposed),
                     tp_raw)

    cp_bw, cp_lat = link(gpu, gpus_per_node, sp["cp"], 1, nics_per_node)
    kv_local = model.head_dim * np.maximum(model.n_kv_heads / tp, 1.0)
    ring = (cp - 1) * p2p(cp_ring_bytes(kv_local, tokens, dtype), cp_bw, cp_lat)
    passes = 3.0 + full + np.where(rc == 1, 1.0, 0.0)
    cp_mb = n_layers * passes * np.maximum(ring - t["core"], 0.0)

    t_mb = compute_mb + recompute_mb + tp_mb + cp_mb
    slowest = np.where((pp > 2) & (t_mb[1] > t_mb[0]) & (t_mb[1] > t_mb[2]), 1, np.where(t_mb[0] > t_mb[2], 0, 2))

    def at_slowest(x: Any) -> Any:
        return np.where(slowest == 0, x[0], np.where(slowest == 1, x[1], x[2]))

    fwd_mb, compute_mb, recompute_mb, tp_mb, cp_mb, t_mb = (
        at_slowest(x) for x in (fwd_mb, compute_mb, recompute_mb, tp_mb, cp_mb, t_mb))
    pp_bw, pp_lat = link(gpu, gpus_per_node, sp["pp"], 1, nics_per_node)
    msg = p2p(pp_message_bytes(model.hidden, tokens, tp, dtype), pp_bw, pp_lat)
    win_bwd = compute_mb - fwd_mb + recompute_mb
    out = {
        "compute": m * compute_mb,
        "recompute": m * recompute_mb,
        "tp_comm": m * tp_mb,
        "cp_comm": m * cp_mb,
        "pp_bubble": (pp - 1) / v * t_mb,
        "pp_p2p": np.where(pp > 1, 2.0 * (m * v + pp - 1) * msg, 0.0),
        "dp_comm_exposed": dp_comm_exposed(model, training, gpu, gpus_per_node, L, fwd_mb, win_bwd, order,
                                           nics_per_node, stack.comm_compute_slowdown),
        "optimizer": optimizer_time(model, training, gpu, L),
    }
    step = sum(out[k] for k in BREAKDOWN)
    world = tp * pp * cp * L["dp"]
    model_flops, hw_flops = iteration_flops(model, training, L)
    lin_peak, core_peak = peak_flops(gpu, training.precision)
    peak = lin_peak if fp8_active(gpu, stack, training) else core_peak
    out["step_time_s"] = step
    out["tokens_per_s"] = L["micro_batch"] * m * L["dp"] * training.seq_len / step
    out["model_flops"] = model_flops
    out["hw_flops"] = hw_flops
    out["tflops_per_gpu"] = model_flops / step / world / 1e12
    out["hw_tflops_per_gpu"] = hw_flops / step / world / 1e12
    out["mfu"] = out["tflops_per_gpu"] * 1e12 / peak
    out["hfu"] = out["hw_tflops_per_gpu"] * 1e12 / peak
    out["slowest_stage"] = np.where(slowest == 2, pp - 1, slowest)
    if shape == ():
        return {k: float(x) for k, x in out.items()}
    return {k: np.broadcast_to(np.asarray(x, dtype=float), shape).copy() for k, x in out.items()}
