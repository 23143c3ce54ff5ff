"""Native-torch parallelisms composed from one :class:`~autotune.config.ParallelConfig`.

:func:`parallelize` builds the reference model and applies, in torchtitan's fixed order (as in
``parallelize_llama``): pipeline split → expert parallel → tensor (+ sequence) parallel → activation recompute →
data parallel / ZeRO (DDP, ZeRO-1 optimizer sharding, FSDP2 for ZeRO-2/3, HSDP); experts are data-parallel
over their own ``edp`` group (:mod:`workers.parallel.ep`). Context parallelism
is applied per step by :mod:`workers.train_step`. One file per parallelism, each ≤ 300 lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining.schedules import _PipelineSchedule

from autotune.config import ParallelConfig
from autotune.pipeline import virtual_stage_layers
from autotune.spec import ModelSpec
from workers.model import build_model
from workers.parallel.cp import check_cp
from workers.parallel.dp import apply_ddp
from workers.parallel.ep import apply_ep, check_ep, expert_mesh, ignore_experts_in_ddp, shard_experts
from workers.parallel.errors import UnsupportedLayout
from workers.parallel.mesh import build_mesh, device, grad_mesh
from workers.parallel.pp import build_schedule, split_model, stage_ids
from workers.parallel.recompute import apply_recompute
from workers.parallel.tp import apply_tp, check_tp
from workers.parallel.zero import apply_fsdp

__all__ = ["Parallelized", "parallelize", "UnsupportedLayout", "cross_entropy"]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every position of the (micro-)batch, computed in fp32."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(0, 1))


@dataclass(kw_only=True)
class Parallelized:
    """This rank's share of a parallelized model."""

    spec: ModelSpec
    cfg: ParallelConfig
    mesh: DeviceMesh
    """The ``("pp", "dp", "cp", "tp")`` mesh."""
    dp_mesh: DeviceMesh
    """The flattened 1-D ``dp_cp`` mesh gradients are averaged over."""
    shard_mesh: DeviceMesh
    """The 1-D mesh ZeRO shards over: ``dp_mesh``, or its ``dp_shard`` dim for HSDP."""
    expert_mesh: DeviceMesh | None
    """The ``("edp", "ep", "etp")`` mesh of the experts (MoE models), None for a dense model."""
    parts: list[nn.Module]
    """Local model chunks: one, or ``vpp`` pipeline stages (wrapped by DDP/FSDP/checkpointing)."""
    stage_ids: list[int]
    """Pipeline stage id of each part (``[0]`` without pipelining)."""
    schedule: _PipelineSchedule | None
    """Pipeline schedule, None when ``pp == 1``."""
    seq_len: int
    precision: str
    device: torch.device

    @property
    def n_stages(self) -> int:
        """Pipeline stages in total (pp · vpp)."""
        return self.cfg.pp * self.cfg.vpp

    @property
    def has_first_stage(self) -> bool:
        """True when this rank embeds tokens."""
        return 0 in self.stage_ids

    @property
    def has_last_stage(self) -> bool:
        """True when this rank computes the loss."""
        return self.n_stages - 1 in self.stage_ids

    def parameters(self) -> list[nn.Parameter]:
        """Local parameters of all parts, each once."""
        return list({id(p): p for part in self.parts for p in part.parameters()}.values())


def parallelize(
    spec: ModelSpec,
    cfg: ParallelConfig,
    *,
    seq_len: int,
    precision: str = "fp32",
    seed: int = 0,
    pp_schedule: str = "1f1b",
    meshes: tuple[DeviceMesh, DeviceMesh] | None = None,
) -> Parallelized:
    """Build ``spec``'s model with seeded weights and parallelize it by ``cfg`` on this rank.

    Needs an initialised process group of ``cfg.world`` ranks (see :func:`workers.parallel.mesh.init_distributed`).
    ``pp_schedule`` picks ``"gpipe"`` or ``"1f1b"`` when ``vpp == 1``. Raises :class:`UnsupportedLayout`
    for a valid layout this backend or model cannot run.
    """
    mesh, flat = meshes if meshes is not None else build_mesh(cfg)
    dev = device()
    if cfg.tp > 1:
        check_tp(spec, cfg.tp)
    if cfg.cp > 1:
        check_cp(spec, mesh["cp"], dev)
    emesh = None
    if spec.is_moe:
        check_ep(spec, cfg)
        emesh = expert_mesh(mesh, cfg)
    model = build_model(spec, seq_len=seq_len, seed=seed)
    n_stages = cfg.pp * cfg.vpp
    ids = stage_ids(mesh["pp"].get_local_rank(), cfg.pp, cfg.vpp) if n_stages > 1 else [0]
    sizes = virtual_stage_layers(spec.layers, cfg.pp, cfg.vpp, cfg.pp_first_layers, cfg.pp_last_layers)
    parts = [split_model(model, i, sizes).to(dev) for i in ids] if n_stages > 1 else [model.to(dev)]
    dp_mesh = grad_mesh(flat, cfg)
    shard_mesh = dp_mesh if dp_mesh.ndim == 1 else dp_mesh["dp_shard"]
    for i, part in enumerate(parts):
        if emesh is not None:
            apply_ep(part, emesh)
        if cfg.tp > 1:
            apply_tp(part, mesh["tp"], sequence_parallel=cfg.sequence_parallel)
        apply_recompute(part, cfg.recompute, cfg.recompute_layers)
        if cfg.zero >= 2:
            if emesh is not None:
                shard_experts(part, emesh["edp"], cfg, precision=precision)
            apply_fsdp(part, dp_mesh, zero=cfg.zero, precision=precision)
        elif cfg.dp * cfg.cp > 1:
            if emesh is not None:
                ignore_experts_in_ddp(part)
            parts[i] = apply_ddp(part, flat, pipelined=n_stages > 1)
    schedule = None
    if n_stages > 1:
        schedule = build_schedule(
            parts,
            ids,
            n_stages=n_stages,
            pp_mesh=mesh["pp"],
            device=dev,
            n_microbatches=cfg.grad_accum,
            loss_fn=cross_entropy,
            schedule=pp_schedule,
        )
    return Parallelized(
        spec=spec,
        cfg=cfg,
        mesh=mesh,
        dp_mesh=flat,
        shard_mesh=shard_mesh,
        expert_mesh=emesh,
        parts=parts,
        stage_ids=ids,
        schedule=schedule,
        seq_len=seq_len,
        precision=precision,
        device=dev,
    )
