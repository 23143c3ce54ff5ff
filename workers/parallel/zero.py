"""ZeRO sharding (Rajbhandari et al. 2020).

* ZeRO-1: DDP gradients + ``ZeroRedundancyOptimizer`` (optimizer states sharded over the shard group).
* ZeRO-2 / ZeRO-3: FSDP2 ``fully_shard`` per block and on the root, ``reshard_after_forward`` False
  (parameters stay gathered between forward and backward, gradients and states sharded) or True.
* HSDP: a 2-D ``(dp_replicate, dp_shard)`` mesh replicates across groups and shards within them.

Mixed precision with FSDP is a ``MixedPrecisionPolicy`` (low-precision compute, fp32 reduction).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer

__all__ = ["apply_fsdp", "zero1_optimizer", "PRECISION_DTYPES"]

#: Tensor dtype of each training precision. fp8 training (Transformer Engine, torchao float8) keeps its
#: weights and activations in bf16 and casts to fp8 only inside the GEMMs, so a dry run sizes fp8 tensors
#: in bf16. This data plane has no fp8 GEMM kernels: a measured trial never runs fp8
#: (:data:`workers.measure_rank.MEASURED_PRECISIONS`), so no bf16 step is timed under an fp8 label.
PRECISION_DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8": torch.bfloat16,
}


def apply_fsdp(chunk: nn.Module, mesh: DeviceMesh, *, zero: int, precision: str = "fp32") -> nn.Module:
    """Shard ``chunk`` in place with FSDP2 over ``mesh`` (1-D: FSDP, 2-D: HSDP) for ZeRO stage 2 or 3."""
    if zero not in (2, 3):
        raise ValueError(f"FSDP implements ZeRO-2 and ZeRO-3, not zero={zero}")
    kwargs: dict[str, Any] = dict(mesh=mesh, reshard_after_forward=zero == 3)
    if precision != "fp32":
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=PRECISION_DTYPES[precision], reduce_dtype=torch.float32
        )
    for block in chunk.layers.values():
        fully_shard(block, **kwargs)
    fully_shard(chunk, **kwargs)
    return chunk


def zero1_optimizer(
    params: Iterable[nn.Parameter],
    shard_mesh: DeviceMesh,
    optimizer_class: type[torch.optim.Optimizer],
    **kw: Any,
) -> ZeroRedundancyOptimizer:
    """``optimizer_class`` whose states are sharded over the 1-D ``shard_mesh`` (ZeRO-1)."""
    return ZeroRedundancyOptimizer(
        list(params), optimizer_class=optimizer_class, process_group=shard_mesh.get_group(), **kw
    )
