"""Collective costs (α–β ring model), rank placement and per-parallelism message sizes.

Ring collectives over n ranks with per-GPU, per-direction bandwidth β and per-step latency α
(Thakur et al. 2005; NCCL's ring algorithm): all-reduce 2(n−1)/n · M/β + 2(n−1)·α; reduce-scatter and
all-gather (n−1)/n · M/β + (n−1)·α, M the full message in bytes. One rank sends 2(n−1)/n · M bytes
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
    "all_reduce",
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


def all_reduce(nbytes: Any, n: Any, bw: Any, lat: Any) -> Any:
    """Ring all-reduce of ``nbytes`` over ``n`` ranks: 2(n−1)/n·M/β + 2(n−1)·α (0 when n = 1)."""
    return 2.0 * (n - 1) / n * nbytes / bw + 2.0 * (n - 1) * lat


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


def link(gpu: GPUSpec, gpus_per_node: int, span: Any) -> tuple[Any, Any]:
    """(bandwidth bytes/s, latency s) of a ring whose group spans ``span`` consecutive ranks."""
    inter = span > gpus_per_node
    bw = np.where(inter, gpu.inter_node_gbps, gpu.intra_node_gbps) * 1e9
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
