"""Every rule of the framework capability table, with a layout that breaks it and one that passes."""

from __future__ import annotations

import pytest

from autotune.config import ParallelConfig
from autotune.errors import InfeasibleConfig, SpecError
from autotune.search.frameworks import FRAMEWORKS, RULES, require_supported, unsupported_reason
from autotune.spec import TrainingSpec

BF16 = TrainingSpec(seq_len=4096, global_batch=64, precision="bf16")

# (framework, field, breaking layout, training, expected message)
CASES = [
    ("megatron", "zero", ParallelConfig(zero=2, dp=8, dp_shard=8), BF16,
     "megatron: zero=2 is not supported (Megatron-LM shards optimizer states only:"
     " zero=1 is --use-distributed-optimizer)"),
    ("megatron", "pp_schedule", ParallelConfig(pp=2, pp_schedule="gpipe"), BF16,
     "megatron: pp_schedule=gpipe is not supported (Megatron-LM pipelines run 1F1B)"),
    ("megatron", "tp_comm_overlap", ParallelConfig(tp=2, tp_comm_overlap=True), BF16,
     "megatron: tp_comm_overlap=True with sequence_parallel=False is not supported"
     " (--tp-comm-overlap needs --sequence-parallel)"),
    ("megatron", "recompute_layers", ParallelConfig(pp=2, vpp=2, recompute="full", recompute_layers=3), BF16,
     "megatron: recompute_layers=3 with vpp=2 is not supported"
     " (--recompute-num-layers counts layers per virtual stage)"),
    ("deepspeed", "zero", ParallelConfig(zero=3, pp=2, dp=4, dp_shard=4), BF16,
     "deepspeed: zero=3 with pp=2 is not supported (ZeRO-2/3 cannot be combined with pipeline parallelism)"),
    ("deepspeed", "vpp", ParallelConfig(pp=2, vpp=2), BF16,
     "deepspeed: vpp=2 is not supported (the DeepSpeed pipeline engine has no interleaved schedule)"),
    ("deepspeed", "pp_schedule", ParallelConfig(pp=4, pp_schedule="gpipe"), BF16,
     "deepspeed: pp_schedule=gpipe is not supported"
     " (the DeepSpeed pipeline engine runs its 1F1B TrainSchedule)"),
    ("deepspeed", "cp", ParallelConfig(cp=2), BF16,
     "deepspeed: cp=2 is not supported (Megatron-DeepSpeed has no context parallelism)"),
    ("deepspeed", "dp_shard", ParallelConfig(zero=3, dp=8, dp_shard=4), BF16,
     "deepspeed: dp_shard=4 with dp=8 is not supported (ZeRO partitions over the whole data-parallel group)"),
    ("deepspeed", "tp_comm_overlap", ParallelConfig(tp=2, sequence_parallel=True, tp_comm_overlap=True), BF16,
     "deepspeed: tp_comm_overlap=True is not supported (Megatron-DeepSpeed has no TP comm overlap)"),
    ("deepspeed", "precision", ParallelConfig(), BF16.model_copy(update={"precision": "fp8"}),
     "deepspeed: precision=fp8 is not supported (DeepSpeed trains in fp32, fp16 or bf16)"),
    ("torchtitan", "zero", ParallelConfig(zero=1, dp=8, dp_shard=8), BF16,
     "torchtitan: zero=1 is not supported (FSDP2 shards parameters too: use zero=2 or zero=3)"),
    ("torchtitan", "zero", ParallelConfig(cp=2, dp=4), BF16,
     "torchtitan: zero=0 with cp=2 is not supported"
     " (context parallelism always applies FSDP over the cp ranks: use zero=2 or zero=3)"),
    ("torchtitan", "recompute_layers", ParallelConfig(recompute="full", recompute_layers=2), BF16,
     "torchtitan: recompute_layers=2 is not supported (activation checkpointing applies to every block)"),
    ("torchtitan", "precision", ParallelConfig(), BF16.model_copy(update={"precision": "fp16"}),
     "torchtitan: precision=fp16 is not supported (mixed_precision_param is bfloat16 or float32)"),
    ("torchtitan", "cp", ParallelConfig(zero=3, cp=4, tp=2, sequence_parallel=True),
     BF16.model_copy(update={"seq_len": 8200}),
     "torchtitan: cp=4 with tp=2 needs seq_len divisible by 2*cp*tp (got seq_len=8200)"),
    ("megatron", "ep", ParallelConfig(tp=2, dp=4, ep=4), BF16,
     "megatron: ep=4 with tp=2 and sequence_parallel=False is not supported"
     " (MoE layers with tensor parallelism need --sequence-parallel)"),
    ("torchtitan", "etp", ParallelConfig(tp=2, dp=4, ep=2, etp=2, sequence_parallel=True), BF16,
     "torchtitan: etp=2 with ep=2 and tp=2 is not supported (no expert tensor parallel degree:"
     " experts are sharded over tp when ep=1, over ep alone otherwise)"),
    # zero 0 replicates over dp: ep 4 cannot borrow from cp·tp = 2.
    ("torchtitan", "ep", ParallelConfig(tp=2, dp=4, ep=4, sequence_parallel=True), BF16,
     "torchtitan: ep=4 with dp_shard=1 cp=1 tp=2 zero=0 is not supported"
     " (expert parallelism borrows its ranks from the FSDP shard, cp and tp ranks)"),
]

# Layouts each framework runs: the boundary of every rule, from the supported side.
SUPPORTED = {
    "megatron": [
        ParallelConfig(),
        ParallelConfig(zero=1, dp=8, dp_shard=8),
        ParallelConfig(tp=2, pp=2, vpp=2, cp=2, sequence_parallel=True, tp_comm_overlap=True),
        ParallelConfig(recompute="full", recompute_layers=3),
        ParallelConfig(pp=2, vpp=2, recompute="full", recompute_layers=4),
        ParallelConfig(pp_schedule="gpipe"),
        ParallelConfig(tp=2, dp=4, ep=8, sequence_parallel=True),   # ep folds over tp and dp
        ParallelConfig(dp=8, ep=8, zero=1, dp_shard=8),
    ],
    "deepspeed": [
        ParallelConfig(),
        ParallelConfig(zero=1, pp=2, dp=4, dp_shard=4),
        ParallelConfig(zero=3, dp=8, dp_shard=8),
        ParallelConfig(tp=2, sequence_parallel=True, recompute="full", recompute_layers=1),
        ParallelConfig(pp=2),
    ],
    "torchtitan": [
        ParallelConfig(dp=8),
        ParallelConfig(zero=3, dp=8, dp_shard=4),
        ParallelConfig(zero=2, cp=2, dp=4, dp_shard=4),
        ParallelConfig(zero=3, pp=2, vpp=2, tp=2, sequence_parallel=True, recompute="selective"),
        ParallelConfig(zero=2, pp=4, pp_schedule="gpipe"),
        ParallelConfig(tp=4, dp=2),  # 0.3.0: enable_sequence_parallel is optional, and DDP composes with TP
        ParallelConfig(tp=2, pp=2, dp=2, sequence_parallel=True),
        ParallelConfig(zero=3, tp=2, dp=4, dp_shard=4, ep=8, sequence_parallel=True),  # efsdp = 4·2/8 = 1
        ParallelConfig(tp=2, dp=4, etp=2, sequence_parallel=True),   # ep 1: experts tp-sharded
        ParallelConfig(tp=2, dp=4, ep=2, sequence_parallel=True),
    ],
}


@pytest.mark.parametrize(("framework", "field", "cfg", "training", "message"), CASES)
def test_rule_rejects_with_message(framework, field, cfg, training, message):
    assert unsupported_reason(framework, cfg, training) == message
    assert field in message
    with pytest.raises(InfeasibleConfig, match="^" + framework):
        require_supported(framework, cfg, training)


def test_every_rule_has_a_case():
    hit = set()
    for framework, _, cfg, training, _ in CASES:
        broken = [i for i, r in enumerate(RULES[framework]) if not r.ok(cfg, training)]
        assert len(broken) == 1, f"{framework} case breaks rules {broken}; make it break exactly one"
        hit.add((framework, broken[0]))
    assert hit == {(f, i) for f in RULES for i in range(len(RULES[f]))}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_supported_layouts(framework):
    for cfg in SUPPORTED[framework]:
        assert unsupported_reason(framework, cfg, BF16) is None, cfg
        require_supported(framework, cfg, BF16)


def test_rule_fields_are_layout_or_training_fields():
    fields = set(ParallelConfig().to_dict()) | set(TrainingSpec.model_fields)
    assert {r.field for rules in RULES.values() for r in rules} <= fields


def test_table_lists_every_framework():
    assert tuple(RULES) == FRAMEWORKS


def test_unknown_framework():
    allowed = r"\(allowed: megatron, deepspeed, torchtitan\)$"
    with pytest.raises(SpecError, match=r"^framework: unknown 'fsdp' " + allowed):
        unsupported_reason("fsdp", ParallelConfig(), BF16)
