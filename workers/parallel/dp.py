"""Data parallelism with ``DistributedDataParallel``: bucketed all-reduce overlapped with backward.

During gradient accumulation the caller skips the all-reduce of all but the last micro-batch with
``no_sync`` (:func:`maybe_no_sync`); the pipeline schedules do the same for DDP-wrapped stages.
DDP's reducer takes plain tensors only, so for 2-D TP × DDP each tensor-parallel (DTensor) parameter
is re-registered as its local shard behind a parametrization that rebuilds the DTensor on access
(the parameter is then named ``….parametrizations.<name>.original``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import parametrize

__all__ = ["apply_ddp", "maybe_no_sync"]


class _FromLocal(nn.Module):
    """Parametrization: the stored parameter is the local shard, the module sees the DTensor."""

    def __init__(self, like: DTensor) -> None:
        super().__init__()
        self.mesh, self.placements = like.device_mesh, like.placements
        self.shape, self.stride = like.shape, like.stride()

    def forward(self, local: torch.Tensor) -> DTensor:
        return DTensor.from_local(
            local, self.mesh, self.placements, run_check=False, shape=self.shape, stride=self.stride
        )


def _localize(chunk: nn.Module) -> None:
    """Store every DTensor parameter of ``chunk`` as its local shard (see :class:`_FromLocal`); a
    parameter shared by several modules (tied embeddings) keeps one shared shard."""
    local: dict[int, nn.Parameter] = {}
    for module in list(chunk.modules()):
        for name, p in list(module.named_parameters(recurse=False)):
            if isinstance(p, DTensor):
                delattr(module, name)
                module.register_parameter(name, local.setdefault(id(p), nn.Parameter(p.to_local().detach())))
                parametrize.register_parametrization(module, name, _FromLocal(p), unsafe=True)


def apply_ddp(
    chunk: nn.Module, dp_mesh: DeviceMesh, *, pipelined: bool = False, bucket_cap_mb: float = 25.0
) -> DistributedDataParallel:
    """Wrap ``chunk`` in DDP over the 1-D ``dp_mesh``; gradients are averaged over its ranks.

    A ``pipelined`` stage keeps its first buckets: the pipeline schedules drive DDP's reducer directly
    and its bucket rebuild then fails (``rebuilt parameter indices size is not same as original model
    parameters size``); ``find_unused_parameters`` is what turns the rebuild off.
    """
    if any(isinstance(p, DTensor) for p in chunk.parameters()):
        _localize(chunk)
    device_ids = [torch.cuda.current_device()] if dp_mesh.device_type == "cuda" else None
    return DistributedDataParallel(
        chunk,
        process_group=dp_mesh.get_group(),
        device_ids=device_ids,
        bucket_cap_mb=bucket_cap_mb,
        forward_sync_buffers=False,
        find_unused_parameters=pipelined,
        gradient_as_bucket_view=True,
    )


@contextlib.contextmanager
def maybe_no_sync(module: nn.Module, sync: bool) -> Iterator[None]:
    """Inside, a DDP ``module`` accumulates gradients locally unless ``sync``; other modules are untouched."""
    if sync or not isinstance(module, DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield
