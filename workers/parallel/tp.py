"""Tensor parallelism (Megatron column/row sharding) with DTensor ``parallelize_module``.

Follows torchtitan's ``apply_tp``: embeddings row-wise over the vocabulary (position table over
positions), q/k/v and w1/w3 column-wise, wo and w2 row-wise, the output projection column-wise with
replicated logits. With sequence parallelism the norms run on a sequence shard (``SequenceParallel``)
and activations between blocks are plain local sequence shards ``(b, s/tp, h)``.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from autotune.spec import ModelSpec
from workers.parallel.errors import UnsupportedLayout

__all__ = ["check_tp", "apply_tp"]


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
        if block.feed_forward.w3 is not None:
            plan["feed_forward.w3"] = ColwiseParallel()
        parallelize_module(block, tp_mesh, plan)
    if chunk.tok_embeddings is not None and chunk.output is not None and chunk.spec.tied_embeddings:
        chunk.output.weight = chunk.tok_embeddings.weight
