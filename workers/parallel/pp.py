"""Pipeline parallelism with ``torch.distributed.pipelining``.

The model is cut into ``pp · vpp`` stages of consecutive blocks, ``layers / (pp · vpp)`` each when even
and :func:`autotune.pipeline.virtual_stage_layers` of the layout's first/last stage counts otherwise (the
split the cost model and the dry run use); stage ``i`` lives on pipeline rank ``i mod pp`` (looped
placement, Narayanan et al. 2021), the first stage keeps the embeddings, the last the final norm and
output. Schedules: GPipe, 1F1B, and interleaved 1F1B when
``vpp > 1``. The schedules split each rank's batch into ``n_microbatches`` and scale gradients by
``1 / n_microbatches``, so the loss function is a plain per-micro-batch mean.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B
from torch.distributed.pipelining.schedules import _PipelineSchedule

from workers.parallel.errors import UnsupportedLayout

__all__ = ["SCHEDULES", "stage_ids", "split_model", "build_schedule"]

#: Pipeline schedules for ``vpp == 1``; ``vpp > 1`` always runs interleaved 1F1B.
SCHEDULES: dict[str, type[_PipelineSchedule]] = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


def stage_ids(pp_rank: int, pp: int, vpp: int) -> list[int]:
    """Stages held by pipeline rank ``pp_rank``: ``pp_rank, pp_rank + pp, …`` (``vpp`` of them)."""
    return [pp_rank + v * pp for v in range(vpp)]


def split_model(model: nn.Module, stage: int, sizes: list[int]) -> nn.Module:
    """A copy of ``model`` holding only the blocks, embeddings and head of ``stage``; ``sizes`` are the
    blocks of every stage in order (:func:`autotune.pipeline.virtual_stage_layers`)."""
    n_stages = len(sizes)
    if model.spec.tied_embeddings and n_stages > 1:
        raise UnsupportedLayout(
            "pipeline parallelism with tied embeddings (first and last stage share a matrix)"
        )
    start = sum(sizes[:stage])
    chunk = copy.deepcopy(model)
    for name in list(chunk.layers.keys()):
        if not start <= int(name) < start + sizes[stage]:
            del chunk.layers[name]
    if stage > 0:
        chunk.tok_embeddings = chunk.pos_embeddings = None
    if stage < n_stages - 1:
        chunk.norm = chunk.output = None
    return chunk


def build_schedule(
    parts: list[nn.Module],
    ids: list[int],
    *,
    n_stages: int,
    pp_mesh: DeviceMesh,
    device: torch.device,
    n_microbatches: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: str = "1f1b",
) -> _PipelineSchedule:
    """The pipeline schedule driving this rank's stages ``parts`` (stage ids ``ids``)."""
    group = pp_mesh.get_group()
    stages = [PipelineStage(p, i, n_stages, device, group=group) for p, i in zip(parts, ids, strict=True)]
    if len(stages) > 1:
        return ScheduleInterleaved1F1B(stages, n_microbatches, loss_fn=loss_fn)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} must be one of {', '.join(SCHEDULES)}")
    return SCHEDULES[schedule](stages[0], n_microbatches, loss_fn=loss_fn)
