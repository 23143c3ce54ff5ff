"""One rank of a measured trial: the body of the Ray actor that :mod:`workers.measure` starts per rank.

The actor joins the trial's process group (nccl on CUDA, gloo otherwise), builds the model and the
layout of its :class:`~autotune.evaluation.EvalTask`, then runs the steps it is told to, one call per step,
so the orchestrator can enforce a per-step deadline, stop early (pruning) and see a dead rank at once.
Every method returns a plain dict with a ``status`` (``ok`` or a typed failure with its ``reason``);
anything else that goes wrong raises and reaches the orchestrator as a Ray task error.

Peak memory per rank: after the warm-up steps (which allocate optimizer states and run lazy
initialisation, e.g. the pipeline schedule's shape inference, whose ``autograd.grad`` on leaf inputs
the tracker's module hooks cannot follow), one more untimed step runs under torch's
:class:`~torch.distributed._tools.mem_tracker.MemTracker` (a TorchDispatchMode that follows every live
tensor storage and splits the peak into parameters, buffers, gradients, activations, optimizer states
and temporaries), so CPU ranks get the same steady-state breakdown as GPU ranks; on CUDA the peak total
is ``torch.cuda.max_memory_allocated`` over that step and the timed steps. Timed steps run untracked.
Torch is imported inside the methods, in the actor process.

Precision: only :data:`MEASURED_PRECISIONS` run (:func:`unmeasured_reason` says why another cannot;
:mod:`workers.measure` asks it before any rank starts, and :meth:`RankWorker.setup` refuses it again);
set-up reports the dtype its GEMMs run in (:func:`gemm_precision`), the peak a measured MFU divides by.

Fault injection (tests only, ``task.options``): ``fault`` = ``crash`` (``os._exit(1)``), ``hang`` (sleep
past the step deadline) or ``nan`` (poison the parameters) on rank ``fault_rank`` (default 1, or the
last rank) at the first timed step.
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any

from autotune.costmodel.estimate import MEMORY_KEYS
from autotune.evaluation import EvalTask
from autotune.spec import GPUSpec

__all__ = ["RankWorker", "MEMORY_KEYS", "MEASURED_PRECISIONS", "unmeasured_reason", "gemm_precision"]

#: Training precisions a measured trial runs, each with its GEMMs in that precision (fp32 as TF32 where
#: torch allows it on CUDA). Not fp8: this data plane has no fp8 GEMM kernels (no Transformer Engine or
#: torchao float8), so an fp8 step here would be a bf16 step.
MEASURED_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")

#: MemTracker reference type -> breakdown key.
_TRACKER_KEYS = {"Parameter": "weights", "Buffer": "weights", "Gradient": "gradients", "Optstate": "optimizer",
                 "Activation": "activations", "Temp": "other", "Other": "other", "Total": "total"}


def unmeasured_reason(precision: str, device: str, gpu: GPUSpec) -> str | None:
    """Why ``precision`` cannot be measured on ``device`` ("cpu" | "cuda") ranks of profile ``gpu``; None if it can."""
    if precision in MEASURED_PRECISIONS:
        return None
    if device == "cpu":
        why = "CPU ranks have no fp8 GEMM kernels"
    elif "fp8" not in gpu.peak_tflops:
        why = f"GPU {gpu.name} has no fp8 tensor cores (its profile lists no fp8 peak)"
    else:
        why = "this data plane has no fp8 GEMM kernels (no Transformer Engine or torchao float8)"
    return (f"precision {precision} cannot be measured on {device} ranks: {why}, so its steps would be bf16 steps "
            f"under an {precision} label (measured precisions: {', '.join(MEASURED_PRECISIONS)})")


def gemm_precision(precision: str, device: str) -> str:
    """The dtype a rank's GEMMs run in for a measured ``precision``: fp32 runs as ``tf32`` on CUDA when
    torch's fp32 matmul precision allows TF32 (it does not by default), else as ``fp32`` (always on CPU);
    bf16 and fp16 run as themselves."""
    if precision != "fp32" or device != "cuda":
        return precision
    import torch

    mode = torch.backends.cuda.matmul.fp32_precision
    if mode == "none":  # not set for matmuls: the generic setting applies
        mode = torch.backends.fp32_precision
    return "tf32" if mode == "tf32" else "fp32"


def _oom(e: BaseException) -> dict[str, Any]:
    return {"status": "oom", "reason": f"CUDA out of memory: {str(e).strip().splitlines()[0][:300]}"}


def _tracker_class(base: type) -> type:
    """MemTracker that accepts a model forwarded again before or after its backward (micro-batches,
    pipeline schedules, later steps): it forgets that module's per-module statistics first (they are not
    used here; the per-device peak the tracker keeps is unaffected)."""

    class StepMemTracker(base):  # type: ignore[misc, valid-type]
        def _pre_fw_hook(self, module: Any, inputs: Any) -> None:
            if not self._mod_tracker.is_bw:
                self.memory_tracking.pop(module, None)
            super()._pre_fw_hook(module, inputs)

    return StepMemTracker


class RankWorker:
    """One rank: process group, model, optimizer and step loop (wrapped by ``ray.remote`` per trial)."""

    def __init__(self) -> None:
        self.rank = -1
        self.task: EvalTask | None = None
        self.par: Any = None
        self.optimizer: Any = None
        self.step_index = 0
        self.faulted = False

    def endpoint(self) -> dict[str, Any]:
        """This node's IP and a port free on it right now (asked of rank 0 for the rendezvous)."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return {"status": "ok", "addr": ray.util.get_node_ip_address(), "port": port}

    def setup(self, rank: int, addr: str, port: int, task: EvalTask, timeout_s: float) -> dict[str, Any]:
        """Join the group of ``task.config.world`` ranks, build model + layout + optimizer."""
        import torch

        from workers.parallel import UnsupportedLayout, parallelize
        from workers.parallel.mesh import device_type, init_distributed
        from workers.train_step import build_optimizer

        self.rank, self.task = rank, task
        cfg, training = task.config, task.training
        why = unmeasured_reason(training.precision, device_type(), task.gpu)
        if why:
            return {"status": "unsupported", "reason": why}
        init_distributed(rank, cfg.world, port, addr=addr, timeout_s=timeout_s)
        try:
            self.par = parallelize(task.model, cfg, seq_len=training.seq_len, precision=training.precision,
                                   seed=int(task.options.get("seed", 0)), pp_schedule=cfg.pp_schedule)
            self.optimizer = build_optimizer(self.par, training.optimizer, lr=1e-4)
        except UnsupportedLayout as e:
            return {"status": "unsupported", "reason": str(e)}
        except torch.cuda.OutOfMemoryError as e:
            return _oom(e)
        return {"status": "ok", "device": device_type(), "pid": os.getpid(),
                "gemm_precision": gemm_precision(training.precision, device_type())}

    def _one_step(self) -> float:
        from workers.train_step import train_step

        loss = train_step(self.par, self.optimizer, self.step_index, seed=int(self.task.options.get("seed", 0)))
        self.step_index += 1
        return loss

    def warmup(self, n: int) -> dict[str, Any]:
        """Run ``n`` untimed warm-up steps, then one untimed step under the memory tracker; return the
        loss and this rank's peak bytes by kind."""
        import torch
        from torch.distributed._tools.mem_tracker import MemTracker

        cuda = self.par.device.type == "cuda"
        try:
            for _ in range(n):
                loss = self._one_step()
                if not math.isfinite(loss):
                    return {"status": "ok", "loss": loss, "memory": dict.fromkeys(MEMORY_KEYS, 0)}
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            tracker = _tracker_class(MemTracker)()
            tracker.track_external(*self.par.parts, self.optimizer)
            with tracker:
                loss = self._one_step()
        except torch.cuda.OutOfMemoryError as e:
            return _oom(e)
        peak = dict.fromkeys(MEMORY_KEYS, 0)
        for kind, nbytes in tracker.get_tracker_snapshot("peak").get(self.par.device, {}).items():
            peak[_TRACKER_KEYS.get(str(getattr(kind, "value", kind)), "other")] += int(nbytes)
        if cuda:  # the allocator's peak also holds workspaces and cache the tracker does not see
            peak["total"] = max(peak["total"], torch.cuda.max_memory_allocated())
            named = sum(peak[k] for k in ("weights", "gradients", "optimizer", "activations"))
            peak["other"] = max(peak["other"], peak["total"] - named)
        return {"status": "ok", "loss": loss, "memory": peak}

    def step(self) -> dict[str, Any]:
        """One timed optimizer step: its wall seconds on this rank and the global mean loss."""
        import torch

        self._maybe_fault()
        start = time.perf_counter()
        try:
            loss = self._one_step()
        except torch.cuda.OutOfMemoryError as e:
            return _oom(e)
        out: dict[str, Any] = {"status": "ok", "seconds": time.perf_counter() - start, "loss": loss}
        if self.par.device.type == "cuda":
            out["peak_bytes"] = torch.cuda.max_memory_allocated()
        return out

    def _maybe_fault(self) -> None:
        opts = self.task.options
        fault = opts.get("fault")
        if self.faulted or not fault or self.rank != int(opts.get("fault_rank", min(1, self.task.config.world - 1))):
            return
        self.faulted = True  # once: at the first timed step
        if fault == "crash":
            os._exit(1)
        elif fault == "hang":
            time.sleep(float(opts.get("step_timeout_s", 120)) * 10)
        elif fault == "nan":
            import torch

            with torch.no_grad():
                for p in self.par.parameters():
                    p.fill_(math.nan)
        else:
            raise ValueError(f"unknown fault {fault!r} (crash | hang | nan)")
