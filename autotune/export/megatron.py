"""Megatron-LM exporter: the ``pretrain_gpt.py`` argument list for a layout.

The output is one flag per line with trailing backslashes, ready to paste after
``torchrun ... pretrain_gpt.py \\``. Data, tokenizer (and so the vocabulary), optimizer and schedule
flags are left to the user. Flag names follow ``megatron/training/arguments.py`` (core 0.12).
"""

from __future__ import annotations

from autotune.config import ParallelConfig
from autotune.export.base import check_exportable
from autotune.spec import ClusterSpec, ModelSpec, TrainingSpec

__all__ = [
    "MegatronExporter",
    "Flag",
    "model_flags",
    "parallel_flags",
    "batch_flags",
    "recompute_flags",
    "precision_flags",
    "format_flags",
]

Flag = tuple[str, int | str | None]
"""A command-line flag and its value (None for a switch)."""


def model_flags(model: ModelSpec, training: TrainingSpec) -> list[Flag]:
    """Model shape flags (GPT model of Megatron-LM)."""
    flags: list[Flag] = [
        ("--num-layers", model.layers),
        ("--hidden-size", model.hidden),
        ("--num-attention-heads", model.heads),
        ("--ffn-hidden-size", model.ffn),
        ("--seq-length", training.seq_len),
        ("--max-position-embeddings", max(model.max_seq_len, training.seq_len)),
        ("--position-embedding-type", "rope" if model.position_embedding == "rope" else "learned_absolute"),
        ("--normalization", "RMSNorm" if model.norm == "rmsnorm" else "LayerNorm"),
    ]
    if model.n_kv_heads != model.heads:
        flags += [("--group-query-attention", None), ("--num-query-groups", model.n_kv_heads)]
    if model.activation == "swiglu":
        flags.append(("--swiglu", None))
    if not model.tied_embeddings:
        flags.append(("--untie-embeddings-and-output-weights", None))
    if model.bias != "all":
        flags.append(("--disable-bias-linear", None))
    if model.bias == "qkv":
        flags.append(("--add-qkv-bias", None))
    if not model.dropout:
        flags += [("--attention-dropout", 0), ("--hidden-dropout", 0)]
    if training.flash_attention:
        flags.append(("--use-flash-attn", None))
    return flags


def parallel_flags(cfg: ParallelConfig) -> list[Flag]:
    """Tensor and pipeline degrees and sequence parallelism (Megatron derives dp = world / (tp·pp·cp))."""
    flags: list[Flag] = [
        ("--tensor-model-parallel-size", cfg.tp),
        ("--pipeline-model-parallel-size", cfg.pp),
    ]
    if cfg.sequence_parallel:
        flags.append(("--sequence-parallel", None))
    return flags


def batch_flags(training: TrainingSpec, cfg: ParallelConfig) -> list[Flag]:
    """Micro and global batch; gradient accumulation is derived as global / (micro · dp)."""
    return [("--micro-batch-size", cfg.micro_batch), ("--global-batch-size", training.global_batch)]


def recompute_flags(cfg: ParallelConfig) -> list[Flag]:
    """Activation recomputation: selective, or full per layer (uniform) or for the first k layers (block).

    Block recompute counts layers per model chunk, so k per stage becomes k / vpp per virtual stage.
    """
    if cfg.recompute == "selective":
        return [("--recompute-granularity", "selective")]
    if cfg.recompute == "full":
        if cfg.recompute_layers is None:
            method, layers = "uniform", 1
        else:
            method, layers = "block", cfg.recompute_layers // cfg.vpp
        return [("--recompute-granularity", "full"), ("--recompute-method", method),
                ("--recompute-num-layers", layers)]
    return []


def precision_flags(training: TrainingSpec) -> list[Flag]:
    """Mixed precision: --bf16, --fp16, or bf16 with FP8 GEMMs (hybrid E4M3/E5M2); fp32 needs none."""
    return {
        "fp32": [],
        "bf16": [("--bf16", None)],
        "fp16": [("--fp16", None)],
        "fp8": [("--bf16", None), ("--fp8-format", "hybrid")],
    }[training.precision]


def format_flags(flags: list[Flag]) -> str:
    """One flag per line, continued with backslashes, newline-terminated."""
    lines = [flag if value is None else f"{flag} {value}" for flag, value in flags]
    return " \\\n".join(lines) + "\n"


class MegatronExporter:
    """Megatron-LM ``pretrain_gpt.py`` flags."""

    name = "megatron"
    suffix = ".args"

    def render(
        self, model: ModelSpec, training: TrainingSpec, cluster: ClusterSpec, cfg: ParallelConfig
    ) -> str:
        """The flag list for ``cfg``; raises InfeasibleConfig when Megatron-LM cannot run it."""
        check_exportable(self.name, training, cluster, cfg)
        flags = model_flags(model, training) + parallel_flags(cfg)
        if cfg.vpp > 1:
            flags.append(("--num-layers-per-virtual-pipeline-stage", model.layers // (cfg.pp * cfg.vpp)))
        flags.append(("--context-parallel-size", cfg.cp))
        flags += batch_flags(training, cfg)
        if cfg.zero == 1:
            flags.append(("--use-distributed-optimizer", None))
            if cfg.dp_replicate > 1:
                flags.append(("--num-distributed-optimizer-instances", cfg.dp_replicate))
        flags += recompute_flags(cfg) + precision_flags(training)
        if cfg.overlap_grad_reduce:
            flags.append(("--overlap-grad-reduce", None))
        if cfg.overlap_param_gather and cfg.zero == 1:
            flags.append(("--overlap-param-gather", None))
        if cfg.tp_comm_overlap:
            flags.append(("--tp-comm-overlap", None))
        return format_flags(flags)
