"""One optimizer step of a :class:`~workers.parallel.Parallelized` model on synthetic data.

Every layout computes the same thing: the mean next-token cross-entropy over the global batch of
``micro_batch · grad_accum · dp`` sequences of :func:`workers.model.synthetic_batch`, so losses and
parameters match a single process. Data-parallel rank ``r`` takes rows ``[r·B, (r+1)·B)`` with
``B = micro_batch · grad_accum`` and runs them as ``grad_accum`` micro-batches (through the pipeline
schedule when ``pp > 1``); context parallelism shards each micro-batch along the sequence.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist

from workers.model import Transformer, synthetic_batch
from workers.parallel import Parallelized, cross_entropy
from workers.parallel.cp import cp_context
from workers.parallel.dp import maybe_no_sync
from workers.parallel.ep import expert_zero1_optimizer, sync_expert_grads
from workers.parallel.zero import PRECISION_DTYPES, zero1_optimizer

__all__ = ["OPTIMIZERS", "build_optimizer", "train_step"]

#: Optimizer names of TrainingSpec.optimizer and their torch classes.
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.AdamW, "sgd": torch.optim.SGD}


def build_optimizer(par: Parallelized, name: str = "adam", **kwargs: Any) -> torch.optim.Optimizer:
    """The optimizer over this rank's parameters; ZeRO-1 shards its states over the shard group (with ep > 1
    the experts' over their edp group, :func:`workers.parallel.ep.expert_zero1_optimizer`).

    A shard group of one rank has nothing to shard: the plain optimizer is used (and
    ZeroRedundancyOptimizer's broadcasts, which DTensor parameters cannot take, are avoided).
    """
    cls = OPTIMIZERS[name]
    if par.cfg.zero != 1 or par.shard_mesh.size() == 1:
        return cls(par.parameters(), **kwargs)
    if par.expert_mesh is not None and par.cfg.ep > 1:
        return expert_zero1_optimizer(par.parts, par.parameters(), par.shard_mesh, par.expert_mesh["edp"], cls,
                                      **kwargs)
    return zero1_optimizer(par.parameters(), par.shard_mesh, cls, **kwargs)


def _autocast(par: Parallelized) -> contextlib.AbstractContextManager[Any]:
    """Autocast to the compute dtype unless fp32 or FSDP's MixedPrecisionPolicy already casts."""
    if par.precision == "fp32" or par.cfg.zero >= 2:
        return contextlib.nullcontext()
    return torch.autocast(par.device.type, dtype=PRECISION_DTYPES[par.precision])


def _rank_batch(par: Parallelized, step: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = par.cfg
    rows = cfg.micro_batch * cfg.grad_accum
    inputs, labels = synthetic_batch(par.spec.vocab, par.seq_len, rows * cfg.dp, step, seed)
    r = par.mesh["dp"].get_local_rank()
    return inputs[r * rows : (r + 1) * rows].to(par.device), labels[r * rows : (r + 1) * rows].to(par.device)


def _forward_backward(par: Parallelized, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """Run every micro-batch; return this rank's mean loss, or None on a rank without the last stage."""
    cfg = par.cfg
    cp_mesh = par.mesh["cp"] if cfg.cp > 1 else None
    freqs = [
        m.freqs for p in par.parts for m in p.modules() if isinstance(m, Transformer) and m.freqs is not None
    ]
    if par.schedule is not None:
        losses: list[torch.Tensor] = []
        with cp_context(cp_mesh, [inputs, labels, *freqs], [1, 1] + [0] * len(freqs), [inputs, labels]):
            args = (inputs,) if par.has_first_stage else ()
            target = labels if par.has_last_stage else None
            par.schedule.step(*args, target=target, losses=losses if par.has_last_stage else None)
        return torch.stack(losses).mean().detach() if par.has_last_stage else None
    model, total = par.parts[0], torch.zeros((), device=par.device)
    for x, y, i in zip(
        inputs.chunk(cfg.grad_accum), labels.chunk(cfg.grad_accum), range(cfg.grad_accum), strict=True
    ):
        x, y = x.contiguous(), y.contiguous()
        with (
            maybe_no_sync(model, i == cfg.grad_accum - 1),
            cp_context(cp_mesh, [x, y, *freqs], [1, 1] + [0] * len(freqs), [x, y]),
        ):
            loss = cross_entropy(model(x), y) / cfg.grad_accum
            loss.backward()
        total += loss.detach()
    return total


def train_step(par: Parallelized, optimizer: torch.optim.Optimizer, step: int, *, seed: int = 0) -> float:
    """One optimizer step on the global batch of ``step``; returns its mean loss (same on every rank)."""
    inputs, labels = _rank_batch(par, step, seed)
    optimizer.zero_grad(set_to_none=True)
    with _autocast(par):
        local = _forward_backward(par, inputs, labels)
    if par.expert_mesh is not None:
        sync_expert_grads(par.parts, par.expert_mesh["edp"], par.cfg)
    optimizer.step()
    holders = par.cfg.dp * par.cfg.cp * par.cfg.tp
    loss = (local if local is not None else torch.zeros((), device=par.device)).float().reshape(1)
    dist.all_reduce(loss)
    return loss.item() / holders
