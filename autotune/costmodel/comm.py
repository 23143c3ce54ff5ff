"""Collective costs (α–β ring and tree models over NVLink and the nodes' NICs), rank placement and
per-parallelism message sizes.

Ring collectives over n ranks with bus bandwidth β and per-step latency α (Thakur et al. 2005; NCCL's ring
algorithm): all-reduce 2(n−1)/n · M/β + 2(n−1)·α; reduce-scatter and all-gather (n−1)/n · M/β + (n−1)·α,
M the full message in bytes. NCCL's double binary tree (Sanders et al. 2009; NCCL 2.4 release notes) moves
the same bytes per rank at about the ring's bus bandwidth but needs only 2·(log2 N + g − 1) steps for N
nodes of g ranks, so a multi-node all-reduce costs the smaller of the two (NCCL's tuner picks by size).

Bus bandwidth across nodes (NCCL multi-rail rings, one NIC per GPU on DGX/HGX systems): a group with g of
its ranks on each node runs g rings in parallel, one per rail, so its inter-node bus bandwidth is
g · (NICs per node / GPUs per node) · NIC bandwidth — all of a node's NICs when the group fills the node
(an 8-GPU ZeRO-3 shard group across DGX H100 nodes moves 8 × 50 GB/s), one NIC's share when tensor
parallelism takes the node and only one rank per node joins (g = 1: the node's other seven groups use the
other rails). It never exceeds the NVLink bandwidth the intra-node hops of the same rings need. Achieved
bus bandwidth is a fraction of line rate (GPUSpec ``nvlink_bus_eff`` and ``net_bus_eff``, defaults
:data:`NVLINK_BUS_EFF` and :data:`NET_BUS_EFF`; a calibrated profile's measured figures use 1).

All-to-all (MoE dispatch): every rank sends M/n to each peer at once (grouped point-to-point); the
(g−1)/n of M that stays inside the node crosses NVLink, the (n−g)/n that leaves crosses the rank's share of
the NICs, and the slower of the two sets the time. One rank sends 2(n−1)/n · M bytes
in an all-reduce, so Narayanan et al. 2021 (§3.2) count TP traffic as 8·b·s·h·(t−1)/t *elements* per
layer per micro-batch (four all-reduces of b·s·h elements, forward + backward): 16·b·s·h·(t−1)/t bytes
in bf16. Sequence parallelism replaces each all-reduce by a reduce-scatter + all-gather: same volume.

Placement: the mesh dims are laid out in ``order`` (default "tp-cp-dp-pp": tp innermost on adjacent
GPUs, pp outermost). A dim's group stays inside one node when the product of its size and every inner
dim's size fits in gpus_per_node; otherwise its ring crosses nodes and its bottleneck is the per-GPU
inter-node link (inter_node_gbps, inter_node_latency_us).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autotune.costmodel.layout import Layout
from autotune.spec import GPUSpec

__all__ = [
    "DIMS",
    "NVLINK_BUS_EFF",
    "NET_BUS_EFF",
    "all_reduce",
    "all_to_all",
    "group_nodes",
    "reduce_scatter",
    "all_gather",
    "p2p",
    "spans",
    "link",
    "tp_message_bytes",
    "cp_ring_bytes",
    "pp_message_bytes",
]

DIMS = ("tp", "cp", "dp", "pp")

NVLINK_BUS_EFF = 0.80
"""Achieved fraction of NVLink line rate in NCCL collectives: nccl-tests all_reduce_perf inside a DGX A100
reaches ~235 GB/s bus bandwidth of 300, inside a DGX H100 ~360 of 450 without NVLink SHARP (NVIDIA DGX
SuperPOD reference architectures; nccl-tests README's busbw definition)."""

NET_BUS_EFF = 0.92
"""Achieved fraction of the nodes' aggregate NIC line rate: multi-node nccl-tests all_reduce_perf on DGX A100
(8 × HDR 200 Gb/s) reaches ~185 GB/s bus bandwidth of 200, DGX H100 (8 × NDR 400 Gb/s) ~370 of 400."""


def all_reduce(nbytes: Any, n: Any, bw: Any, lat: Any, nodes: Any = 1) -> Any:
    """All-reduce of ``nbytes`` over ``n`` ranks on ``nodes`` nodes: the ring's 2(n−1)/n·M/β + 2(n−1)·α, or
    across nodes the double binary tree's 2(n−1)/n·M/β + 2·(log2 N + g − 1)·α when that is cheaper (0 when
    n = 1)."""
    ring = 2.0 * (n - 1) / n * nbytes / bw + 2.0 * (n - 1) * lat
    nodes = np.maximum(nodes, 1)
    g = np.maximum(n / nodes, 1.0)
    tree = 2.0 * (n - 1) / n * nbytes / bw + 2.0 * (np.log2(nodes) + g - 1.0) * lat
    return np.where(nodes > 1, np.minimum(ring, tree), ring)


def all_to_all(nbytes: Any, n: Any, g: Any, intra_bw: Any, inter_bw: Any, lat: Any) -> Any:
    """All-to-all where each of ``n`` ranks (``g`` per node) sends ``nbytes`` in all (M/n per peer):
    max((g−1)/n·M/β_nvlink, (n−g)/n·M/β_nic) + α, 0 when n = 1."""
    g = np.minimum(g, n)
    intra = (g - 1) / n * nbytes / intra_bw
    inter = (n - g) / n * nbytes / inter_bw
    return np.where(n > 1, np.maximum(intra, inter) + lat, 0.0)


def reduce_scatter(nbytes: Any, n: Any, bw: Any, lat: Any) -> Any:
    """Ring reduce-scatter of a full ``nbytes`` message over ``n`` ranks: (n−1)/n·M/β + (n−1)·α."""
    return (n - 1) / n * nbytes / bw + (n - 1) * lat


all_gather = reduce_scatter
"""Ring all-gather producing ``nbytes`` on every rank: the same cost as a reduce-scatter."""


def p2p(nbytes: Any, bw: Any, lat: Any) -> Any:
    """One point-to-point send: M/β + α."""
    return nbytes / bw + lat


def spans(L: Layout, order: str) -> dict[str, Any]:
    """Per dim, the number of consecutive ranks its group spans: its size times every inner dim's
    (1 for a dim of size 1, whose group is a single rank)."""
    dims = order.split("-")
    if sorted(dims) != sorted(DIMS):
        raise ValueError(f"order={order!r} must name each of {', '.join(DIMS)} once, joined by '-'")
    out: dict[str, Any] = {}
    inner: Any = 1
    for d in dims:
        inner = inner * L[d]
        out[d] = np.where(L[d] > 1, inner, 1)
    return out


def group_nodes(span: Any, gpus_per_node: int) -> Any:
    """Nodes a group spanning ``span`` consecutive ranks touches (1 inside a node)."""
    return np.maximum(np.ceil(span / gpus_per_node), 1.0)


def link(gpu: GPUSpec, gpus_per_node: int, span: Any, size: Any = 1, nics_per_node: int | None = None
         ) -> tuple[Any, Any]:
    """(bus bandwidth bytes/s, latency s) of a collective over ``size`` ranks spanning ``span`` consecutive
    ranks: NVLink inside a node; across nodes the group's share of its nodes' NICs, g·NICs/GPUs·β_nic with
    g = size / nodes members per node, capped by NVLink (see the module docstring)."""
    nics = gpus_per_node if nics_per_node is None else nics_per_node
    inter = span > gpus_per_node
    nvlink = gpu.intra_node_gbps * gpu.nvlink_bus_eff * 1e9
    g = np.maximum(size / group_nodes(span, gpus_per_node), 1.0)
    net = g * nics / gpus_per_node * gpu.inter_node_gbps * gpu.net_bus_eff * 1e9
    bw = np.where(inter, np.minimum(net, nvlink), nvlink)
    lat = np.where(inter, gpu.inter_node_latency_us, gpu.intra_node_latency_us) * 1e-6
    return bw, lat


def tp_message_bytes(hidden: int, tokens: Any, dtype_bytes: float) -> Any:
    """Bytes of one TP all-reduce (or reduce-scatter + all-gather input): the layer output, tokens·h."""
    return tokens * hidden * dtype_bytes


def cp_ring_bytes(kv_local: Any, tokens: Any, dtype_bytes: float) -> Any:
    """Bytes one rank passes to its ring neighbour per ring step in forward: its K and V chunks,
    2·(b·s/cp)·(g·d/tp) elements (Liu et al. 2023, Ring Attention)."""
    return 2.0 * tokens * kv_local * dtype_bytes


def pp_message_bytes(hidden: int, tokens: Any, tp: Any, dtype_bytes: float) -> Any:
    """Bytes crossing one stage boundary per micro-batch and direction on one rank: b·s·h/cp/tp
    elements; with sequence parallelism the activation is already split over tp, without it
    Megatron's scatter/gather optimisation (Narayanan et al. 2021, §4.1) splits it before sending."""
    return tokens * hidden / tp * dtype_bytes
