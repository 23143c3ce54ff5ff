"""Time of the mixture-of-experts part of an MoE layer: router, routed experts as grouped GEMMs, token
permutation, and the expert-parallel all-to-all and expert-tensor-parallel collectives around them.

An MoE layer is its attention block plus the shared experts, timed as a dense block whose MLP is the
shared experts' (:func:`autotune.costmodel.compute.layer_forward_times` with ``mlp_width``), plus:

- Router: a replicated h×E GEMM on the rank's tokens (Megatron-LM's TopKRouter is not tensor-parallel),
  2·h·E FLOPs per token at the GEMM curve of width E, one launch; its scoring (softmax or sigmoid) and top-k
  read and write the fp32 logits, :data:`ROUTER_PASSES` passes of 4·E bytes per token.
- Routed experts: the busiest rank processes c = imbalance · k · etp · tokens copies (imbalance from
  :func:`autotune.costmodel.moe.imbalance`), each at width f_e/etp, so each of its E/ep local experts gets
  c·ep/E rows. Megatron-LM's ``--moe-grouped-gemm`` (TEGroupedMLP / CUTLASS grouped GEMM) runs the local
  experts of fc1 and of fc2 as one launch each, so the latency counts twice per layer, not per expert;
  the efficiency is :func:`autotune.costmodel.compute.gemm_efficiency` of width f_e/etp over c·ep/E rows
  (fp8: the fp8 curve), the FLOPs c · 2·(3 or 2)·h·f_e/etp.
- Permutation (Megatron-LM core_v0.19.0 ``MoEAlltoAllTokenDispatcher``): tokens are permuted into k copies
  before the all-to-all and unpermuted (probability-weighted) after it, and the received copies are sorted by
  local expert and back: each pass reads and writes h elements per copy. The experts' activation function
  reads and writes (3 or 2)·f_e/etp elements per copy. Backward moves twice the forward's bytes. fp8 adds the
  quantisation of the expert GEMMs' inputs and weights (as :mod:`autotune.costmodel.compute`).

Communication per MoE layer per micro-batch (forward: dispatch + combine; backward: the same two in
reverse; full recompute runs the forward pair again): each is an all-to-all over the ep group of the
busiest rank's imbalance · k · tokens · h activations (:func:`autotune.costmodel.comm.all_to_all`: the
(g−1)/ep of it that stays in the node over NVLink, the rest over the rank's share of its node's NICs).
With etp > 1 the dispatched copies are all-gathered over the etp group before the experts and
reduce-scattered after them (Megatron-LM's AlltoAll dispatcher: "A2A over EP → AG over TP").

Placement (Megatron-LM core_v0.19.0 ``parallel_state``: the expert rank generator folds a stage's
tp·cp·dp ranks as etp innermost, then ep, then edp): the etp group takes etp consecutive stage ranks, the
ep group etp·ep, the edp group all tp·cp·dp of them. A stage's ranks are consecutive when pp is outermost
in the placement order; when dims inside pp cannot hold the group, it is strided by pp
(:func:`expert_span`). Its span decides intra- vs inter-node and members per node
(:func:`autotune.costmodel.comm.link`).

Overlap (``moe_a2a_overlap``, Megatron-LM core_v0.19.0 ``--overlap-moe-expert-parallel-comm``: the
combined 1F1B schedule, ``pipeline_parallel/combined_1f1b.py``, runs the forward of one micro-batch beside
the backward of another so "EP A2A in forward step is hidden by the attention/mlp computation in the
backward step, and vice versa"; DeepEP-style dispatch kernels do the same): a layer's all-to-all and etp
collectives hide behind the other micro-batch's compute of that layer (its forward + backward). The first
micro-batch's forward and the last one's backward have no partner, so 1/m of it is always exposed; and
while it hides, compute slows by the stack's ``comm_compute_slowdown`` of the hidden part.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autotune.costmodel.comm import all_gather, all_to_all, group_nodes, link
from autotune.costmodel.compute import (
    activation_dtype_bytes,
    fp8_active,
    fp8_gemm_efficiency,
    gemm_efficiency,
    peak_flops,
    sustained_peaks,
)
from autotune.costmodel.layout import Layout
from autotune.costmodel.moe import moe_tokens_per_rank, routed_copies_per_rank
from autotune.spec import GPUSpec, ModelSpec, StackSpec, TrainingSpec

__all__ = ["ROUTER_PASSES", "EXPERT_GEMMS", "MOE_KEYS", "expert_span", "rows_per_expert", "moe_forward_times",
           "moe_backward_times", "a2a_time", "etp_time", "ep_comm_per_layer"]

ROUTER_PASSES = 3
"""Passes over the fp32 router logits per token in forward: scoring reads and writes them, top-k reads them."""
EXPERT_GEMMS = 2
"""Grouped GEMM launches per MoE layer forward: fc1 (+gate) and fc2 over all local experts."""
MOE_KEYS = ("router", "experts", "permute", "expert_cast")
"""Parts of an MoE layer's routed block in :func:`moe_forward_times` and :func:`moe_backward_times`."""


def expert_span(L: Layout, order: str, size: Any) -> Any:
    """Consecutive ranks a group of ``size`` consecutive stage ranks spans: ``size`` when the dims inside pp
    in ``order`` hold it, else size·pp (the stage's ranks are strided by pp); 1 for a group of one."""
    dims = order.split("-")
    inner: Any = 1
    for d in dims[:dims.index("pp")]:
        inner = inner * L[d]
    return np.where(size > 1, np.where(size <= inner, size, size * L["pp"]), 1)


def rows_per_expert(model: ModelSpec, training: TrainingSpec, L: Layout) -> Any:
    """Token copies each local expert of the busiest rank processes per MoE layer per micro-batch:
    imbalance · k · etp · tokens · ep / E."""
    return routed_copies_per_rank(model, training, L) * L["ep"] / model.experts


def moe_forward_times(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, L: Layout, stack: StackSpec
                      ) -> dict[str, Any]:
    """Seconds of one MoE layer's routed block in forward, one micro-batch, the busiest rank: ``router``
    (GEMM), ``experts`` (grouped GEMMs), ``permute`` (router scoring, permutation, activation) and
    ``expert_cast`` (fp8 quantisation of the expert GEMMs' inputs and weights)."""
    h, fe, etp = model.hidden, model.expert_ffn, L["etp"]
    lin_peak, core_peak = sustained_peaks(gpu, peak_flops(gpu, training.precision))
    fp8 = fp8_active(gpu, stack, training)
    if training.precision == "fp8" and not fp8:
        lin_peak = core_peak
    latency = gpu.gemm_latency_us * 1e-6
    tokens = moe_tokens_per_rank(training, L)
    router = tokens * 2.0 * h * model.experts / (core_peak * gemm_efficiency(gpu, float(model.experts), tokens))
    copies = routed_copies_per_rank(model, training, L)
    rows = rows_per_expert(model, training, L)
    width = fe / etp
    eff = fp8_gemm_efficiency(gpu, width, rows) if fp8 else gemm_efficiency(gpu, width, rows)
    experts = copies * 2.0 * model.mlp_matrices * h * width / (lin_peak * eff) + EXPERT_GEMMS * latency
    dtype = activation_dtype_bytes(training.precision)
    k = model.experts_per_token
    act = (3 if model.mlp_matrices == 3 else 2) * width
    elements = tokens * 2 * 2 * k * h + copies * (2 * 2 * h + act)
    hbm = gpu.hbm_gbps * 1e9
    permute = (elements * dtype + tokens * ROUTER_PASSES * 4.0 * model.experts) / hbm
    cast = 0.0
    if fp8:
        weights = model.experts / L["ep"] * model.mlp_params(fe) / etp
        cast = (copies * (h + width) + weights) * stack.fp8_cast_bytes / hbm
    return {"router": router + latency, "experts": experts, "permute": permute, "expert_cast": cast}


def moe_backward_times(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, L: Layout, stack: StackSpec,
                       fwd: dict[str, Any]) -> dict[str, Any]:
    """Seconds of the routed block's backward, keys as ``fwd``: GEMMs (data and weight gradients) and
    element-wise traffic twice the forward's; fp8 quantises the output gradients of fc2 and fc1."""
    cast = 0.0
    if fp8_active(gpu, stack, training):
        width = model.expert_ffn / L["etp"]
        copies = routed_copies_per_rank(model, training, L)
        cast = copies * (model.hidden + (model.mlp_matrices - 1) * width) * stack.fp8_cast_bytes / (
            gpu.hbm_gbps * 1e9)
    return {"router": 2.0 * fwd["router"], "experts": 2.0 * fwd["experts"], "permute": 2.0 * fwd["permute"],
            "expert_cast": cast}


def a2a_time(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, gpus_per_node: int, L: Layout,
             order: str, nics_per_node: int | None = None) -> Any:
    """Seconds of one all-to-all (a dispatch or a combine) of one MoE layer and micro-batch over the ep group:
    imbalance · k · tokens · h activations leave the busiest rank, M/ep to each peer."""
    ep = L["ep"]
    span = expert_span(L, order, L["etp"] * ep)
    nodes = group_nodes(span, gpus_per_node)
    nvlink, _ = link(gpu, gpus_per_node, 1, 1, nics_per_node)
    nic, lat = link(gpu, gpus_per_node, span, nodes, nics_per_node)
    nbytes = routed_copies_per_rank(model, training, L) / L["etp"] * model.hidden * activation_dtype_bytes(
        training.precision)
    return all_to_all(nbytes, ep, ep / nodes, nvlink, nic, lat)


def etp_time(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, gpus_per_node: int, L: Layout,
             order: str, nics_per_node: int | None = None) -> Any:
    """Seconds of one all-gather (or the reduce-scatter after the experts) of the dispatched copies over the
    etp group: each rank ends with all etp ranks' copies, c·h activations (0 when etp = 1)."""
    etp = L["etp"]
    bw, lat = link(gpu, gpus_per_node, expert_span(L, order, etp), etp, nics_per_node)
    nbytes = routed_copies_per_rank(model, training, L) * model.hidden * activation_dtype_bytes(training.precision)
    return np.where(etp > 1, all_gather(nbytes, etp, bw, lat), 0.0)


def ep_comm_per_layer(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, gpus_per_node: int, L: Layout,
                      order: str, full: Any, nics_per_node: int | None = None) -> Any:
    """Seconds of expert-parallel communication per MoE layer per micro-batch, before any overlap: the
    dispatch and combine all-to-alls and the etp all-gather and reduce-scatter, forward and backward, and
    the forward pair again on the ``full`` fraction of layers fully recomputed."""
    one = a2a_time(model, training, gpu, gpus_per_node, L, order, nics_per_node) + etp_time(
        model, training, gpu, gpus_per_node, L, order, nics_per_node)
    return (4.0 + 2.0 * full) * one
