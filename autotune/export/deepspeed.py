"""DeepSpeed exporter: a ``ds_config.json`` plus the Megatron-DeepSpeed flags that go with it.

:meth:`DeepSpeedExporter.render` returns only the DeepSpeed config (JSON cannot carry comments, and
the file must stay a valid config); :func:`launcher_args` returns the Megatron-DeepSpeed
``pretrain_gpt.py`` flags for the same layout (tp, pp, sp, batch, recompute, precision and
``--deepspeed --deepspeed_config <path>``). Model-shape and data flags are left to the user.

DeepSpeed checks ``train_batch_size = train_micro_batch_size_per_gpu · gradient_accumulation_steps ·
data-parallel world size`` (the dp of the layout, not the GPU count). Bucket sizes follow the
Hugging Face integration's "auto" values: reduce h², stage-3 prefetch 0.9·h², persistence 10·h.
"""

from __future__ import annotations

import json
from typing import Any

from autotune.config import ParallelConfig
from autotune.export.base import check_exportable
from autotune.export.megatron import (
    Flag,
    batch_flags,
    format_flags,
    parallel_flags,
    precision_flags,
    recompute_flags,
)
from autotune.spec import ClusterSpec, ModelSpec, TrainingSpec

__all__ = ["DeepSpeedExporter", "ds_config", "launcher_args"]

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
    return {
        "partition_activations": cfg.tp > 1,
        "contiguous_memory_optimization": True,
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


def launcher_args(
    training: TrainingSpec, cluster: ClusterSpec, cfg: ParallelConfig, config_path: str = "ds_config.json"
) -> str:
    """Megatron-DeepSpeed flags matching :meth:`DeepSpeedExporter.render`, one per line with backslashes.

    Raises InfeasibleConfig when DeepSpeed cannot run ``cfg``.
    """
    check_exportable(DeepSpeedExporter.name, training, cluster, cfg)
    flags: list[Flag] = parallel_flags(cfg) + batch_flags(training, cfg) + recompute_flags(cfg)
    flags += precision_flags(training)
    if cfg.pp == 1:
        flags.append(("--no-pipeline-parallel", None))
    if cfg.recompute == "full":
        flags.append(("--deepspeed-activation-checkpointing", None))
    flags += [("--zero-stage", cfg.zero), ("--deepspeed", None), ("--deepspeed_config", config_path)]
    return format_flags(flags)


class DeepSpeedExporter:
    """DeepSpeed ``ds_config.json`` (sorted keys, indent 2)."""

    name = "deepspeed"
    suffix = ".json"

    def render(
        self, model: ModelSpec, training: TrainingSpec, cluster: ClusterSpec, cfg: ParallelConfig
    ) -> str:
        """The JSON config for ``cfg``; raises InfeasibleConfig when DeepSpeed cannot run it."""
        check_exportable(self.name, training, cluster, cfg)
        return json.dumps(ds_config(model, training, cfg), indent=2, sort_keys=True) + "\n"
