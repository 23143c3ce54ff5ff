"""Megatron-LM exporter: a launch script running ``pretrain_gpt.py`` under ``torchrun`` for a layout.

Targets Megatron-LM core_v0.19.0 (``megatron/training/arguments.py``: flag names and ``validate_args``).
The script sets ``CUDA_DEVICE_MAX_CONNECTIONS=1`` when tp or cp > 1 (``validate_args`` asserts it on GPUs
before Blackwell, and the TP/CP communication overlap relies on one hardware queue), then runs
``torchrun --nnodes N --nproc-per-node G pretrain_gpt.py`` with the model shape (RoPE base included),
the vocabulary, the layout, batch, recompute and precision flags.

An uneven pipeline split (:mod:`autotune.pipeline`) becomes ``--account-for-embedding-in-pipeline-split``
/ ``--account-for-loss-in-pipeline-split`` when the first/last stage is one layer short of the others (NVIDIA's
Llama 3.1 405B recipe), else ``--decoder-first-pipeline-num-layers`` / ``--decoder-last-pipeline-num-layers``,
with ``--num-virtual-stages-per-pipeline-rank`` for interleaving (``validate_args`` refuses
``--num-layers-per-virtual-pipeline-stage`` beside first/last counts); an even split keeps
``--num-layers-per-virtual-pipeline-stage``.

The vocabulary is exact: ``--tokenizer-type NullTokenizer --vocab-size V --mock-data`` (megatron.core's
NullTokenizer has exactly V tokens) with ``--make-vocab-size-divisible-by`` chosen so Megatron adds no
padding, so the script benchmarks the exported model on synthetic data as it stands. For real training
replace those four flags with ``--data-path PREFIX --tokenizer-type HuggingFaceTokenizer --tokenizer-model
NAME``; optimizer and schedule flags (``--lr``, ``--train-iters`` ...) go after the script's name: it passes
its own arguments on.
"""

from __future__ import annotations

from autotune.config import ParallelConfig
from autotune.export.base import check_exportable
from autotune.export.launch import Flag, render_script, rope_base, torchrun_launcher, vocab_divisor
from autotune.pipeline import megatron_accounted_ends
from autotune.spec import ClusterSpec, ModelSpec, TrainingSpec

__all__ = [
    "MegatronExporter",
    "MEGATRON_VERSION",
    "model_flags",
    "vocab_flags",
    "parallel_flags",
    "batch_flags",
    "pipeline_split_flags",
    "recompute_flags",
    "precision_flags",
    "megatron_env",
]

MEGATRON_VERSION = "core_v0.19.0"
"""The Megatron-LM release whose argument parser the flags follow."""


def shape_flags(model: ModelSpec, training: TrainingSpec) -> list[Flag]:
    """The transformer shape flags Megatron-LM and Megatron-DeepSpeed both spell this way."""
    return [
        ("--num-layers", model.layers),
        ("--hidden-size", model.hidden),
        ("--num-attention-heads", model.heads),
        ("--ffn-hidden-size", model.ffn),
        ("--seq-length", training.seq_len),
        ("--max-position-embeddings", max(model.max_seq_len, training.seq_len)),
    ]


def model_flags(model: ModelSpec, training: TrainingSpec) -> list[Flag]:
    """Model shape flags (GPT model of Megatron-LM), RoPE base included."""
    flags = shape_flags(model, training)
    if model.position_embedding == "rope":
        flags += [("--position-embedding-type", "rope"), ("--rotary-base", rope_base("megatron", model))]
    else:
        flags.append(("--position-embedding-type", "learned_absolute"))
    flags.append(("--normalization", "RMSNorm" if model.norm == "rmsnorm" else "LayerNorm"))
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


def vocab_flags(model: ModelSpec, cfg: ParallelConfig) -> list[Flag]:
    """Exactly ``model.vocab`` tokens of synthetic data: NullTokenizer, no padding, mock data."""
    return [("--tokenizer-type", "NullTokenizer"), ("--vocab-size", model.vocab),
            ("--make-vocab-size-divisible-by", vocab_divisor(model.vocab, cfg.tp)), ("--mock-data", None)]


def parallel_flags(cfg: ParallelConfig) -> list[Flag]:
    """Tensor and pipeline degrees and sequence parallelism (Megatron derives dp = world / (tp·pp·cp))."""
    flags: list[Flag] = [
        ("--tensor-model-parallel-size", cfg.tp),
        ("--pipeline-model-parallel-size", cfg.pp),
    ]
    if cfg.sequence_parallel:
        flags.append(("--sequence-parallel", None))
    return flags


def pipeline_split_flags(model: ModelSpec, cfg: ParallelConfig) -> list[Flag]:
    """How the layers split over the pipeline stages and their virtual stages (see the module docstring)."""
    first, last = cfg.pp_first_layers, cfg.pp_last_layers
    if first is None and last is None:
        return [("--num-layers-per-virtual-pipeline-stage", model.layers // (cfg.pp * cfg.vpp))] if cfg.vpp > 1 else []
    accounted = megatron_accounted_ends(model.layers, cfg.pp, cfg.vpp, first, last)
    if accounted is not None:
        names = ("--account-for-embedding-in-pipeline-split", "--account-for-loss-in-pipeline-split")
        flags: list[Flag] = [(name, None) for name, on in zip(names, accounted, strict=True) if on]
    else:
        flags = [(name, n) for name, n in (("--decoder-first-pipeline-num-layers", first),
                                           ("--decoder-last-pipeline-num-layers", last)) if n is not None]
    if cfg.vpp > 1:
        flags.append(("--num-virtual-stages-per-pipeline-rank", cfg.vpp))
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


def megatron_env(cfg: ParallelConfig) -> dict[str, str]:
    """``CUDA_DEVICE_MAX_CONNECTIONS=1`` with tensor or context parallelism (asserted by ``validate_args``
    on pre-Blackwell GPUs: it keeps the TP/CP collectives ahead of the compute they overlap)."""
    return {"CUDA_DEVICE_MAX_CONNECTIONS": "1"} if cfg.tp > 1 or cfg.cp > 1 else {}


class MegatronExporter:
    """Megatron-LM (core_v0.19.0) ``torchrun pretrain_gpt.py`` launch script."""

    name = "megatron"
    suffix = ".sh"

    def render(
        self, model: ModelSpec, training: TrainingSpec, cluster: ClusterSpec, cfg: ParallelConfig
    ) -> str:
        """The launch script for ``cfg``; raises InfeasibleConfig when Megatron-LM cannot run it."""
        check_exportable(self.name, training, cluster, cfg, layers=model.layers)
        flags = model_flags(model, training) + vocab_flags(model, cfg) + parallel_flags(cfg)
        flags += pipeline_split_flags(model, cfg)
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
        header = [
            f"Megatron-LM {MEGATRON_VERSION}: {model.name} on {cluster.node_counts[0]} node(s) x "
            f"{cluster.gpus_per_node} GPUs, tp={cfg.tp} pp={cfg.pp} vpp={cfg.vpp} cp={cfg.cp} dp={cfg.dp}.",
            "Run from a Megatron-LM checkout on every node (multi-node: set NODE_RANK and MASTER_ADDR).",
            "Synthetic data with the model's exact vocabulary: for real training replace the NullTokenizer,",
            "--vocab-size and --mock-data flags with --data-path PREFIX --tokenizer-type HuggingFaceTokenizer",
            "--tokenizer-model NAME. Arguments to this script (--lr, --train-iters ...) are passed on.",
        ]
        return render_script(header, megatron_env(cfg), [*torchrun_launcher(cluster), "pretrain_gpt.py"], flags)
