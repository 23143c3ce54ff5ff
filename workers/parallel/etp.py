"""Expert tensor parallelism: each routed expert's MLP sharded over an ``etp`` group.

Megatron-LM's MoE parallel folding (core_v0.19.0 ``megatron/core/transformer/moe/README.md``): the ranks of a
stage's ``("edp", "ep", "etp")`` expert mesh that share an ep index split every local expert's inner width,
w1/w3 column-wise and w2 row-wise (:func:`shard_expert_width`). After the ep all-to-all, the etp ranks
all-gather the token copies they received (:func:`gather_rows`), so each runs every copy of its etp group at
``1/etp`` of the expert width, and then sum their partial outputs, each keeping its own rows
(:func:`reduce_rows`): Megatron's all-gather before the experts and reduce-scatter after them. The sum is an
all-reduce followed by a slice because the groups' row counts differ and gloo has no uneven reduce-scatter.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from workers.moe import GroupedExperts

__all__ = ["shard_expert_width", "gather_rows", "reduce_rows"]


def shard_expert_width(experts: GroupedExperts, rank: int, etp: int) -> None:
    """Keep etp rank ``rank``'s ``1/etp`` of every expert's inner width in ``experts`` (in place)."""
    for name, dim in (("w1", 2), ("w3", 2), ("w2", 1)):
        p = getattr(experts, name)
        if p is None:
            continue
        width = p.shape[dim] // etp
        local = p.detach().narrow(dim, rank * width, width).clone()
        setattr(experts, name, nn.Parameter(local, requires_grad=p.requires_grad))


def _all_rows(x: torch.Tensor, sizes: list[int], group: Any) -> torch.Tensor:
    """Every rank's ``x`` (``sizes[r]`` rows on rank ``r``) concatenated in rank order (padded all-gather)."""
    most = max(sizes)
    padded = x.new_zeros((most, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])


def _own_rows(x: torch.Tensor, sizes: list[int], rank: int, group: Any) -> torch.Tensor:
    """The sum of ``x`` over the group, rows ``[sum(sizes[:rank]), +sizes[rank])`` of it."""
    total = x.contiguous().clone()
    dist.all_reduce(total, group=group)
    start = sum(sizes[:rank])
    return total[start : start + sizes[rank]]


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: list[int], rank: int, group: Any) -> torch.Tensor:
        ctx.args = (sizes, rank, group)
        return _all_rows(x, sizes, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return _own_rows(grad, *ctx.args), None, None, None


class _Reduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: list[int], rank: int, group: Any) -> torch.Tensor:
        ctx.args = (sizes, group)
        return _own_rows(x, sizes, rank, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        sizes, group = ctx.args
        return _all_rows(grad.contiguous(), sizes, group), None, None, None


def gather_rows(x: torch.Tensor, sizes: list[int], rank: int, group: Any) -> torch.Tensor:
    """All-gather rows over the etp ``group`` (this is ``rank``, holding ``sizes[rank]`` rows); its backward
    sums the gradients over the group and keeps this rank's rows."""
    return _Gather.apply(x, sizes, rank, group)


def reduce_rows(x: torch.Tensor, sizes: list[int], rank: int, group: Any) -> torch.Tensor:
    """Sum the partial outputs ``x`` (all ranks' rows) over the etp ``group`` and keep this ``rank``'s rows;
    its backward all-gathers the gradients."""
    return _Reduce.apply(x, sizes, rank, group)
