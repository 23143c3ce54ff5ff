"""The ``dryrun`` fidelity: exact per-rank memory and FLOPs of one layout at its real size, on one CPU.

How it runs (torchtitan's memory estimator, extended to every dimension of :class:`ParallelConfig`):

* A fake process group (``init_process_group('fake', FakeStore, rank, world_size)``) at the layout's real
  world size and a ``("pp", "dp", "cp", "tp")`` CPU DeviceMesh; every tensor lives under
  ``FakeTensorMode`` (shapes and dtypes, no storage), so a 70B model costs seconds.
* Pipelining does not run under a fake process group (``PipelineStage`` exchanges shapes), so the dry
  run builds just this pipeline rank's stage(s) (:func:`workers.dryrun_parts.build_chunks`: its blocks,
  embeddings on the first stage, final norm and output on the last) and replays the forwards and
  backwards of the schedule in order (:func:`~workers.dryrun_parts.schedule_order`) up to the first
  backward after the most micro-batches are in flight, then drains them. Received activations and
  gradients are fake tensors of the p2p shapes. The first and the last pipeline rank (and rank 1 when the
  stages are uneven) are run and the largest total is reported (the worst stage, as the analytic model
  does). Each is simulated from global rank 0's view of one process group: the stage is set by which chunks are built.
* MoE layouts (:mod:`workers.parallel.ep`): this rank holds experts/ep routed experts (at 1/etp of their
  width, :mod:`workers.parallel.etp`), routes balanced
  (:class:`~workers.dryrun_parts.BalancedMoE`) and exchanges tokens by all-to-all over the fake ep group.
* The real tensor + sequence parallelism, activation recomputation and FSDP (ZeRO-2/3, HSDP) of
  :mod:`workers.parallel` are applied; logits stay vocabulary-sharded (``loss_parallel``).
  DDP is not wrapped: its buckets are the gradient buffers below (``gradient_as_bucket_view``); ZeRO-1
  shards optimizer states evenly (Megatron's distributed optimizer) where the measured path uses torch's
  ``ZeroRedundancyOptimizer`` (whole parameters per rank). Context parallelism is not dry-run.
* Precision follows Megatron, like the analytic model: weights are stored and computed in the compute
  dtype (bf16: 2 B), gradients land in buffers of ``TrainingSpec.grad_buffers`` (fp32 main grads: 4 B),
  the optimizer keeps an fp32 master copy + Adam moments (12 B) — :class:`~workers.dryrun_parts.
  MixedPrecisionState`. torch's own FSDP ``MixedPrecisionPolicy`` keeps fp32 sharded parameters as the
  master (4 + 4 + 8 = 16 B/param instead of 2 + 4 + 12 = 18 B); the measure fidelity's autocast path
  keeps fp32 weights and caches bf16 copies for the step. Neither is what this dry run reports.
  ZeRO-2 (FSDP without resharding after forward) holds the gathered bf16 weights (2Ψ) from forward to
  backward; FSDP shards the dry run's bf16 parameters, so it also holds their bf16 shard (2Ψ/N), a copy no
  stack keeps: FSDP2's ``MixedPrecisionPolicy`` gathers from the fp32 sharded parameter, which is the master,
  and DeepSpeed's ZeRO-2 keeps whole bf16 weights beside an fp32 master partition (Rajbhandari et al. 2020,
  2Ψ + 14Ψ/N with bf16 gradients). That shard is left out (the fp32 master is in the optimizer states): with
  ep > 1 and one expert data-parallel rank it is every routed expert again.
* Gradient buffers and optimizer states exist for the whole step (steady state): they are allocated
  before the step and registered with torch's MemTracker / FSDPMemTracker, which measure everything at
  the peak: weights, gradients, optimizer states, activations (what autograd saves, including
  recomputation), temporaries, FSDP gather/scatter buffers.
  ``other`` = temporaries + buffers + collective buffers (+ ZeRO-3's gathered weights) + the GPU profile's
  fixed ``overhead_gib`` (CUDA context, communicators), the one term no CPU run can see.
* FLOPs come from torch's FLOP formulas (``torch.utils.flop_counter``); CPU attention runs the fused
  ``_scaled_dot_product_flash_attention_for_cpu`` kernel, which torch's counter has no formula for, so
  the dry run registers torch's own SDPA formulas for it (memory stays that of a fused kernel). They
  count flash backward's recomputation of Q·Kᵀ (2·s·h per token per layer), which the analytic
  hardware FLOPs of :mod:`autotune.costmodel.flops` leave out.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import _sharding_prop
from torch.distributed.tensor.parallel import loss_parallel
from torch.testing._internal.distributed.fake_pg import FakeStore

from autotune.config import ParallelConfig
from autotune.costmodel.estimate import MEMORY_KEYS, memory_reason
from autotune.evaluation import EvalTask, TrialResult
from autotune.spec import GPUSpec, ModelSpec, TrainingSpec
from workers.dryrun_kernels import save_sequence_shards, vocab_parallel_cross_entropy
from workers.dryrun_parts import (
    FlopCounter,
    FSDPPeakTracker,
    MixedPrecisionState,
    PeakTracker,
    build_chunks,
    local,
    schedule_order,
)
from workers.parallel import UnsupportedLayout, cross_entropy
from workers.parallel.ep import check_ep, expert_mesh, expert_params
from workers.parallel.mesh import grad_mesh
from workers.parallel.zero import PRECISION_DTYPES

__all__ = ["dry_run", "dryrun_estimate", "DryRunEvaluator"]

GIB = float(2**30)


_CATEGORY = {  # MemTracker / FSDPMemTracker reference type -> memory key
    "PARAM": "weights", "SHARDED_PARAM": "weights", "GRAD": "gradients", "SHARDED_GRAD": "gradients",
    "ACT": "activations", "INP": "activations", "OPT": "optimizer",
}


@contextlib.contextmanager
def _private_sharding_fake_mode() -> Iterator[None]:
    """Make DTensor's sharding propagation trace global shapes in its own FakeTensorMode, which the
    memory trackers skip, instead of the dry run's (where its global-shape tensors would count)."""
    original = _sharding_prop.detect_fake_mode
    _sharding_prop.detect_fake_mode = lambda *args: None
    try:
        yield
    finally:
        _sharding_prop.detect_fake_mode = original


def _peak_prefix(order: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """The schedule up to the first backward after its most micro-batches are in flight, then the
    backwards of everything still in flight (the rest of a schedule repeats a state already seen)."""
    live, best, at = 0, -1, 0
    for i, (op, _, _) in enumerate(order):
        live += 1 if op == "F" else -1
        if live > best:
            best, at = live, i
    cut = next(i for i in range(at, len(order)) if order[i][0] == "B") + 1
    done = {(c, mb) for op, c, mb in order[:cut] if op == "F"} - {(c, mb) for op, c, mb in order[:cut] if op == "B"}
    return order[:cut] + [o for o in order[cut:] if o[0] == "B" and (o[1], o[2]) in done]


def _run_ranks(model: ModelSpec, training: TrainingSpec, cfg: ParallelConfig, pp_ranks: list[int],
               fused: bool, fake: bool) -> dict[int, dict[str, Any]]:
    """Peak bytes per category and FLOPs of each pipeline stage in ``pp_ranks``, from rank 0's view of
    one process group (the stage is chosen by building its chunks; rank 0 holds full FSDP shards)."""
    if fake:
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=cfg.world)
    else:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (cfg.pp, cfg.dp, cfg.cp, cfg.tp), mesh_dim_names=("pp", "dp", "cp", "tp"))
        gmesh = grad_mesh(mesh["dp", "cp"]._flatten("dp_cp"), cfg)
        shard_mesh = gmesh if gmesh.ndim == 1 else gmesh["dp_shard"]
        emesh = expert_mesh(mesh, cfg) if model.is_moe else None
        runs = {}
        for r in pp_ranks:
            # allow_non_fake_inputs: the DeviceMesh keeps its small real rank tensor (FSDP reads it).
            with FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext(), \
                    _private_sharding_fake_mode():
                runs[r] = _simulate(model, training, cfg, r, mesh, gmesh, shard_mesh, emesh, fused)
        return runs
    finally:
        dist.destroy_process_group()


def _simulate(model: ModelSpec, training: TrainingSpec, cfg: ParallelConfig, pp_rank: int, mesh: Any,
              gmesh: Any, shard_mesh: Any, emesh: Any, fused: bool) -> dict[str, Any]:
    precision = training.precision
    chunks, ids = build_chunks(model, cfg, seq_len=training.seq_len, precision=precision, pp_rank=pp_rank,
                               mesh=mesh, shard_mesh=gmesh, fused=fused, expert_mesh=emesh)
    params = list({id(p): p for c in chunks for p in c.parameters()}.values())
    experts = frozenset(id(p) for c in chunks for p in expert_params(c))
    state = MixedPrecisionState(params, precision=precision, grad_buffers=training.grad_buffers,
                                optimizer=training.optimizer, zero=cfg.zero, n_shard=cfg.dp_shard,
                                shard_rank=shard_mesh.get_local_rank(), experts=experts,
                                expert_shard=(cfg.edp, emesh["edp"].get_local_rank()) if emesh else (1, 0))
    fsdp = cfg.zero >= 2 and len(chunks) == 1
    tracker = FSDPPeakTracker(chunks[0]) if fsdp else PeakTracker()
    n_stages, b, s, dtype = cfg.pp * cfg.vpp, cfg.micro_batch, training.seq_len, PRECISION_DTYPES[precision]
    recv = (b, s // cfg.tp if cfg.sequence_parallel else s, model.hidden)
    tokens = torch.randint(0, model.vocab, (b, s))
    order = schedule_order(pp_rank, cfg.pp, cfg.vpp, cfg.grad_accum, cfg.pp_schedule) if n_stages > 1 \
        else [("F", 0, 0), ("B", 0, 0)]
    order = _peak_prefix(order)
    vocab_parallel = loss_parallel() if cfg.tp > 1 and not fused else contextlib.nullcontext()
    tp_group = mesh["tp"].get_group() if cfg.tp > 1 else None
    vocab_start = mesh["tp"].get_local_rank() * (model.vocab // cfg.tp)

    def loss(logits: torch.Tensor) -> torch.Tensor:
        if not fused:
            return cross_entropy(logits, tokens)
        return vocab_parallel_cross_entropy(local(logits), tokens, vocab_start, tp_group)

    live: dict[tuple[int, int], torch.Tensor] = {}
    counter = FlopCounter()
    shards = save_sequence_shards(chunks) if fused and cfg.sequence_parallel else contextlib.nullcontext()
    with counter, tracker, vocab_parallel, shards:
        if not fsdp:
            for c in chunks:
                tracker._track_module_params_and_buffers(c, install_grad_hooks=True)
        state.register(tracker)
        state.attach()
        for op, c, mb in order:
            stage = ids[c]
            if op == "F":
                for m in chunks[c].modules():  # per-module statistics refuse a module's second forward
                    tracker.memory_tracking.pop(m, None)
                x = tokens if stage == 0 else torch.empty(recv, dtype=dtype, requires_grad=True)
                live[c, mb] = loss(chunks[c](x)) if stage == n_stages - 1 else chunks[c](x)
            else:
                y = live.pop((c, mb))
                y.backward() if y.ndim == 0 else y.backward(torch.ones_like(y))
                del y
    state.step()
    state.detach()
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()), {})
    mem = dict.fromkeys(MEMORY_KEYS, 0.0)
    for ref, nbytes in peak.items():
        if ref == "Total":
            continue
        name = ref.name
        if name == "SHARDED_PARAM" and cfg.zero == 2:
            continue  # the stand-in for the fp32 master's shard, which the optimizer states already count
        key = _CATEGORY.get(name, "other")
        if name == "UNSHARDED_PARAM" and cfg.zero == 2:
            key = "weights"
        mem[key] += nbytes
    mem["total"] = sum(mem[k] for k in MEMORY_KEYS if k != "total")
    chunk_flops = counter.total / sum(op == "F" for op, _, _ in order)
    return {"memory_bytes": mem, "flops": chunk_flops * cfg.grad_accum * cfg.vpp}


def dry_run(model: ModelSpec, training: TrainingSpec, cfg: ParallelConfig, *,
            kernels: str = "fused", fake: bool = True) -> dict[str, Any]:
    """Dry-run ``cfg`` for ``model``: peak bytes per category (without fixed overhead) of the worst
    pipeline rank, its stage index, and that rank's hardware FLOPs per iteration. ``kernels`` is
    ``"fused"`` (GPU training-stack storage, :mod:`workers.dryrun_kernels`) or ``"eager"`` (the
    reference model as it runs on CPU). ``fake=False`` runs the same step on real tensors in a
    one-rank gloo group (world size 1 only): the measured reference the fake run is checked against.

    Runs in a spawned child process (its own fake process group). Raises :class:`UnsupportedLayout`
    for context parallelism.
    """
    if cfg.cp > 1:
        raise UnsupportedLayout("context parallelism is not dry-run (ring attention needs a real backend)")
    if model.is_moe:
        check_ep(model, cfg)
    if not fake and cfg.world != 1:
        raise ValueError(f"a real (fake=False) run needs world size 1, not {cfg.world}")
    uneven = cfg.pp_first_layers is not None or cfg.pp_last_layers is not None
    # stage 1, the middle stage with the most micro-batches in flight, can decide when stages are uneven
    ranks = [0] if cfg.pp == 1 else [0, 1, cfg.pp - 1] if uneven and cfg.pp > 2 else [0, cfg.pp - 1]
    if kernels not in ("fused", "eager"):
        raise ValueError(f"kernels={kernels!r} must be 'fused' or 'eager'")
    # A fresh process per dry run: torch keeps process-group names in caches that outlive
    # destroy_process_group, and a later group of equal shape would resolve a destroyed one.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = pool.submit(_run_ranks, model, training, cfg, ranks, kernels == "fused", fake).result()
    worst = max(ranks, key=lambda r: runs[r]["memory_bytes"]["total"])
    return {**runs[worst], "worst_stage": worst,
            "stage_totals_bytes": {r: runs[r]["memory_bytes"]["total"] for r in ranks}}


def dryrun_estimate(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, cfg: ParallelConfig, *,
                    kernels: str = "fused") -> dict[str, Any]:
    """The analytic estimate's memory keys (``memory_gib``, ``capacity_gib``, ``fits``, ``worst_stage``),
    measured by :func:`dry_run`, plus ``flops`` (per rank per iteration), ``fidelity`` and ``wall_s``."""
    start = time.perf_counter()
    raw = dry_run(model, training, cfg, kernels=kernels)
    mem = {k: v / GIB for k, v in raw["memory_bytes"].items()}
    mem["other"] += gpu.overhead_gib
    mem["total"] += gpu.overhead_gib
    capacity = gpu.memory_gib * gpu.usable_fraction
    return {
        "model": model.name, "gpu": gpu.name, "gpus": cfg.world,
        "config": cfg.to_dict() | {"dp_replicate": cfg.dp_replicate},
        "params": model.param_count(), "memory_gib": mem, "capacity_gib": capacity,
        "fits": mem["total"] <= capacity, "worst_stage": raw["worst_stage"], "flops": raw["flops"],
        "fidelity": "dryrun", "wall_s": time.perf_counter() - start,
    }


class DryRunEvaluator:
    """Scores a layout with :func:`dryrun_estimate`: ``oom`` over capacity, ``unsupported`` where the
    dry run cannot run the layout."""

    fidelity = "dryrun"

    def evaluate(self, task: EvalTask) -> TrialResult:
        """Dry-run one layout."""
        start = time.perf_counter()
        try:
            metrics = dryrun_estimate(task.model, task.training, task.gpu, task.config)
        except UnsupportedLayout as e:
            return TrialResult(status="unsupported", fidelity=self.fidelity, reason=str(e),
                               wall_s=time.perf_counter() - start)
        wall = time.perf_counter() - start
        if not metrics["fits"]:
            reason = memory_reason(metrics['memory_gib']['total'], metrics['capacity_gib'])
            return TrialResult(status="oom", fidelity=self.fidelity, metrics=metrics, reason=reason, wall_s=wall)
        return TrialResult(status="ok", fidelity=self.fidelity, metrics=metrics, wall_s=wall)
