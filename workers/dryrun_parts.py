"""Pieces of the dry run (:mod:`workers.dryrun`): one pipeline rank's model chunks, the order in which
its schedule runs forwards and backwards, Megatron-style mixed-precision state, and a cheap peak tracker.

* :func:`build_chunks` builds only this pipeline rank's stages (its blocks, as many as
  :func:`autotune.pipeline.virtual_stage_layers` gives each stage; embeddings on the first stage, final
  norm and output on the last) in the compute dtype, and applies the real tensor/sequence parallelism
  (:func:`workers.parallel.tp.apply_tp`), recomputation and FSDP of :mod:`workers.parallel`.
  The output layer is column-parallel with vocabulary-sharded logits (``loss_parallel``), as Megatron's
  and torchtitan's vocab-parallel cross-entropy; with tied embeddings and pp > 1 the last stage keeps its
  own output matrix (Megatron does).
* :func:`schedule_order` is the forward/backward sequence one pipeline rank runs under GPipe, 1F1B or
  interleaved 1F1B (Narayanan et al. 2021, Megatron's warm-up counts).
* :class:`MixedPrecisionState` holds what Megatron keeps per local parameter: gradient buffers in the
  dtype ``TrainingSpec.grad_buffers`` names (fp32 main grads by default), filled by post-accumulate-grad
  hooks that then free the low-precision ``.grad``, and fp32 master weights + Adam moments for this
  rank's 1/N of each parameter (ZeRO-1: an even split as Megatron's distributed optimizer; ZeRO-2/3: the
  FSDP shard itself).
* :class:`FlopCounter` sums torch's FLOP formulas over this rank's local ops.
* MoE layers route with :class:`BalancedMoE` (fake tensors hold no scores to route by): every expert gets
  the same share of this rank's token copies; expert parallelism (:func:`workers.parallel.ep.apply_ep`)
  keeps this rank's experts and exchanges tokens over the fake group, this rank receiving the busiest
  rank's load (:func:`autotune.costmodel.moe.imbalance` times its balanced share, the analytic allowance),
  FSDP shards the experts over edp, and ZeRO-1 splits the experts' optimizer states over edp (Megatron's
  distributed optimizer for expert parameters).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch._guards import active_fake_mode
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode

from autotune.config import ParallelConfig
from autotune.costmodel.moe import imbalance
from autotune.pipeline import virtual_stage_layers
from autotune.spec import ModelSpec
from workers.dryrun_kernels import fuse
from workers.model import Transformer
from workers.moe import MoE
from workers.parallel.ep import apply_ep, shard_experts
from workers.parallel.recompute import apply_recompute
from workers.parallel.tp import apply_tp
from workers.parallel.zero import PRECISION_DTYPES, apply_fsdp

__all__ = [
    "build_chunks", "schedule_order", "MixedPrecisionState", "PeakTracker", "FSDPPeakTracker", "FlopCounter",
    "SDPA_FLOPS", "local", "BalancedMoE",
]


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (the tensor itself otherwise)."""
    return t.to_local() if isinstance(t, DTensor) else t


def _chunk(spec: ModelSpec, seq_len: int, stage: int, sizes: list[int], dtype: torch.dtype) -> Transformer:
    """Stage ``stage`` of ``len(sizes)``: its ``sizes[stage]`` blocks plus the ends it owns, in ``dtype``
    (a stage of 0 blocks, e.g. the first virtual stage of an uneven split, keeps only its ends)."""
    n_stages = len(sizes)
    tied = spec.tied_embeddings and n_stages == 1
    sub = spec.model_copy(update={"tied_embeddings": tied})
    start = sum(sizes[:stage])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        chunk = Transformer(sub, seq_len, layer_ids=range(start, start + sizes[stage]))
    finally:
        torch.set_default_dtype(previous)
    if stage > 0:
        chunk.tok_embeddings = chunk.pos_embeddings = None
    if stage < n_stages - 1:
        chunk.norm = chunk.output = None
    return chunk


class BalancedMoE(MoE):
    """An :class:`~workers.moe.MoE` whose routing ignores the scores: the ``n`` token copies go in order to
    the experts, ``n / experts`` each (the remainder one more to the first experts), capped at the capacity
    when the spec sets a capacity factor. Same shapes and data flow as the scored routing."""

    def route(self, expert_ids: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        n, e = expert_ids.numel(), self.n_experts
        counts = [n // e + (i < n % e) for i in range(e)]
        kept = counts if self.capacity_factor is None else [min(c, math.ceil(self.capacity_factor * n / e))
                                                            for c in counts]
        starts = [sum(counts[:i]) for i in range(e)]
        order = torch.cat([torch.arange(s, s + k, device=expert_ids.device) for s, k in zip(starts, kept, strict=True)])
        return order, kept


def _apply_tp(chunk: Transformer, tp_mesh: DeviceMesh, sp: bool) -> None:
    """:func:`apply_tp` on the blocks and embeddings; the output layer keeps vocabulary-sharded logits."""
    output, chunk.output = chunk.output, None
    apply_tp(chunk, tp_mesh, sequence_parallel=sp)
    if output is not None:
        inputs = {"input_layouts": Shard(1)} if sp else {}
        plan = ColwiseParallel(**inputs, output_layouts=Shard(-1), use_local_output=False)
        chunk.output = parallelize_module(output, tp_mesh, plan)
        if chunk.spec.tied_embeddings and chunk.tok_embeddings is not None:
            chunk.output.weight = chunk.tok_embeddings.weight


def build_chunks(spec: ModelSpec, cfg: ParallelConfig, *, seq_len: int, precision: str, pp_rank: int,
                 mesh: DeviceMesh, shard_mesh: DeviceMesh, fused: bool = True,
                 expert_mesh: DeviceMesh | None = None) -> tuple[list[Transformer], list[int]]:
    """This pipeline rank's chunks (one, or ``vpp`` for interleaving) and their stage ids, parallelized;
    ``fused`` gives them fused-kernel storage (:func:`workers.dryrun_kernels.fuse`); an MoE model's
    experts are split over ``expert_mesh`` (``("edp", "ep", "etp")``)."""
    sizes = virtual_stage_layers(spec.layers, cfg.pp, cfg.vpp, cfg.pp_first_layers, cfg.pp_last_layers)
    ids = [pp_rank + v * cfg.pp for v in range(cfg.vpp)]
    dtype = PRECISION_DTYPES[precision]
    chunks = []
    for i in ids:
        chunk = _chunk(spec, seq_len, i, sizes, dtype)
        if fused:
            fuse(chunk)
        if expert_mesh is not None:
            for m in chunk.modules():
                if type(m) is MoE:
                    m.__class__ = BalancedMoE
            apply_ep(chunk, expert_mesh, load=imbalance(spec))
        if cfg.tp > 1:
            _apply_tp(chunk, mesh["tp"], cfg.sequence_parallel)
        apply_recompute(chunk, cfg.recompute, cfg.recompute_layers)
        if cfg.zero >= 2:
            with unset_fake_temporarily():  # FSDP over TP computes mesh coordinates on real tensors
                if expert_mesh is not None:
                    shard_experts(chunk, expert_mesh["edp"], cfg)
                apply_fsdp(chunk, shard_mesh, zero=cfg.zero)
        chunks.append(chunk)
    return chunks, ids


def schedule_order(pp_rank: int, pp: int, vpp: int, m: int, schedule: str) -> list[tuple[str, int, int]]:
    """``("F"|"B", local chunk, micro-batch)`` in the order pipeline rank ``pp_rank`` runs them.

    GPipe runs all forwards then all backwards; 1F1B warms up with ``pp - rank - 1`` forwards, then
    alternates one forward and one backward; interleaved 1F1B warms up with ``(pp - rank - 1)·2 +
    (vpp - 1)·pp`` chunk forwards, walking micro-batches in groups of ``pp`` per chunk.
    """
    total = m * vpp
    if schedule == "gpipe" and vpp == 1:
        warmup = total
    elif vpp == 1:
        warmup = min(pp - pp_rank - 1, total)
    else:
        warmup = min((pp - pp_rank - 1) * 2 + (vpp - 1) * pp, total)

    def fwd(k: int) -> tuple[str, int, int]:
        return "F", (k // pp) % vpp if vpp > 1 else 0, (k // (pp * vpp)) * pp + k % pp if vpp > 1 else k

    def bwd(k: int) -> tuple[str, int, int]:
        return "B", vpp - 1 - (k // pp) % vpp if vpp > 1 else 0, fwd(k)[2]

    order = [fwd(k) for k in range(warmup)]
    for k in range(total - warmup):
        order += [fwd(warmup + k), bwd(k)]
    order += [bwd(k) for k in range(total - warmup, total)]
    return order


class MixedPrecisionState:
    """Gradient buffers and optimizer states of this rank, allocated up front as in a steady-state step.

    ``precision`` fp32 keeps fp32 gradients and Adam's two moments (8 B/param, no master copy); the
    low-precision ones keep gradient buffers per ``grad_buffers`` (fp32 4 B, low 2 B, both 6 B) and fp32
    master + two moments (12 B). States cover this rank's 1/``n_shard`` of each parameter under ZeRO-1
    (an even split, as Megatron's distributed optimizer) and the whole local tensor otherwise (under
    ZeRO-2/3 FSDP's parameters are already shards); the parameters in ``experts`` split over
    ``expert_shard`` = (edp, this rank's edp index) instead. SGD keeps no moments. :meth:`attach` installs
    the hooks that add each ``.grad`` into its buffers and free it.
    """

    def __init__(self, params: list[nn.Parameter], *, precision: str, grad_buffers: str, optimizer: str,
                 zero: int, n_shard: int, shard_rank: int, experts: frozenset[int] = frozenset(),
                 expert_shard: tuple[int, int] = (1, 0)) -> None:
        self.params = params
        self.master = precision != "fp32"
        kinds = {"fp32": [torch.float32], "low": [None], "both": [None, torch.float32]}[grad_buffers]
        self.grads: dict[nn.Parameter, list[torch.Tensor]] = {}
        self.states: dict[nn.Parameter, list[torch.Tensor]] = {}
        self.slices: dict[nn.Parameter, slice] = {}
        n_states = (2 if optimizer == "adam" else 0) + int(self.master)
        for p in params:
            x = local(p)
            self.grads[p] = [torch.zeros(x.shape, dtype=k or x.dtype) for k in (kinds if self.master else [None])]
            n = x.numel()
            n_sh, rank = expert_shard if id(p) in experts else (n_shard, shard_rank)
            part = -(-n // n_sh) if zero == 1 else n
            lo = min(n, rank * part) if zero == 1 else 0
            self.slices[p] = slice(lo, min(n, lo + part))
            self.states[p] = [torch.zeros(self.slices[p].stop - lo, dtype=torch.float32) for _ in range(n_states)]
        self._hooks: list[Any] = []

    def attach(self) -> None:
        """Install the gradient hooks (after a memory tracker's own, so it sees each ``.grad`` first)."""
        self._hooks = [p.register_post_accumulate_grad_hook(self._accumulate) for p in self.params]

    def _accumulate(self, p: torch.Tensor) -> None:
        g = p.grad
        if isinstance(g, DTensor) and g.placements != p.placements:
            g = g.redistribute(p.device_mesh, p.placements)
        g = local(g)
        for buf in self.grads[p]:
            buf.add_(g)
        p.grad = None

    def register(self, tracker: MemTracker) -> None:
        """Count the gradient buffers and optimizer states in ``tracker`` under their categories from
        the start (an existing entry keeps its category when later ops return the tensor)."""
        kinds = {k.name: k for k in tracker._ref_class}  # type: ignore[attr-defined]
        grad = kinds.get("SHARDED_GRAD", kinds.get("GRAD"))
        for bufs in self.grads.values():
            for b in bufs:
                tracker._update_and_maybe_create_winfos(b, grad)
        for states in self.states.values():
            for st in states:
                tracker._update_and_maybe_create_winfos(st, kinds["OPT"])

    @torch.no_grad()
    def step(self, lr: float = 1e-4) -> None:
        """Adam (or SGD) on this rank's slice of every parameter; write the updated weights back."""
        for p in self.params:
            sl, states = self.slices[p], self.states[p]
            weights = local(p).view(-1)[sl]
            update = self.grads[p][-1].view(-1)[sl].float()
            if len(states) - int(self.master) == 2:
                m, v = states[-2], states[-1]
                m.lerp_(update, 0.1)
                v.mul_(0.999).addcmul_(update, update, value=0.001)
                update = m / v.sqrt().add_(1e-8)
            if self.master:
                states[0].add_(update, alpha=-lr)
                weights.copy_(states[0])
            else:
                weights.add_(update, alpha=-lr)
        for bufs in self.grads.values():
            for b in bufs:
                b.zero_()

    def detach(self) -> None:
        """Remove the gradient hooks."""
        for h in self._hooks:
            h.remove()


class _CheapPeak:
    """Keep only the global peak snapshot (the per-module statistics cost O(ops × modules))."""

    def _update_peak_stats(self, peak_state: Any) -> None:
        for dev, snap in self._curr_mem_snap.items():  # type: ignore[attr-defined]
            if self._peak_mem.get(dev, 0) < snap[_TOTAL_KEY]:  # type: ignore[attr-defined]
                self._peak_mem[dev] = snap[_TOTAL_KEY]  # type: ignore[attr-defined]
                self._peak_mem_snap[dev] = dict(snap)  # type: ignore[attr-defined]


class PeakTracker(_CheapPeak, MemTracker):
    """torch's MemTracker (parameters, gradients, activations, temporaries) with a cheap peak update."""


class FSDPPeakTracker(_CheapPeak, FSDPMemTracker):
    """torch's FSDPMemTracker (sharded/unsharded parameters and gradients, collective buffers)."""


_aten = torch.ops.aten


def _sdpa_flops(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return flop_counter.sdpa_flop_count(q, k, v)


def _sdpa_backward_flops(grad: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None,
                         **kwargs: Any) -> int:
    return flop_counter.sdpa_backward_flop_count(grad, q, k, v)


#: Torch's SDPA FLOP counts, registered for the CPU flash kernel the dry run's attention uses.
SDPA_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops,
}
class FlopCounter(TorchDispatchMode):
    """Sums torch's FLOP formulas (``flop_counter.flop_registry`` + :data:`SDPA_FLOPS`) over the local
    ops. Unlike ``FlopCounterMode`` it tracks no modules: its per-module autograd wrappers keep tensors
    recomputed under activation checkpointing alive, which would distort the memory peak."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.formulas = {**flop_counter.flop_registry,
                         **{k: flop_counter.shape_wrapper(v) for k, v in SDPA_FLOPS.items()}}

    def __enter__(self) -> FlopCounter:
        self._fake_mode = active_fake_mode()
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if any(t is DTensor for t in types):
            return NotImplemented
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.formulas.get(func._overloadpacket)
        # DTensor's sharding propagation traces global shapes in its own fake mode: not this rank's work.
        if formula is not None and active_fake_mode() is self._fake_mode:
            self.total += formula(*args, **kwargs, out_val=out)
        return out
