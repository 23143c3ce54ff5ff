"""Process group and DeviceMesh for one :class:`~autotune.config.ParallelConfig`.

The mesh has dims ``("pp", "dp", "cp", "tp")`` (tp innermost, so tensor-parallel peers are neighbours,
as in torchtitan's ParallelDims). Gradients are reduced over the flattened ``"dp_cp"`` dim; HSDP
unflattens it into ``("dp_replicate", "dp_shard")``. NCCL + CUDA when GPUs are present, else gloo + CPU.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from autotune.config import ParallelConfig

__all__ = ["device_type", "backend", "device", "init_distributed", "shutdown", "build_mesh", "grad_mesh"]


def device_type() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def backend() -> str:
    """``"nccl"`` with GPUs, ``"gloo"`` without."""
    return "nccl" if device_type() == "cuda" else "gloo"


def device() -> torch.device:
    """This rank's device (``cuda:<local rank>`` or ``cpu``)."""
    if device_type() == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(
    rank: int, world: int, port: int, *, addr: str = "127.0.0.1", timeout_s: float = 120
) -> None:
    """Join the default process group (one process per device); ``timeout_s`` bounds every collective."""
    os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    if device_type() == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend(), rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))


def shutdown() -> None:
    """Barrier, then destroy the process group (gloo can abort at exit without the barrier)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def build_mesh(cfg: ParallelConfig) -> tuple[DeviceMesh, DeviceMesh]:
    """The ``("pp", "dp", "cp", "tp")`` mesh of ``cfg`` over the whole (initialised) world, and its
    ``"dp_cp"`` dims flattened into the 1-D mesh that data parallelism reduces over."""
    world = dist.get_world_size()
    if cfg.world != world:
        raise ValueError(f"layout needs tp*pp*cp*dp={cfg.world} ranks but the world has {world}")
    mesh = init_device_mesh(
        device_type(), (cfg.pp, cfg.dp, cfg.cp, cfg.tp), mesh_dim_names=("pp", "dp", "cp", "tp")
    )
    return mesh, mesh["dp", "cp"]._flatten("dp_cp")


def grad_mesh(flat: DeviceMesh, cfg: ParallelConfig) -> DeviceMesh:
    """Mesh that data parallelism / ZeRO reduces gradients over: the 1-D ``flat`` (``dp_cp``), or
    2-D ``(dp_replicate, dp_shard)`` for HSDP (``dp_shard`` < ``dp``; shards span cp too)."""
    if cfg.zero == 0 or cfg.dp_shard == cfg.dp:
        return flat
    return flat._unflatten(0, (cfg.dp_replicate, cfg.dp_shard * cfg.cp), ("dp_replicate", "dp_shard"))
