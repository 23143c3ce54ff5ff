"""The collective model against hand-worked numbers: ring vs tree, multi-rail NIC bandwidth, all-to-all."""

from __future__ import annotations

import math

import pytest

from autotune.catalog import get_gpu
from autotune.costmodel.comm import all_reduce, all_to_all, group_nodes, link


def test_ring_and_tree_all_reduce_by_hand() -> None:
    # 64 ranks on 8 nodes (g = 8), 1 MB, bus bandwidth 100 GB/s, alpha 10 us.
    n, nodes, m, bw, a = 64, 8, 1e6, 100e9, 10e-6
    bandwidth = 2 * 63 / 64 * m / bw  # 19.6875 us, the same bytes per rank for both algorithms
    ring = bandwidth + 2 * 63 * a  # 1,260 us of latency: 2(n-1) steps
    tree = bandwidth + 2 * (math.log2(8) + 8 - 1) * a  # 2(log2 N + g - 1) = 20 steps: 200 us
    assert all_reduce(m, n, bw, a) == pytest.approx(ring)  # one node: always the ring
    assert all_reduce(m, n, bw, a, nodes) == pytest.approx(tree)
    # a 10 GB gradient: the latency is noise, both cost 2(n-1)/n·M/β
    big = 10e9
    assert all_reduce(big, n, bw, a, nodes) == pytest.approx(2 * 63 / 64 * big / bw, rel=2e-3)


def test_inter_node_bus_bandwidth_is_the_groups_share_of_the_nics() -> None:
    h100 = get_gpu("h100-sxm")  # NVLink 450 GB/s x 0.80, NDR 50 GB/s per NIC x 0.92, 8 GPUs and 8 NICs a node
    nvlink, nic = 450e9 * 0.80, 50e9 * 0.92
    bw, _ = link(h100, 8, span=8, size=8)
    assert bw == pytest.approx(nvlink)
    bw, _ = link(h100, 8, span=64, size=64)  # ZeRO-3 over 8 nodes: all 8 rails, 368 GB/s, capped by NVLink's 360
    assert bw == pytest.approx(min(8 * nic, nvlink))
    bw, _ = link(h100, 8, span=64, size=8)  # dp across nodes under tp=8: one member a node, one rail
    assert bw == pytest.approx(nic)
    bw, _ = link(h100, 8, span=64, size=64, nics_per_node=4)  # half the NICs: half the bandwidth
    assert bw == pytest.approx(4 * nic)
    assert group_nodes(64, 8) == 8 and group_nodes(4, 8) == 1


def test_all_to_all_by_hand() -> None:
    # ep = 16 over 2 nodes (g = 8), each rank sends 64 MB: 7/16 stays on NVLink, 8/16 crosses its NIC share.
    m, intra, inter, a = 64e6, 360e9, 46e9, 20e-6
    expect = max(7 / 16 * m / intra, 8 / 16 * m / inter) + a  # the NIC side: 696 us
    assert all_to_all(m, 16, 8, intra, inter, a) == pytest.approx(expect)
    assert all_to_all(m, 8, 8, intra, inter, a) == pytest.approx(7 / 8 * m / intra + a)  # inside one node
    assert all_to_all(m, 1, 1, intra, inter, a) == 0.0
