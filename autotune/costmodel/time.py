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

Mixture of experts (:mod:`autotune.costmodel.moe_time`): each stage times its dense and its MoE layers
separately, the middle one being the middle stage with the most MoE layers
(:func:`autotune.costmodel.moe.busiest_stage_moe_layers`; ``slowest_stage`` p − 2); an MoE layer adds to its
attention block and shared experts the router, the grouped expert GEMMs and the token permutation of its busiest
rank, and
its dispatch/combine all-to-alls and etp collectives (``ep_comm``, exposed unless ``moe_a2a_overlap``
hides them behind the other micro-batch's compute) join the micro-batch time, so the bubble grows with
them. Expert gradients reduce over edp in ``dp_comm_exposed``. Model FLOPs and MFU stay active-parameter
FLOPs (:mod:`autotune.costmodel.flops`).

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
    gemm_precision,
    layer_backward_times,
    layer_forward_times,
    layer_step_time,
    logits_forward_time,
)
from autotune.costmodel.flops import iteration_flops, stage_recomputed_fraction
from autotune.costmodel.layout import Layout
from autotune.costmodel.memory import largest_stage_params, model_state_bytes
from autotune.costmodel.moe import busiest_stage_moe_layers, expert_shard, expert_stage_params
from autotune.costmodel.moe_time import (
    MOE_KEYS,
    a2a_time,
    ep_comm_per_layer,
    etp_time,
    expert_span,
    moe_backward_times,
    moe_forward_times,
    rows_per_expert,
)
from autotune.pipeline import stage_layers
from autotune.spec import GPUSpec, ModelSpec, StackSpec, TrainingSpec

__all__ = ["TP_OVERLAP", "BUCKET_PARAMS", "BREAKDOWN", "MOE_DETAIL", "dp_comm_exposed", "expert_grad_comm",
           "optimizer_time", "step_time"]

TP_OVERLAP = 0.8
"""Largest fraction of TP collectives (and of the linear GEMM time) that ``tp_comm_overlap`` overlaps."""

BUCKET_PARAMS = 40e6
"""Gradient bucket, parameters: Megatron-LM's DDP default (``--ddp-bucket-size`` 40M)."""

BREAKDOWN = ("compute", "recompute", "tp_comm", "cp_comm", "ep_comm", "pp_bubble", "pp_p2p", "dp_comm_exposed",
             "optimizer")
"""Keys of ``time_breakdown_s``, in seconds per optimizer step; they sum to ``step_time_s``."""

MOE_DETAIL = MOE_KEYS + ("a2a", "etp_comm", "ep_hidden", "expert_grad_comm", "rows_per_expert")
"""Keys of an MoE model's ``moe_time_s`` (step_time's ``moe_<key>``; they are parts of the breakdown, not
extra terms): seconds per step of the slowest stage's routed blocks, forward + backward (``router``,
``experts``, ``permute``, ``expert_cast``; inside ``compute``), its all-to-alls and etp collectives before
overlap (``a2a``, ``etp_comm``) and what overlap hid of them (``ep_hidden``; ``ep_comm`` is the rest), the
expert gradients' data-parallel traffic before overlap (``expert_grad_comm``; inside ``dp_comm_exposed``),
and the token copies per local expert of one grouped GEMM (``rows_per_expert``, not seconds)."""


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

    Mixture of experts: the routed experts' gradients are reduced over their own expert data-parallel group
    edp (:func:`expert_grad_comm`), beside the dense ones and in the same windows; the last bucket of the
    two together cannot hide.
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
    if model.is_moe:
        rs_e, ar_e, ag_e = expert_grad_comm(model, training, gpu, gpus_per_node, L, order, nics_per_node)
        rs, replica_ar, ag = rs + rs_e, replica_ar + ar_e, ag + ag_e
        frac = np.minimum(1.0, BUCKET_PARAMS / (psi + _expert_params(model, L)))
    k = slowdown
    low = _hide(rs + replica_ar, win_bwd, ogr, frac, k) + _hide(ag, win_fwd, opg, frac, k)
    bwd = ag + rs
    high = (m * _hide(ag, win_fwd, opg, frac, k) + (m - 1) * _hide(bwd, win_bwd, ogr * opg, frac, k)
            + _hide(bwd + replica_ar, win_bwd, ogr * opg, frac, k))
    return np.where(zero >= 3, high, low)


def _expert_params(model: ModelSpec, L: Layout) -> Any:
    """Routed-expert parameters on a rank of the stage that holds the most of them."""
    first, mid, last = expert_stage_params(model, L)
    return np.maximum(np.maximum(first, last), np.where(L["pp"] > 2, mid, 0.0))


def expert_grad_comm(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, gpus_per_node: int, L: Layout,
                     order: str, nics_per_node: int | None = None) -> tuple[Any, Any, Any]:
    """(reduce-scatter, replica all-reduce, all-gather) seconds of the routed experts' states per step, as
    :func:`dp_comm_exposed` counts the dense ones, over the expert data-parallel group edp = tp·cp·dp/(etp·ep)
    (Megatron-LM core_v0.19.0 keeps a separate expert-data-parallel gradient buffer and distributed
    optimizer over it): zero 0 all-reduces Ψ_e gradients over edp; ZeRO shards over
    :func:`autotune.costmodel.moe.expert_shard` ranks (consecutive edp members, strided by etp·ep) and
    all-reduces across the edp/shard replicas (the whole stage's span). Ψ_e: the rank's routed-expert
    parameters on its stage that holds the most."""
    psi = _expert_params(model, L)
    gb = 4.0 if training.precision == "fp32" or training.grad_buffers == "fp32" else 2.0
    pb = activation_dtype_bytes(training.precision)
    zero, inner = L["zero"], L["etp"] * L["ep"]
    edp = L["tp"] * L["cp"] * L["dp"] / inner
    n = np.where(zero >= 1, expert_shard(L), 1.0)
    reps = edp / n
    shard_bw, shard_lat = link(gpu, gpus_per_node, expert_span(L, order, np.where(n > 1, inner * n, 1)), n,
                               nics_per_node)
    rep_span = expert_span(L, order, np.where(reps > 1, inner * edp, 1))
    rep_bw, rep_lat = link(gpu, gpus_per_node, rep_span, reps, nics_per_node)
    shard_lat = shard_lat * np.where(zero >= 3, np.maximum.reduce(stage_layers(model.layers, L)) + 1.0, 1.0)
    rs = reduce_scatter(psi * gb, n, shard_bw, shard_lat)
    ar = all_reduce(psi * gb / n, reps, rep_bw, rep_lat, group_nodes(rep_span, gpus_per_node))
    return rs, ar, all_gather(psi * pb, n, shard_bw, shard_lat)


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
    gemm = n_layers * (3.0 + full) * t["linear"]
    sp = spans(L, order)
    if model.is_moe:
        # An MoE layer is a dense layer plus its difference (attention + shared experts + routed block).
        n_moe = np.stack([np.broadcast_to(moe, shape) for moe in busiest_stage_moe_layers(model, L)])
        width = model.shared_experts * model.shared_expert_ffn
        ta = layer_forward_times(model, training, gpu, L, stack, mlp_width=width)
        ba = layer_backward_times(model, training, gpu, L, stack, ta, mlp_width=width)
        tr = moe_forward_times(model, training, gpu, L, stack)
        br = moe_backward_times(model, training, gpu, L, stack, tr)
        fwd_moe = sum(ta[k] for k in ta) + sum(tr[k] for k in tr)
        moe_fb = layer_step_time(stack, fwd_moe + sum(ba[k] for k in ba) + sum(br[k] for k in br))
        fwd_mb = fwd_mb + n_moe * (fwd_moe - fwd_layer)
        compute_mb = compute_mb + n_moe * (moe_fb - layer_fb)
        recompute_mb = recompute_mb + n_moe * full * (fwd_moe - fwd_layer)
        gemm = gemm + n_moe * (3.0 + full) * (ta["linear"] - t["linear"])
        ep_raw = n_moe * ep_comm_per_layer(model, training, gpu, gpus_per_node, L, order, full, nics_per_node)
        ep_mb = _hide(ep_raw, n_moe * moe_fb, L["moe_a2a_overlap"], 1.0 / m, stack.comm_compute_slowdown)
        passes = n_moe * (4.0 + 2.0 * full)
        detail = {k: n_moe * (tr[k] + br[k]) for k in MOE_KEYS} | {
            "a2a": passes * a2a_time(model, training, gpu, gpus_per_node, L, order, nics_per_node),
            "etp_comm": passes * etp_time(model, training, gpu, gpus_per_node, L, order, nics_per_node),
            "ep_hidden": ep_raw - ep_mb}

    tp_bw, tp_lat = link(gpu, gpus_per_node, sp["tp"], tp, nics_per_node)
    tp_raw = n_layers * (4.0 + 2.0 * full) * all_reduce(tp_message_bytes(model.hidden, tokens, dtype), tp, tp_bw,
                                                         tp_lat)
    tp_exposed = np.maximum(tp_raw - TP_OVERLAP * gemm, (1.0 - TP_OVERLAP) * tp_raw)
    tp_mb = np.where(L["tp_comm_overlap"] > 0, tp_exposed + stack.comm_compute_slowdown * (tp_raw - tp_exposed),
                     tp_raw)

    cp_bw, cp_lat = link(gpu, gpus_per_node, sp["cp"], 1, nics_per_node)
    kv_local = model.head_dim * np.maximum(model.n_kv_heads / tp, 1.0)
    ring = (cp - 1) * p2p(cp_ring_bytes(kv_local, tokens, dtype), cp_bw, cp_lat)
    passes = 3.0 + full + np.where(rc == 1, 1.0, 0.0)
    cp_mb = n_layers * passes * np.maximum(ring - t["core"], 0.0)

    t_mb = compute_mb + recompute_mb + tp_mb + cp_mb
    if model.is_moe:
        t_mb = t_mb + ep_mb
    slowest = np.where((pp > 2) & (t_mb[1] > t_mb[0]) & (t_mb[1] > t_mb[2]), 1, np.where(t_mb[0] > t_mb[2], 0, 2))

    def at_slowest(x: Any) -> Any:
        return np.where(slowest == 0, x[0], np.where(slowest == 1, x[1], x[2]))

    fwd_mb, compute_mb, recompute_mb, tp_mb, cp_mb, t_mb = (
        at_slowest(x) for x in (fwd_mb, compute_mb, recompute_mb, tp_mb, cp_mb, t_mb))
    ep_mb = at_slowest(ep_mb) if model.is_moe else 0.0
    pp_bw, pp_lat = link(gpu, gpus_per_node, sp["pp"], 1, nics_per_node)
    msg = p2p(pp_message_bytes(model.hidden, tokens, tp, dtype), pp_bw, pp_lat)
    win_bwd = compute_mb - fwd_mb + recompute_mb
    out = {
        "compute": m * compute_mb,
        "recompute": m * recompute_mb,
        "tp_comm": m * tp_mb,
        "cp_comm": m * cp_mb,
        "ep_comm": m * ep_mb,
        "pp_bubble": (pp - 1) / v * t_mb,
        "pp_p2p": np.where(pp > 1, 2.0 * (m * v + pp - 1) * msg, 0.0),
        "dp_comm_exposed": dp_comm_exposed(model, training, gpu, gpus_per_node, L, fwd_mb, win_bwd, order,
                                           nics_per_node, stack.comm_compute_slowdown),
        "optimizer": optimizer_time(model, training, gpu, L),
    }
    step = sum(out[k] for k in BREAKDOWN)
    world = tp * pp * cp * L["dp"]
    model_flops, hw_flops = iteration_flops(model, training, L, stack.selective_recompute)
    peak = gpu.peak(gemm_precision(gpu, stack, training)) * 1e12
    out["step_time_s"] = step
    out["tokens_per_s"] = L["micro_batch"] * m * L["dp"] * training.seq_len / step
    out["model_flops"] = model_flops
    out["hw_flops"] = hw_flops
    out["tflops_per_gpu"] = model_flops / step / world / 1e12
    out["hw_tflops_per_gpu"] = hw_flops / step / world / 1e12
    out["mfu"] = out["tflops_per_gpu"] * 1e12 / peak
    out["hfu"] = out["hw_tflops_per_gpu"] * 1e12 / peak
    out["slowest_stage"] = np.where(slowest == 2, pp - 1, np.where((slowest == 1) & model.is_moe, pp - 2, slowest))
    if model.is_moe:
        out |= {f"moe_{k}": m * at_slowest(x) for k, x in detail.items()}
        out["moe_expert_grad_comm"] = sum(expert_grad_comm(model, training, gpu, gpus_per_node, L, order,
                                                           nics_per_node))
        out["moe_rows_per_expert"] = rows_per_expert(model, training, L)
    if shape == ():
        return {k: float(x) for k, x in out.items()}
    return {k: np.broadcast_to(np.asarray(x, dtype=float), shape).copy() for k, x in out.items()}
