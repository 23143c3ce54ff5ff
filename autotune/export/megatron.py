"""Megatron-LM exporter: a launch script running ``pretrain_gpt.py`` under ``torchrun`` for a layout.

Targets Megatron-LM core_v0.19.0 (``megatron/training/arguments.py``: flag names and ``validate_args``).
The script sets ``CUDA_DEVICE_MAX_CONNECTIONS=1`` when tp or cp > 1 (``validate_args`` asserts it on GPUs
before Blackwell, and the TP/CP communication overlap relies on one hardware queue), then runs
``torchrun --nnodes N --nproc-per-node G pretrain_gpt.py`` with the model shape (RoPE base included),
the vocabulary, the layout, batch, recompute and precision flags.

The vocabulary is exact: ``--tokenizer-type NullTokenizer --vocab-size V --mock-data`` (megatron.core's
NullTokenizer has exactly V tokens) with ``--make-vocab-size-divisible-by`` chosen so Megatron adds no
padding, so the script benchmarks the exported model on synthetic data as it stands. For real training
replace those four flags with ``--data-path PREFIX --tokenizer-type HuggingFaceTokenizer --tokenizer-model
NAME``; optimizer and schedule flags (``--lr``, ``--train-iters`` ...) go after the script's name: it passes
its own arguments on.
"""

from __future__ import annotations

from autotune.config import ParallelConfig
from autotune.errors import InfeasibleConfig
from autotune.export.base import check_exportable
from autotune.export.launch import Flag, render_script, rope_base, torchrun_launcher, vocab_divisor
from autotune.spec import ClusterSpec, ModelSpec, TrainingSpec

__all__ = [
    "MegatronExporter",
    "MEGATRON_VERSION",
    "model_flags",
    "vocab_flags",
    "parallel_flags",
    "batch_flags",
    "recompute_flags",
    "precision_flags",
    "megatron_env",
    "moe_flags",
    "moe_layer_freq",
    "check_model",
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


def check_model(model: ModelSpec, cfg: ParallelConfig) -> None:
    """Raise InfeasibleConfig for an MoE model with tp > 1 and no sequence parallelism: core_v0.19.0's
    ``MoELayer.forward`` raises in training whenever attention is tensor-parallel without it."""
    if model.is_moe and cfg.tp > 1 and not cfg.sequence_parallel:
        raise InfeasibleConfig(f"megatron: tp={cfg.tp} with sequence_parallel=False is not supported for the"
                               f" mixture-of-experts model {model.name!r} (MoE layers with tensor parallelism need"
                               " --sequence-parallel)")


def moe_layer_freq(model: ModelSpec) -> int | str:
    """--moe-layer-freq: an int k (every k-th layer from layer 0 is MoE) or Megatron's list expression of one
    0/1 per layer (``([0]*3+[1]*58)`` for DeepSeek-V3's three leading dense layers)."""
    if model.first_dense_layers == 0:
        return model.moe_every
    if model.moe_every == 1:
        return f"([0]*{model.first_dense_layers}+[1]*{model.layers - model.first_dense_layers})"
    pattern = [int(i >= model.first_dense_layers and (i - model.first_dense_layers) % model.moe_every == 0)
               for i in range(model.layers)]
    return "[" + ",".join(map(str, pattern)) + "]"


def moe_flags(model: ModelSpec, cfg: ParallelConfig) -> list[Flag]:
    """Mixture-of-experts and multi-head latent attention flags (core_v0.19.0 ``_add_moe_args``,
    ``_add_mla_args``): routed experts, top-k, expert width, shared experts (one MLP of their total width),
    the MoE layer pattern, expert parallel and expert tensor parallel sizes, grouped GEMMs and the all-to-all
    token dispatcher; a capacity factor when tokens are dropped (dropless otherwise). None for a dense model."""
    flags: list[Flag] = []
    if model.is_moe:
        flags += [("--num-experts", model.experts), ("--moe-router-topk", model.experts_per_token),
                  ("--moe-ffn-hidden-size", model.expert_ffn), ("--moe-layer-freq", moe_layer_freq(model))]
        if model.shared_experts:
            flags.append(("--moe-shared-expert-intermediate-size", model.shared_experts * model.shared_expert_ffn))
        if model.capacity_factor is not None:
            flags.append(("--moe-expert-capacity-factor", model.capacity_factor))
        flags += [("--expert-model-parallel-size", cfg.ep), ("--expert-tensor-parallel-size", cfg.etp),
                  ("--moe-grouped-gemm", None), ("--moe-token-dispatcher-type", "alltoall")]
    if model.is_mla:
        flags.append(("--multi-latent-attention", None))
        if model.q_lora_rank is not None:
            flags.append(("--q-lora-rank", model.q_lora_rank))
        flags += [("--kv-lora-rank", model.kv_lora_rank), ("--qk-head-dim", model.qk_nope_head_dim),
                  ("--qk-pos-emb-head-dim", model.qk_rope_head_dim), ("--v-head-dim", model.v_head_dim)]
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
        check_exportable(self.name, training, cluster, cfg)
        check_model(model, cfg)
        flags = model_flags(model, training) + moe_flags(model, cfg) + vocab_flags(model, cfg) + parallel_flags(cfg)
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
        header = [
            f"Megatron-LM {MEGATRON_VERSION}: {model.name} on {cluster.node_counts[0]} node(s) x "
            f"{cluster.gpus_per_node} GPUs, tp={cfg.tp} pp={cfg.pp} vpp={cfg.vpp} cp={cfg.cp} dp={cfg.dp}.",
            "Run from a Megatron-LM checkout on every node (multi-node: set NODE_RANK and MASTER_ADDR).",
            "Synthetic data with the model's exact vocabulary: for real training replace the NullTokenizer,",
            "--vocab-size and --mock-data flags with --data-path PREFIX --tokenizer-type HuggingFaceTokenizer",
            "--tokenizer-model NAME. Arguments to this script (--lr, --train-iters ...) are passed on.",
        ]
        return render_script(header, megatron_env(cfg), [*torchrun_launcher(cluster), "pretrain_gpt.py"], flags)
