"""Expert parallelism: routed experts split over an ``ep`` process group, tokens exchanged by all-to-all.

Megatron-LM's MoE parallel folding (``megatron/core/transformer/moe/README.md``, core_v0.19.0): the
``tp · cp · dp`` ranks of a pipeline stage that attention uses are, for the experts, ``edp · ep · etp``
(:func:`expert_mesh`: the same ranks, etp innermost, then ep). Rank ``r`` of an ep group holds experts
``[r · E/ep, (r+1) · E/ep)`` (:func:`apply_ep` keeps that slice of the seeded full weights), and each MoE
layer's :class:`AllToAllExchange` sends every token copy to the rank of its expert: the per-expert counts
first (``all_to_all_single`` of ``ep × E/ep`` integers), then the tokens with those split sizes; the
received copies are regrouped by local expert, run through the grouped experts and sent back by the
reverse all-to-all (torchtitan's ``expert_parallel.py`` token dispatch, the same two collectives). With
``etp > 1`` each expert's width is split over the etp ranks as well (:mod:`workers.parallel.etp`).

Gradients: dense parameters are averaged over ``dp · cp`` by DDP/FSDP as before. Expert parameters are
replicated over ``edp`` only, so DDP leaves them out (:func:`ignore_experts_in_ddp`) and
:func:`sync_expert_grads` sums them over edp and divides by ``dp · cp`` — every stage rank's tokens reach
some replica of an expert, and the loss is a mean over the ``dp · cp`` token shards; with tensor
parallelism but no sequence parallelism the ``tp`` ranks route the same tokens, so it divides by ``tp``
too. Under FSDP (ZeRO-2/3) the experts get their own ``fully_shard`` over the edp mesh (:func:`shard_experts`,
torchtitan's ``apply_fsdp`` for MoE blocks, which sets the same divisor as FSDP's divide factor). ZeRO-1
shards the dense optimizer states over the data-parallel group and the experts' over edp
(:func:`expert_zero1_optimizer`, as Megatron-LM's distributed optimizer does for expert parameters).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from autotune.config import ParallelConfig
from autotune.spec import ModelSpec
from workers.moe import GroupedExperts, MoE
from workers.parallel.errors import UnsupportedLayout
from workers.parallel.etp import gather_rows, reduce_rows, shard_expert_width
from workers.parallel.zero import PRECISION_DTYPES, zero1_optimizer

__all__ = [
    "AllToAllExchange", "ChainedOptimizer", "apply_ep", "check_ep", "expert_mesh", "expert_zero1_optimizer",
    "expert_params", "grad_divisor", "ignore_experts_in_ddp", "moe_blocks", "shard_experts", "sync_expert_grads",
]


def check_ep(spec: ModelSpec, cfg: ParallelConfig) -> None:
    """Raise :class:`UnsupportedLayout` for an expert layout this data plane cannot run."""
    if cfg.etp > 1 and spec.bias == "all":
        raise UnsupportedLayout(f"expert tensor parallelism (etp={cfg.etp}) with expert biases (bias='all'): the "
                                "row-parallel w2 bias is not split (etp=1 runs every ep layout)")


def expert_mesh(mesh: DeviceMesh, cfg: ParallelConfig) -> DeviceMesh:
    """The ``("edp", "ep", "etp")`` mesh over this pipeline stage's ``dp · cp · tp`` ranks of the
    ``("pp", "dp", "cp", "tp")`` ``mesh``."""
    flat = mesh["dp", "cp", "tp"]._flatten("dp_cp_tp")
    return flat._unflatten(0, (cfg.edp, cfg.ep, cfg.etp), ("edp", "ep", "etp"))


def moe_blocks(chunk: nn.Module) -> Iterator[MoE]:
    """The MoE modules of ``chunk`` (a model, a pipeline stage, or one wrapped by DDP)."""
    return (m for m in chunk.modules() if isinstance(m, MoE))


def expert_params(chunk: nn.Module) -> list[nn.Parameter]:
    """The routed experts' parameters of ``chunk``."""
    return [p for m in chunk.modules() if isinstance(m, GroupedExperts) for p in m.parameters()]


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` with split sizes; its backward is the reverse exchange of the gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: Any) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        out_splits, in_splits = ctx.splits
        back = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


def _expert_major(recv: list[list[int]], device: torch.device) -> torch.Tensor:
    """Indices that reorder copies received source-major (source rank, then local expert, counts
    ``recv[source][expert]``) into expert-major order (local expert, then source)."""
    starts, at = [], 0
    for row in recv:
        starts.append([])
        for n in row:
            starts[-1].append(at)
            at += n
    pieces = [torch.arange(starts[s][e], starts[s][e] + recv[s][e], device=device)
              for e in range(len(recv[0])) for s in range(len(recv))]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long, device=device)


class AllToAllExchange:
    """Token exchange of one MoE layer over the ep mesh, then within the etp mesh (:mod:`workers.parallel.etp`).

    ``load`` (the dry run's fake tensors have no values to count): the counts are not exchanged; every source
    is assumed to send this rank's experts ``load`` times what this rank sends them (1: balanced routing;
    the analytic model's busiest-rank allowance :func:`autotune.costmodel.moe.imbalance` for the worst rank),
    and every etp peer to receive as many as this rank.
    """

    def __init__(self, ep_mesh: DeviceMesh, etp_mesh: DeviceMesh, *, load: float | None = None) -> None:
        self.group, self.ep, self.rank = ep_mesh.get_group(), ep_mesh.size(), ep_mesh.get_local_rank()
        self.etp_group, self.etp, self.etp_rank = etp_mesh.get_group(), etp_mesh.size(), etp_mesh.get_local_rank()
        self.load = load

    def _received_counts(self, send: list[list[int]], device: torch.device) -> list[list[int]]:
        if self.ep == 1:
            return send
        if self.load is not None:
            return [[math.ceil(n * self.load) for n in send[self.rank]]] * self.ep
        sent = torch.tensor(send, dtype=torch.long, device=device)
        got = torch.empty_like(sent)
        dist.all_to_all_single(got, sent, group=self.group)
        return got.tolist()

    def _peer_counts(self, recv: list[list[int]], device: torch.device) -> list[list[list[int]]]:
        if self.load is not None:
            return [recv] * self.etp
        mine = torch.tensor(recv, dtype=torch.long, device=device)
        peers = [torch.empty_like(mine) for _ in range(self.etp)]
        dist.all_gather(peers, mine, group=self.etp_group)
        return [p.tolist() for p in peers]

    def __call__(self, tokens: torch.Tensor, counts: list[int], experts: GroupedExperts) -> torch.Tensor:
        n_local, device = experts.n_experts, tokens.device
        send = [counts[r * n_local : (r + 1) * n_local] for r in range(self.ep)]
        recv = self._received_counts(send, device)
        in_splits, out_splits = [sum(row) for row in send], [sum(row) for row in recv]
        received = _AllToAll.apply(tokens, out_splits, in_splits, self.group) if self.ep > 1 else tokens
        blocks, sizes = recv, []
        if self.etp > 1:
            peers = self._peer_counts(recv, device)
            sizes = [sum(map(sum, rows)) for rows in peers]
            received = gather_rows(received, sizes, self.etp_rank, self.etp_group)
            blocks = [row for rows in peers for row in rows]
        perm = _expert_major(blocks, device)
        per_expert = [sum(row[e] for row in blocks) for e in range(n_local)]
        out = experts(received.index_select(0, perm), per_expert)
        back = torch.empty_like(perm).scatter_(0, perm, torch.arange(perm.numel(), device=device))
        out = out.index_select(0, back)
        if self.etp > 1:
            out = reduce_rows(out, sizes, self.etp_rank, self.etp_group)
        return _AllToAll.apply(out, in_splits, out_splits, self.group) if self.ep > 1 else out


def apply_ep(chunk: nn.Module, expert_mesh: DeviceMesh, *, load: float | None = None) -> None:
    """Keep this rank's experts of every MoE layer in ``chunk`` (its ep rank's experts/ep, at its etp rank's
    1/etp of their width) and exchange tokens over the ``("edp", "ep", "etp")`` ``expert_mesh``; a no-op when
    ep = etp = 1 (all experts local and whole). ``load``: see :class:`AllToAllExchange`."""
    ep_mesh, etp_mesh = expert_mesh["ep"], expert_mesh["etp"]
    ep, etp = ep_mesh.size(), etp_mesh.size()
    if ep == 1 and etp == 1:
        return
    rank = ep_mesh.get_local_rank()
    for moe in moe_blocks(chunk):
        experts = moe.experts
        n_local = experts.n_experts // ep
        for name, p in list(experts.named_parameters(recurse=False)):
            local = p.detach()[rank * n_local : (rank + 1) * n_local].clone()
            setattr(experts, name, nn.Parameter(local, requires_grad=p.requires_grad))
        if etp > 1:
            shard_expert_width(experts, etp_mesh.get_local_rank(), etp)
        moe.exchange = AllToAllExchange(ep_mesh, etp_mesh, load=load)


def ignore_experts_in_ddp(chunk: nn.Module) -> None:
    """Leave ``chunk``'s expert parameters out of a DDP wrapper built next: they are not replicated over
    the data-parallel group (uses DDP's ``_set_params_and_buffers_to_ignore_for_model``)."""
    ids = {id(p) for p in expert_params(chunk)}
    names = [n for n, p in chunk.named_parameters() if id(p) in ids]
    if names:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(chunk, names)


def grad_divisor(cfg: ParallelConfig) -> int:
    """What the edp-summed expert gradients are divided by: the ``dp · cp`` token shards the loss averages
    over, times ``tp`` when tensor-parallel ranks route the same (not sequence-sharded) tokens."""
    return cfg.dp * cfg.cp * (cfg.tp if cfg.tp > 1 and not cfg.sequence_parallel else 1)


def shard_experts(chunk: nn.Module, edp_mesh: DeviceMesh, cfg: ParallelConfig, *, precision: str = "fp32") -> None:
    """ZeRO-2/3: ``fully_shard`` every MoE layer's experts over the 1-D ``edp_mesh`` (before the blocks
    are sharded over the data-parallel mesh); FSDP averages their gradients over edp and
    :func:`sync_expert_grads` rescales the mean to the sum over :func:`grad_divisor`."""
    kwargs: dict[str, Any] = dict(mesh=edp_mesh, reshard_after_forward=cfg.zero == 3)
    if precision != "fp32":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=PRECISION_DTYPES[precision], reduce_dtype=torch.float32)
    for moe in moe_blocks(chunk):
        fully_shard(moe.experts, **kwargs)


@torch.no_grad()
def sync_expert_grads(parts: list[nn.Module], edp_mesh: DeviceMesh, cfg: ParallelConfig) -> None:
    """Sum every expert gradient over ``edp_mesh`` and divide it by :func:`grad_divisor` (call after the
    step's backward passes, before the optimizer). Under FSDP the gradients are already edp means of
    sharded gradients: they are rescaled by ``edp / grad_divisor`` (FSDP's own divide factor would need
    NCCL's PreMulSum, which gloo lacks)."""
    grads = [p.grad for part in parts for p in expert_params(part) if p.grad is not None]
    if not grads:
        return
    if cfg.zero >= 2:
        torch._foreach_mul_([g.to_local() if isinstance(g, DTensor) else g for g in grads],
                            edp_mesh.size() / grad_divisor(cfg))
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    if edp_mesh.size() > 1:
        dist.all_reduce(flat, group=edp_mesh.get_group())
    flat /= grad_divisor(cfg)
    at = 0
    for g in grads:
        g.copy_(flat[at : at + g.numel()].view_as(g))
        at += g.numel()


class ChainedOptimizer(torch.optim.Optimizer):
    """Optimizers over disjoint parameter sets stepped as one (their states stay in the inner optimizers)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        super().__init__([p for o in optimizers for g in o.param_groups for p in g["params"]], {})

    def step(self, closure: Any = None) -> None:
        """Step every inner optimizer."""
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every inner optimizer's gradients."""
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)


def expert_zero1_optimizer(parts: list[nn.Module], params: list[nn.Parameter], shard_mesh: DeviceMesh,
                           edp_mesh: DeviceMesh, optimizer_class: type[torch.optim.Optimizer],
                           **kw: Any) -> ChainedOptimizer:
    """ZeRO-1 with ep > 1: torch's ``ZeroRedundancyOptimizer`` broadcasts each parameter from the rank owning
    its state to its whole group, so the dense parameters shard over ``shard_mesh`` and the experts (which
    differ across the ep ranks of that group) over ``edp_mesh``, or keep whole states when edp is 1."""
    experts = {id(p) for part in parts for p in expert_params(part)}
    dense = [p for p in params if id(p) not in experts]
    routed = [p for p in params if id(p) in experts]
    expert_opt = (zero1_optimizer(routed, edp_mesh, optimizer_class, **kw) if edp_mesh.size() > 1
                  else optimizer_class(routed, **kw))
    return ChainedOptimizer([zero1_optimizer(dense, shard_mesh, optimizer_class, **kw), expert_opt])
