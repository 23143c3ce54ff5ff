"""ParallelConfig: one parallel layout, validated against a model, a GPU count and a training target.

The rules follow torchtitan's ParallelDims: validate at construction and say which numbers disagree.
Which *frameworks* can run a layout (e.g. ZeRO-3 with pp > 1 runs in torchtitan but not in DeepSpeed)
is not a rule of this type; see :mod:`autotune.search.frameworks`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from autotune.errors import InfeasibleConfig
from autotune.spec import ModelSpec, TrainingSpec

__all__ = ["ParallelConfig", "Recompute", "RECOMPUTE_MODES", "PP_SCHEDULES", "LAYOUT_FIELDS", "DERIVED_FIELDS",
           "DERIVE_KEYS", "derive", "layout_kwargs"]

Recompute = Literal["none", "selective", "full"]
RECOMPUTE_MODES: tuple[str, ...] = get_args(Recompute)
PPSchedule = Literal["1f1b", "gpipe"]
PP_SCHEDULES: tuple[str, ...] = get_args(PPSchedule)


@dataclass(frozen=True, kw_only=True)
class ParallelConfig:
    """A parallel layout. ``dp`` and ``grad_accum`` are derived by :func:`derive`."""

    tp: int = 1
    """Tensor-parallel degree (Megatron column/row sharding of every linear layer)."""
    pp: int = 1
    """Pipeline-parallel stages."""
    dp: int = 1
    """Data-parallel replicas: GPUs / (tp · pp · cp)."""
    cp: int = 1
    """Context-parallel degree (the sequence is split over cp ranks; ring attention)."""
    vpp: int = 1
    """Virtual pipeline chunks per stage (interleaved 1F1B when > 1)."""
    zero: int = 0
    """ZeRO stage 0–3 (1 = Megatron's distributed optimizer; 3 = FSDP full sharding)."""
    dp_shard: int = 1
    """Ranks ZeRO shards over; dp_shard < dp replicates across dp/dp_shard groups (HSDP)."""
    ep: int = 1
    """Expert-parallel degree: each rank of an ep group holds experts/ep routed experts (MoE models only)."""
    etp: int = 1
    """Expert tensor-parallel degree: each expert's MLP sharded over etp ranks (Megatron-LM MoE parallel folding)."""
    micro_batch: int = 1
    """Sequences per micro-batch per data-parallel rank."""
    grad_accum: int = 1
    """Micro-batches per step per rank: global_batch = micro_batch · grad_accum · dp."""
    recompute: Recompute = "none"
    """Activation recomputation: none, selective (attention core) or full (whole block)."""
    recompute_layers: int | None = None
    """With full recompute: how many layers per stage are recomputed (None = all of them)."""
    pp_schedule: PPSchedule = "1f1b"
    """Pipeline schedule: 1f1b (interleaved when vpp > 1) or gpipe (all forwards, then all backwards)."""
    sequence_parallel: bool = False
    """Shard norms/dropout activations over the tp group along the sequence (needs tp > 1)."""
    tp_comm_overlap: bool = False
    """Overlap tensor-parallel collectives with GEMMs (Megatron --tp-comm-overlap)."""
    overlap_grad_reduce: bool = True
    """Overlap the data-parallel gradient reduction with backward."""
    overlap_param_gather: bool = True
    """Overlap ZeRO parameter all-gathers with compute."""

    @property
    def world(self) -> int:
        """GPUs the layout occupies."""
        return self.tp * self.pp * self.cp * self.dp

    @property
    def edp(self) -> int:
        """Expert data-parallel size: the ranks of a stage, tp·cp·dp, folded as etp·ep·edp (Megatron-LM core_v0.19.0
        megatron/core/transformer/moe/README.md, MoE parallel folding); expert states ZeRO-shard over edp."""
        return self.tp * self.cp * self.dp // (self.etp * self.ep)

    @property
    def dp_replicate(self) -> int:
        """Replica groups in HSDP (dp / dp_shard)."""
        return self.dp // self.dp_shard

    @property
    def interleaved(self) -> bool:
        """True when the pipeline runs the interleaved 1F1B schedule."""
        return self.vpp > 1

    def to_dict(self) -> dict[str, Any]:
        """All fields, JSON-ready (every field is a scalar, so no deep copy is needed)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def key(self) -> tuple[Any, ...]:
        """A hashable identity of the layout."""
        return tuple(self.to_dict().values())


#: Every field of a layout, in declaration order (the cost model's numeric layout uses the same order).
LAYOUT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ParallelConfig))
#: Fields :func:`derive` computes from the others and the training target.
DERIVED_FIELDS: tuple[str, ...] = ("dp", "grad_accum")
#: The keyword arguments of :func:`derive` that a space point can set.
DERIVE_KEYS: tuple[str, ...] = tuple(k for k in LAYOUT_FIELDS if k not in DERIVED_FIELDS)


def layout_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """The :func:`derive` arguments among ``values`` (a space point or a stored layout)."""
    return {k: values[k] for k in DERIVE_KEYS if k in values}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise InfeasibleConfig(msg)


def _check_experts(model: ModelSpec, stage_ranks: int, ranks_text: str, ep: int, etp: int) -> None:
    """Megatron-LM MoE parallel folding: etp·ep divides the stage's tp·cp·dp ranks, ep the routed experts."""
    if not model.is_moe:
        _check(ep == 1 and etp == 1, f"ep={ep} etp={etp}: expert parallelism needs a mixture-of-experts model "
                                     f"(experts={model.experts})")
        return
    _check(stage_ranks % (etp * ep) == 0,
           f"etp*ep={etp}*{ep}={etp * ep} does not divide {ranks_text}={stage_ranks}")
    _check(model.experts % ep == 0, f"ep={ep} does not divide experts={model.experts}")
    _check(model.expert_ffn % etp == 0, f"etp={etp} does not divide expert_ffn_hidden={model.expert_ffn}")


def derive(
    model: ModelSpec,
    training: TrainingSpec,
    gpus: int,
    *,
    tp: int = 1,
    pp: int = 1,
    cp: int = 1,
    vpp: int = 1,
    zero: int = 0,
    dp_shard: int | None = None,
    ep: int = 1,
    etp: int = 1,
    micro_batch: int = 1,
    recompute: str = "none",
    recompute_layers: int | None = None,
    sequence_parallel: bool = False,
    pp_schedule: str = "1f1b",
    tp_comm_overlap: bool = False,
    overlap_grad_reduce: bool = True,
    overlap_param_gather: bool = True,
) -> ParallelConfig:
    """Build a validated :class:`ParallelConfig`, deriving dp and grad_accum.

    Expert layouts follow Megatron-LM's MoE parallel folding: tp·cp·dp = etp·ep·edp on each pipeline stage, the
    routed experts divisible by ep, each expert's MLP width by etp; a dense model keeps ep = etp = 1.
    Raises :class:`InfeasibleConfig` with the numbers when the layout cannot run.
    """
    for name, value in dict(tp=tp, pp=pp, cp=cp, vpp=vpp, ep=ep, etp=etp, micro_batch=micro_batch,
                            gpus=gpus).items():
        _check(isinstance(value, int) and value >= 1, f"{name}={value} must be a positive integer")
    _check(zero in (0, 1, 2, 3), f"zero={zero} must be one of 0, 1, 2, 3")
    _check(recompute in RECOMPUTE_MODES, f"recompute={recompute!r} must be one of {', '.join(RECOMPUTE_MODES)}")
    _check(pp_schedule in PP_SCHEDULES, f"pp_schedule={pp_schedule!r} must be one of {', '.join(PP_SCHEDULES)}")
    _check(pp_schedule == "1f1b" or vpp == 1, f"pp_schedule={pp_schedule!r} cannot interleave (vpp={vpp})")
    _check(gpus % (tp * pp * cp) == 0, f"tp*pp*cp={tp}*{pp}*{cp}={tp * pp * cp} does not divide gpus={gpus}")
    dp = gpus // (tp * pp * cp)
    _check(model.heads % tp == 0, f"tp={tp} does not divide heads={model.heads}")
    kv = model.n_kv_heads
    _check(kv % tp == 0 or tp % kv == 0, f"tp={tp} and kv_heads={kv}: neither divides the other")
    _check(model.layers % (pp * vpp) == 0,
           f"layers={model.layers} is not divisible by pp*vpp={pp}*{vpp}={pp * vpp}")
    _check(vpp == 1 or pp > 1, f"vpp={vpp} needs pp > 1 (pp={pp})")
    _check(training.seq_len % cp == 0, f"cp={cp} does not divide seq_len={training.seq_len}")
    _check(training.seq_len // cp % tp == 0 or not sequence_parallel,
           f"sequence_parallel: tp={tp} does not divide the local sequence {training.seq_len // cp}")
    _check(not sequence_parallel or tp > 1, "sequence_parallel needs tp > 1 (tp=1)")
    _check(not tp_comm_overlap or tp > 1, "tp_comm_overlap needs tp > 1 (tp=1)")
    _check(training.global_batch % (micro_batch * dp) == 0,
           f"global_batch={training.global_batch} is not divisible by micro_batch*dp={micro_batch}*{dp}"
           f"={micro_batch * dp}")
    if zero == 0:
        _check(dp_shard in (None, 1), f"dp_shard={dp_shard} needs zero >= 1 (zero=0 shards nothing)")
        shard = 1
    else:
        shard = dp if dp_shard is None else dp_shard
        _check(isinstance(shard, int) and shard >= 1 and dp % shard == 0,
               f"dp_shard={shard} does not divide dp={dp}")
    if recompute_layers is not None:
        _check(recompute == "full", f"recompute_layers={recompute_layers} needs recompute='full'")
        per_stage = model.layers // pp
        _check(1 <= recompute_layers <= per_stage,
               f"recompute_layers={recompute_layers} must be in 1..layers/pp={per_stage}")
    _check_experts(model, tp * cp * dp, f"tp*cp*dp={tp}*{cp}*{dp}", ep, etp)
    grad_accum = training.global_batch // (micro_batch * dp)
    return ParallelConfig(
        tp=tp, pp=pp, dp=dp, cp=cp, vpp=vpp, zero=zero, dp_shard=shard, ep=ep, etp=etp, micro_batch=micro_batch,
        grad_accum=grad_accum, recompute=recompute, recompute_layers=recompute_layers,  # type: ignore[arg-type]
        sequence_parallel=sequence_parallel, pp_schedule=pp_schedule,  # type: ignore[arg-type]
        tp_comm_overlap=tp_comm_overlap,
        overlap_grad_reduce=overlap_grad_reduce, overlap_param_gather=overlap_param_gather,
    )
