"""torchtitan exporter: a TOML job config (``--job.config_file``) for a layout.

Keys follow ``torchtitan/config/job_config.py``. The mapping:

- zero=0 is DDP (``data_parallel_replicate_degree = dp``); zero=2/3 is FSDP2 over ``dp_shard`` ranks,
  replicated ``dp / dp_shard`` times (HSDP), with ``fsdp_reshard_after_forward`` "never" (ZeRO-2)
  or "always" (ZeRO-3).
- Without pipelining, ``local_batch_size`` is the micro-batch and torchtitan derives gradient
  accumulation from ``global_batch_size``. With pipelining, one local batch holds all micro-batches
  of a step (``local_batch_size = micro · GA``, split by ``pipeline_parallel_microbatch_size``),
  and each virtual stage gets ``layers / (pp · vpp)`` blocks (embedding and output not counted).
  The schedule is GPipe, 1F1B, or Interleaved1F1B when vpp > 1.
- fp8 is bf16 plus the ``float8`` model converter; async TP needs ``training.compile``.

torchtitan builds models from registered flavors, so ``[model]`` names the family and the spec's
model name, with the shape in a comment for picking or registering the matching flavor.
"""

from __future__ import annotations

import json
from typing import Any

from autotune.config import ParallelConfig
from autotune.export.base import check_exportable
from autotune.spec import ClusterSpec, ModelSpec, TrainingSpec

__all__ = ["TorchtitanExporter", "job_config"]

_RESHARD = {0: "default", 2: "never", 3: "always"}


def _schedule(cfg: ParallelConfig) -> str:
    if cfg.pp_schedule == "gpipe":
        return "GPipe"
    return "Interleaved1F1B" if cfg.vpp > 1 else "1F1B"


def job_config(model: ModelSpec, training: TrainingSpec, cfg: ParallelConfig) -> dict[str, dict[str, Any]]:
    """The job config as ``{section: {key: value}}`` (no support check; see :class:`TorchtitanExporter`)."""
    sharded = cfg.zero >= 2
    local = cfg.micro_batch * (cfg.grad_accum if cfg.pp > 1 else 1)
    parallelism: dict[str, Any] = {
        "data_parallel_replicate_degree": cfg.dp_replicate if sharded else cfg.dp,
        "data_parallel_shard_degree": cfg.dp_shard if sharded else 1,
        "fsdp_reshard_after_forward": _RESHARD[cfg.zero],
        "tensor_parallel_degree": cfg.tp,
        "enable_async_tensor_parallel": cfg.tp_comm_overlap,
        "context_parallel_degree": cfg.cp,
        "pipeline_parallel_degree": cfg.pp,
    }
    if cfg.pp > 1:
        parallelism |= {
            "pipeline_parallel_schedule": _schedule(cfg),
            "pipeline_parallel_microbatch_size": cfg.micro_batch,
            "pipeline_parallel_layers_per_stage": model.layers // (cfg.pp * cfg.vpp),
            "pipeline_parallel_first_stage_less_layers": 0,
            "pipeline_parallel_last_stage_less_layers": 0,
        }
    training_section: dict[str, Any] = {
        "local_batch_size": local,
        "global_batch_size": training.global_batch,
        "seq_len": training.seq_len,
        "mixed_precision_param": "float32" if training.precision == "fp32" else "bfloat16",
    }
    if cfg.tp_comm_overlap:
        training_section["compile"] = True
    model_section: dict[str, Any] = {"name": "llama3", "flavor": model.name}
    if training.precision == "fp8":
        model_section["converters"] = ["float8"]
    checkpoint: dict[str, Any] = {"mode": cfg.recompute}
    if cfg.recompute == "selective":
        checkpoint["selective_ac_option"] = "op"
    return {"model": model_section, "training": training_section, "parallelism": parallelism,
            "activation_checkpoint": checkpoint}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def _shape_comment(model: ModelSpec) -> str:
    return (f"# flavor must be a torchtitan flavor of this shape: layers={model.layers} hidden={model.hidden}"
            f" heads={model.heads} kv_heads={model.n_kv_heads} ffn={model.ffn} vocab={model.vocab}")


class TorchtitanExporter:
    """torchtitan TOML job config."""

    name = "torchtitan"
    suffix = ".toml"

    def render(
        self, model: ModelSpec, training: TrainingSpec, cluster: ClusterSpec, cfg: ParallelConfig
    ) -> str:
        """The TOML job config for ``cfg``; raises InfeasibleConfig when torchtitan cannot run it."""
        check_exportable(self.name, training, cluster, cfg)
        lines = [f"# torchtitan job config: {cluster.node_counts[0]} node(s) x {cluster.gpus_per_node} GPUs"]
        for section, values in job_config(model, training, cfg).items():
            lines += ["", f"[{section}]"]
            if section == "model":
                lines.append(_shape_comment(model))
            lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        return "\n".join(lines) + "\n"
