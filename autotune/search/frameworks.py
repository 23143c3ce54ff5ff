"""Which training frameworks can run a parallel layout: one table of rules, read by exporters and spaces.

A :class:`ParallelConfig` is framework-neutral; this table says where Megatron-LM, DeepSpeed
(Megatron-DeepSpeed) and torchtitan differ. Each rule names the field it constrains, a predicate
that holds when the layout is supported, and a message template formatted with the layout's fields
(``cfg.to_dict()``) plus ``seq_len`` and ``precision`` from the training spec.

Sources (the releases the exporters target: Megatron-LM core_v0.19.0, DeepSpeed 0.19 with
Megatron-DeepSpeed's ``megatron/arguments.py``, torchtitan 0.3.0):

- Megatron-LM: ZeRO-1 is ``--use-distributed-optimizer``; there is no ZeRO-2/3 outside Megatron-FSDP
  (not modelled); ``--tp-comm-overlap`` asserts ``--sequence-parallel``; the pipeline runs 1F1B
  (interleaved with virtual stages), never GPipe; block recompute counts layers per model chunk
  (``TransformerBlock._checkpointed_forward``), so a per-stage count must split over the vpp chunks.
- DeepSpeed: ZeRO-2/3 reject the pipeline engine; the pipeline engine runs only its 1F1B-style
  ``TrainSchedule`` (no interleaving, no GPipe);
  Megatron-DeepSpeed has no ring context parallelism, no TP comm overlap, no FP8, and partitions
  ZeRO states over the whole data-parallel group.
- torchtitan: FSDP2 (``fully_shard``) only, so no ZeRO-1; zero=0 is ``fully_shard`` over a size-1
  shard mesh (0.3.0's llama3 ``parallelize`` always applies it, so the 0.2 refusal "DDP has not
  supported > 1D parallelism" of ``apply_ddp`` no longer arises and DDP composes with tp/pp);
  pipeline schedules 1F1B, Interleaved1F1B and GPipe (``torch.distributed.pipelining``); tensor
  parallelism with or without sequence parallelism (``parallelism.enable_sequence_parallel``); CP
  always applies FSDP over the cp ranks; mixed precision is bf16 or fp32 (fp8 is a model config of its
  own: see :mod:`autotune.export.torchtitan`); activation checkpointing is per block, with no
  partial-layer count; load-balanced CP needs ``seq_len`` divisible by ``2·cp·tp``
  (``ParallelDims.seq_len_divisor``).

Expert parallelism (mixture-of-experts models; a dense model keeps ep = etp = 1, :func:`autotune.config.derive`):

- Megatron-LM: --expert-model-parallel-size and --expert-tensor-parallel-size over any folding of the
  stage's tp·cp·dp ranks (MoE parallel folding); an MoE layer in training refuses tensor parallelism
  without --sequence-parallel (``MoELayer.forward``, megatron/core/transformer/moe/moe_layer.py): the rule
  catches ep > 1, the exporter the MoE model at ep = 1 (:func:`autotune.export.megatron.check_model`).
- DeepSpeed: not exported (see :func:`autotune.export.deepspeed.check_model`): DeepSpeed's MoE layer
  (``deepspeed.moe.layer.MoE``, ep_size) gates top-1 or top-2 only and has no expert tensor parallelism.
- torchtitan 0.3.0: ``parallelism.expert_parallel_degree`` only, no expert tensor parallelism: ep borrows its
  ranks from dp_shard·cp·tp (``efsdp = dp_shard·cp·tp / ep``, ``ParallelDims.build_mesh``; dp_replicate
  stays outside), and with ep = 1 the routed experts are tensor-parallel over tp (etp = tp,
  ``models/common/moe_sharding.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from autotune.config import ParallelConfig
from autotune.errors import InfeasibleConfig, SpecError
from autotune.spec import TrainingSpec

__all__ = ["FRAMEWORKS", "RULES", "Rule", "unsupported_reason", "require_supported"]

FRAMEWORKS: tuple[str, ...] = ("megatron", "deepspeed", "torchtitan")
"""Framework names, in the order messages list them."""


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One capability limit of one framework."""

    field: str
    """The ParallelConfig or TrainingSpec field the rule constrains."""
    ok: Callable[[ParallelConfig, TrainingSpec], bool]
    """True when the layout is supported."""
    message: str
    """Why not, as a ``str.format`` template over the layout's fields, ``seq_len`` and ``precision``."""


RULES: dict[str, tuple[Rule, ...]] = {
    "megatron": (
        Rule(field="zero", ok=lambda c, t: c.zero in (0, 1),
             message="zero={zero} is not supported (Megatron-LM shards optimizer states only:"
                     " zero=1 is --use-distributed-optimizer)"),
        Rule(field="pp_schedule", ok=lambda c, t: c.pp == 1 or c.pp_schedule == "1f1b",
             message="pp_schedule={pp_schedule} is not supported (Megatron-LM pipelines run 1F1B)"),
        Rule(field="tp_comm_overlap", ok=lambda c, t: not c.tp_comm_overlap or c.sequence_parallel,
             message="tp_comm_overlap=True with sequence_parallel=False is not supported"
                     " (--tp-comm-overlap needs --sequence-parallel)"),
        Rule(field="recompute_layers", ok=lambda c, t: (c.recompute_layers or 0) % c.vpp == 0,
             message="recompute_layers={recompute_layers} with vpp={vpp} is not supported"
                     " (--recompute-num-layers counts layers per virtual stage)"),
        Rule(field="ep", ok=lambda c, t: c.ep == 1 or c.tp == 1 or c.sequence_parallel,
             message="ep={ep} with tp={tp} and sequence_parallel=False is not supported"
                     " (MoE layers with tensor parallelism need --sequence-parallel)"),
    ),
    "deepspeed": (
        Rule(field="zero", ok=lambda c, t: c.zero < 2 or c.pp == 1,
             message="zero={zero} with pp={pp} is not supported"
                     " (ZeRO-2/3 cannot be combined with pipeline parallelism)"),
        Rule(field="vpp", ok=lambda c, t: c.vpp == 1,
             message="vpp={vpp} is not supported"
                     " (the DeepSpeed pipeline engine has no interleaved schedule)"),
        Rule(field="pp_schedule", ok=lambda c, t: c.pp == 1 or c.pp_schedule == "1f1b",
             message="pp_schedule={pp_schedule} is not supported"
                     " (the DeepSpeed pipeline engine runs its 1F1B TrainSchedule)"),
        Rule(field="cp", ok=lambda c, t: c.cp == 1,
             message="cp={cp} is not supported (Megatron-DeepSpeed has no context parallelism)"),
        Rule(field="dp_shard", ok=lambda c, t: c.zero == 0 or c.dp_shard == c.dp,
             message="dp_shard={dp_shard} with dp={dp} is not supported"
                     " (ZeRO partitions over the whole data-parallel group)"),
        Rule(field="tp_comm_overlap", ok=lambda c, t: not c.tp_comm_overlap,
             message="tp_comm_overlap=True is not supported (Megatron-DeepSpeed has no TP comm overlap)"),
        Rule(field="precision", ok=lambda c, t: t.precision != "fp8",
             message="precision=fp8 is not supported (DeepSpeed trains in fp32, fp16 or bf16)"),
    ),
    "torchtitan": (
        Rule(field="zero", ok=lambda c, t: c.zero != 1,
             message="zero=1 is not supported (FSDP2 shards parameters too: use zero=2 or zero=3)"),
        Rule(field="zero", ok=lambda c, t: c.zero >= 2 or c.cp == 1,
             message="zero={zero} with cp={cp} is not supported"
                     " (context parallelism always applies FSDP over the cp ranks: use zero=2 or zero=3)"),
        Rule(field="recompute_layers", ok=lambda c, t: c.recompute_layers is None,
             message="recompute_layers={recompute_layers} is not supported"
                     " (activation checkpointing applies to every block)"),
        Rule(field="precision", ok=lambda c, t: t.precision != "fp16",
             message="precision=fp16 is not supported (mixed_precision_param is bfloat16 or float32)"),
        Rule(field="cp", ok=lambda c, t: c.cp == 1 or t.seq_len % (2 * c.cp * c.tp) == 0,
             message="cp={cp} with tp={tp} needs seq_len divisible by 2*cp*tp (got seq_len={seq_len})"),
        Rule(field="etp", ok=lambda c, t: c.etp == 1 or (c.ep == 1 and c.etp == c.tp),
             message="etp={etp} with ep={ep} and tp={tp} is not supported (no expert tensor parallel degree:"
                     " experts are sharded over tp when ep=1, over ep alone otherwise)"),
        Rule(field="ep", ok=lambda c, t: (c.dp_shard if c.zero >= 2 else 1) * c.cp * c.tp % c.ep == 0,
             message="ep={ep} with dp_shard={dp_shard} cp={cp} tp={tp} zero={zero} is not supported"
                     " (expert parallelism borrows its ranks from the FSDP shard, cp and tp ranks)"),
    ),
}
"""Capability rules per framework; a layout is supported when every rule of its framework holds."""


def _rules(framework: str) -> tuple[Rule, ...]:
    if framework not in RULES:
        raise SpecError(f"framework: unknown {framework!r} (allowed: {', '.join(FRAMEWORKS)})")
    return RULES[framework]


def unsupported_reason(framework: str, cfg: ParallelConfig, training: TrainingSpec) -> str | None:
    """None when ``framework`` can run ``cfg``; otherwise a message naming the framework and field.

    Raises :class:`SpecError` for an unknown framework.
    """
    for rule in _rules(framework):
        if not rule.ok(cfg, training):
            fields = cfg.to_dict() | {"seq_len": training.seq_len, "precision": training.precision}
            return f"{framework}: {rule.message.format(**fields)}"
    return None


def require_supported(framework: str, cfg: ParallelConfig, training: TrainingSpec) -> None:
    """Raise :class:`InfeasibleConfig` with :func:`unsupported_reason`'s message when unsupported."""
    reason = unsupported_reason(framework, cfg, training)
    if reason is not None:
        raise InfeasibleConfig(reason)
