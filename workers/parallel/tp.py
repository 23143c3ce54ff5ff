"""Tensor parallelism (Megatron column/row sharding) with DTensor ``parallelize_module``.

Follows torchtitan's ``apply_tp``: embeddings row-wise over the vocabulary (position table over
positions), q/k/v and w1/w3 column-wise, wo and w2 row-wise, the output projection column-wise with
replicated logits. With sequence parallelism the norms run on a sequence shard (``SequenceParallel``)
and activations between blocks are plain local sequence shards ``(b, s/tp, h)``.

An MoE block's router is replicated over tp (:class:`ReplicatedParallel`) and its routed experts are
left whole (expert parallelism splits them, :mod:`workers.parallel.ep`); its shared experts are sharded
like a dense MLP (Megatron-LM's ``SharedExpertMLP``). With sequence parallelism the MoE block routes the
rank's own sequence shard, as Megatron-LM's MoE layer does (it requires sequence parallelism with tp).
Latent attention (MLA) shards its heads: the up-projections ``wq``/``wq_b`` and ``wkv_b`` column-wise,
``wo`` row-wise; the down-projections and their norms are replicated (Megatron-LM's ``MLASelfAttention``),
and the rotary key all heads share sums its gradient over tp (:class:`SumGradOverTP`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from autotune.spec import ModelSpec
from workers.model import LatentAttention
from workers.moe import MoE
from workers.parallel.errors import UnsupportedLayout

__all__ = ["check_tp", "apply_tp", "ReplicatedParallel", "SumGradOverTP"]


def check_tp(spec: ModelSpec, tp: int) -> None:
    """Raise :class:`UnsupportedLayout` when this model's heads cannot be sharded ``tp`` ways here."""
    if spec.n_kv_heads % tp:
        raise UnsupportedLayout(
            f"tp={tp} does not divide kv_heads={spec.n_kv_heads}: replicating kv heads is not implemented"
        )
    if tp > 1 and spec.qk_norm and spec.qk_norm_scope == "projection":
        raise UnsupportedLayout(f"tp={tp} with q/k norms over the whole projections (OLMo 2): the norm would need"
                                " the statistics of every rank's heads")


def _block_plan(sp: bool, block: nn.Module) -> dict[str, object]:
    """Plan of one transformer block; ``sp`` adds sequence-parallel norms and input re-layouts (the norms
    ``block`` has: pre-norms feed the sub-layers, post-norms return local shards for the residual add)."""
    between = Shard(1) if sp else Replicate()
    plan: dict[str, object] = {
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=between),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(output_layouts=between),
    }
    if sp:
        plan |= {
            "attention_norm": SequenceParallel(),
            "attention": PrepareModuleInput(
                input_layouts=(Shard(1), None), desired_input_layouts=(Replicate(), None)
            ),
            "ffn_norm": SequenceParallel(),
            "feed_forward": PrepareModuleInput(
                input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)
            ),
            "attention_post_norm": SequenceParallel(use_local_output=True),
            "ffn_post_norm": SequenceParallel(use_local_output=True),
        }
    return {name: style for name, style in plan.items() if getattr(block, name.split(".")[0], None) is not None}


class ReplicatedParallel(ParallelStyle):
    """A module whose weights are replicated over the tp mesh (DTensor ``Replicate``) while its local input
    is laid out as ``input_layout``: their gradients are summed over the tp ranks that saw different tokens.
    Local tensors in and out (torchtitan's ``NoParallel``)."""

    def __init__(self, input_layout: Placement) -> None:
        super().__init__()
        self.input_layout = input_layout

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        layout = (self.input_layout,)
        return distribute_module(
            module,
            device_mesh,
            input_fn=lambda _, xs, mesh: tuple(DTensor.from_local(x, mesh, layout, run_check=False) for x in xs),
            output_fn=lambda _, out, mesh: out.to_local(),
        )


class _SumGrad(torch.autograd.Function):
    """Identity forward; backward all-reduces the gradient over the tp group (Megatron-LM's
    ``copy_to_tensor_model_parallel_region``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class SumGradOverTP(nn.Module):
    """A replicated activation each tp rank uses for its own heads: its gradient is summed over ``tp_mesh``."""

    def __init__(self, tp_mesh: DeviceMesh) -> None:
        super().__init__()
        self.group = tp_mesh.get_group()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SumGrad.apply(x, self.group)


def _moe_plan(moe: MoE, sp: bool) -> dict[str, object]:
    """Plan of an MoE block's MLP: replicated router, whole routed experts, tensor-parallel shared experts; the
    block's flattened tokens ``(b·s, h)`` are sequence shards with ``sp`` (``Shard(0)``), else replicated."""
    tokens = Shard(0) if sp else Replicate()
    plan: dict[str, object] = {"feed_forward.gate": ReplicatedParallel(tokens)}
    if sp:
        plan["feed_forward"] = PrepareModuleInput(
            input_layouts=(Shard(1),), desired_input_layouts=(Shard(1),), use_local_output=True
        )
    if moe.shared is not None:
        plan |= {
            "feed_forward.shared": PrepareModuleInput(input_layouts=(tokens,), desired_input_layouts=(Replicate(),)),
            "feed_forward.shared.w1": ColwiseParallel(),
            "feed_forward.shared.w2": RowwiseParallel(output_layouts=tokens),
        }
        if moe.shared.w3 is not None:
            plan["feed_forward.shared.w3"] = ColwiseParallel()
    return plan


def apply_tp(chunk: nn.Module, tp_mesh: DeviceMesh, *, sequence_parallel: bool) -> None:
    """Shard ``chunk`` (a whole model or a pipeline stage of it) in place over ``tp_mesh``."""
    between = Shard(1) if sequence_parallel else Replicate()
    top: dict[str, object] = {}
    if chunk.tok_embeddings is not None:
        top["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=between)
        if chunk.pos_embeddings is not None:
            top["pos_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=between)
    if chunk.norm is not None and sequence_parallel:
        top["norm"] = SequenceParallel()
    if chunk.output is not None:
        top["output"] = ColwiseParallel(input_layouts=between, output_layouts=Replicate())
    parallelize_module(chunk, tp_mesh, top)
    for block in chunk.layers.values():
        plan = _block_plan(sequence_parallel, block)
        if isinstance(block.attention, LatentAttention):
            plan = {k: v for k, v in plan.items() if k not in ("attention.wq", "attention.wk", "attention.wv")}
            plan |= {"attention.wq" if block.attention.wq is not None else "attention.wq_b": ColwiseParallel(),
                     "attention.wkv_b": ColwiseParallel()}
            block.attention.rope_key = SumGradOverTP(tp_mesh)
            if sequence_parallel:  # the replicated down-projections take the gathered input as a local tensor
                plan["attention"] = PrepareModuleInput(input_layouts=(Shard(1), None),
                                                       desired_input_layouts=(Replicate(), None), use_local_output=True)
        if isinstance(block.feed_forward, MoE):
            plan = {k: v for k, v in plan.items() if not k.startswith("feed_forward")}
            plan |= _moe_plan(block.feed_forward, sequence_parallel)
        elif block.feed_forward.w3 is not None:
            plan["feed_forward.w3"] = ColwiseParallel()
        parallelize_module(block, tp_mesh, plan)
    if chunk.tok_embeddings is not None and chunk.output is not None and chunk.spec.tied_embeddings:
        chunk.output.weight = chunk.tok_embeddings.weight
