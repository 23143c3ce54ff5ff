"""DeepSpeed exporter: a ``ds_config.json`` plus the Megatron-DeepSpeed launch script that goes with it.

Targets DeepSpeed 0.19 (``DeepSpeedConfig``, ``deepspeed.checkpointing.configure``) and the
``megatron/arguments.py`` of deepspeedai/Megatron-DeepSpeed (its flag names differ from Megatron-LM's:
``--num-key-value-heads``, ``--normalization rmsnorm``, ``--use-rotary-position-embeddings``,
``--rotary-position-embeddings-theta``, ``--use-flash-attn-v2``).

:meth:`DeepSpeedExporter.render` returns only the DeepSpeed config (JSON cannot carry comments, and
the file must stay a valid config); :func:`launch_script` returns the ``deepspeed pretrain_gpt.py``
script for the same layout (model shape, vocabulary, tp, pp, sp, batch, recompute, precision and
``--deepspeed --deepspeed_config <path>``), reading the dataset prefix from ``$DATA_PATH``.

DeepSpeed checks ``train_batch_size = train_micro_batch_size_per_gpu · gradient_accumulation_steps ·
data-parallel world size`` (the dp of the layout, not the GPU count). Bucket sizes follow the
Hugging Face integration's "auto" values: reduce h², stage-3 prefetch 0.9·h², persistence 10·h.

Megatron-DeepSpeed hands its own ``--partition-activations`` and ``--contigious-checkpointing`` (sic)
to ``deepspeed.checkpointing.configure``, where they override the JSON's values, so the script carries
them whenever the JSON sets them; contiguous checkpointing is only set with partitioned activations
(DeepSpeed asserts that pairing).
"""

from __future__ import annotations

import json
from typing import Any

from autotune.config import ParallelConfig
from autotune.errors import InfeasibleConfig
from autotune.export.base import check_exportable
from autotune.export.launch import Flag, deepspeed_launcher, render_script, rope_base, vocab_divisor
from autotune.export.megatron import batch_flags, parallel_flags, precision_flags, recompute_flags, shape_flags
from autotune.spec import ClusterSpec, ModelSpec, TrainingSpec

__all__ = ["DeepSpeedExporter", "ds_config", "launch_script", "model_flags", "check_model", "DEEPSPEED_VERSION"]

DEEPSPEED_VERSION = "0.19"
"""The DeepSpeed release whose config schema the JSON follows."""

ALLGATHER_BUCKET_SIZE = 500_000_000
"""Elements per ZeRO-1/2 all-gather bucket (DeepSpeed's default)."""


def _zero_section(model: ModelSpec, cfg: ParallelConfig) -> dict[str, Any]:
    h2 = model.hidden * model.hidden
    section: dict[str, Any] = {"stage": cfg.zero}
    if cfg.zero == 0:
        return section
    section |= {"reduce_bucket_size": h2, "overlap_comm": cfg.overlap_grad_reduce,
                "contiguous_gradients": True}
    if cfg.zero <= 2:
        section["allgather_bucket_size"] = ALLGATHER_BUCKET_SIZE
    else:
        section |= {"stage3_prefetch_bucket_size": int(0.9 * h2),
                    "stage3_param_persistence_threshold": 10 * model.hidden}
    return section


def _checkpointing_section(model: ModelSpec, cfg: ParallelConfig) -> dict[str, Any]:
    partition = cfg.tp > 1  # activations are split over the tensor-parallel ranks
    return {
        "partition_activations": partition,
        "contiguous_memory_optimization": partition,
        "number_checkpoints": cfg.recompute_layers or model.layers // cfg.pp,
        "cpu_checkpointing": False,
        "synchronize_checkpoint_boundary": False,
        "profile": False,
    }


def ds_config(model: ModelSpec, training: TrainingSpec, cfg: ParallelConfig) -> dict[str, Any]:
    """The DeepSpeed config as a mapping (no support check; see :class:`DeepSpeedExporter`)."""
    config: dict[str, Any] = {
        "train_batch_size": training.global_batch,
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "zero_optimization": _zero_section(model, cfg),
    }
    if training.precision in ("bf16", "fp16"):
        config[training.precision] = {"enabled": True}
    if cfg.recompute == "full":
        config["activation_checkpointing"] = _checkpointing_section(model, cfg)
    return config


def check_model(model: ModelSpec) -> None:
    """Raise InfeasibleConfig for q/k/v-only biases (Megatron-DeepSpeed has no ``--add-qkv-bias``) and for
    mixture-of-experts models: DeepSpeed's MoE layer (``deepspeed.moe.layer.MoE``) gates top-1 or top-2
    only, has no expert tensor parallelism, shared experts or latent attention, and Megatron-DeepSpeed builds
    it only from its own ``--num-experts`` list; a layout of this model is not exported rather than changed."""
    if model.is_moe:
        raise InfeasibleConfig(f"deepspeed: experts={model.experts} is not supported (mixture-of-experts models are"
                               " not exported to DeepSpeed: its MoE layer gates top-1/top-2 only, without expert"
                               " tensor parallelism or shared experts)")
    if model.bias == "qkv":
        raise InfeasibleConfig("deepspeed: bias=qkv is not supported (Megatron-DeepSpeed has biases on every"
                               " linear layer or on none: no --add-qkv-bias)")


def model_flags(model: ModelSpec, training: TrainingSpec, cfg: ParallelConfig) -> list[Flag]:
    """Megatron-DeepSpeed model shape and vocabulary flags (see :func:`check_model` for the refusal).

    The vocabulary is exact: its NullTokenizer adds an end-of-document token to ``--vocab-size``, so
    V - 1 is passed, with ``--make-vocab-size-divisible-by`` chosen so no padding is added.
    """
    check_model(model)
    flags = shape_flags(model, training)
    if model.n_kv_heads != model.heads:
        flags.append(("--num-key-value-heads", model.n_kv_heads))
    if model.position_embedding == "rope":
        flags += [("--use-rotary-position-embeddings", None),
                  ("--rotary-position-embeddings-theta", rope_base("deepspeed", model))]
    flags.append(("--normalization", model.norm))
    if model.activation == "swiglu":
        flags.append(("--swiglu", None))
    if not model.tied_embeddings:
        flags.append(("--untie-embeddings-and-output-weights", None))
    if model.bias == "none":
        flags.append(("--disable-bias-linear", None))
    if not model.dropout:
        flags += [("--attention-dropout", 0), ("--hidden-dropout", 0)]
    if training.flash_attention:
        flags.append(("--use-flash-attn-v2", None))
    return flags + [("--tokenizer-type", "NullTokenizer"), ("--vocab-size", model.vocab - 1),
                    ("--make-vocab-size-divisible-by", vocab_divisor(model.vocab, cfg.tp)),
                    ("--data-path", '"$DATA_PATH"')]


def launch_script(
    model: ModelSpec, training: TrainingSpec, cluster: ClusterSpec, cfg: ParallelConfig,
    config_path: str = "ds_config.json",
) -> str:
    """The ``deepspeed pretrain_gpt.py`` script matching :meth:`DeepSpeedExporter.render`'s config at
    ``config_path``. Raises InfeasibleConfig when DeepSpeed cannot run ``cfg``."""
    check_exportable(DeepSpeedExporter.name, training, cluster, cfg)
    flags = model_flags(model, training, cfg) + parallel_flags(cfg) + batch_flags(training, cfg)
    flags += recompute_flags(cfg) + precision_flags(training)
    if cfg.pp == 1:
        flags.append(("--no-pipeline-parallel", None))
    if cfg.recompute == "full":
        flags.append(("--deepspeed-activation-checkpointing", None))
        if _checkpointing_section(model, cfg)["partition_activations"]:
            flags += [("--partition-activations", None), ("--contigious-checkpointing", None)]
    flags += [("--zero-stage", cfg.zero), ("--deepspeed", None), ("--deepspeed_config", config_path)]
    header = [
        f"Megatron-DeepSpeed with DeepSpeed {DEEPSPEED_VERSION}: {model.name} on {cluster.node_counts[0]} node(s)"
        f" x {cluster.gpus_per_node} GPUs, tp={cfg.tp} pp={cfg.pp} dp={cfg.dp} zero={cfg.zero}.",
        "Run from a Megatron-DeepSpeed checkout with DATA_PATH set to an indexed dataset prefix (multi-node:",
        "a hostfile with one 'HOST slots=N' line per node, and MASTER_ADDR). The NullTokenizer keeps the",
        "model's exact vocabulary; for real text use --tokenizer-type HFTokenizer --tokenizer-model NAME.",
    ]
    return render_script(header, {}, [*deepspeed_launcher(cluster), "pretrain_gpt.py"], flags)


class DeepSpeedExporter:
    """DeepSpeed ``ds_config.json`` (sorted keys, indent 2)."""

    name = "deepspeed"
    suffix = ".json"

    def render(
        self, model: ModelSpec, training: TrainingSpec, cluster: ClusterSpec, cfg: ParallelConfig
    ) -> str:
        """The JSON config for ``cfg``; raises InfeasibleConfig when DeepSpeed cannot run it."""
        check_exportable(self.name, training, cluster, cfg)
        check_model(model)
        return json.dumps(ds_config(model, training, cfg), indent=2, sort_keys=True) + "\n"
