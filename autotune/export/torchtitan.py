"""torchtitan exporter: a launch script running ``torchrun -m torchtitan.train`` for a layout.

Targets torchtitan 0.3.0, which reads no TOML: ``--module llama3 --config FUNCTION`` picks a
``config_registry`` function (the model shape lives there; the command line cannot change it) and
``--section.key value`` flags override its fields (``torchtitan/config/manager.py``, tyro). The mapping:

- The model must be one of the registered Llama 3 configs (:data:`CONFIGS`, shapes from
  ``torchtitan/models/llama3/__init__.py``); llama3_405b builds float8 linears (with compile), so it is
  the fp8 config and the only one: 8B and 70B train in bf16 or fp32.
- zero=0 replicates the weights (``data_parallel_replicate_degree = dp``, shard degree 1: torchtitan
  0.3.0 applies ``fully_shard`` over a size-1 shard mesh, i.e. plain data parallelism); zero=2/3 is
  FSDP2 over ``dp_shard`` ranks, replicated ``dp / dp_shard`` times (HSDP), with
  ``fsdp_reshard_after_forward`` "never" (ZeRO-2) or "always" (ZeRO-3).
- Without pipelining, ``local_batch_size`` is the micro-batch and torchtitan derives gradient
  accumulation from ``global_batch_size``. With pipelining, one local batch holds all micro-batches
  of a step (``local_batch_size = micro · GA``, split by ``pipeline_parallel_microbatch_size``),
  each virtual stage gets ``layers / (pp · vpp)`` blocks, and CUDA graphs are off
  (``--training.disable_cuda_graphs``: they do not support pipelining). Schedules: GPipe, 1F1B,
  Interleaved1F1B when vpp > 1.
- Mixture of experts: DeepSeek-V3 671B is ``--module deepseek_v3 --config deepseek_v3_671b`` (shape from
  ``torchtitan/models/deepseek_v3/__init__.py``, without its multi-token-prediction layers), with
  ``parallelism.expert_parallel_degree`` = ep; torchtitan has no expert tensor parallel degree (experts are
  tp-sharded when ep = 1, see :mod:`autotune.search.frameworks`).
- Async TP is ``compile.enable_async_tensor_parallel`` and needs ``compile.enable``; both are always
  written, so a config's own defaults never leak in. Activation checkpointing is the
  ``activation-checkpoint:none|selective|full`` subcommand (selective is per-op).
"""

from __future__ import annotations

from dataclasses import dataclass

from autotune.config import ParallelConfig
from autotune.errors import InfeasibleConfig
from autotune.export.base import check_exportable
from autotune.export.launch import Flag, render_script, torchrun_launcher
from autotune.spec import ClusterSpec, ModelSpec, TrainingSpec

__all__ = ["TorchtitanExporter", "TorchtitanConfig", "CONFIGS", "TORCHTITAN_VERSION", "find_config", "overrides",
           "moe_shape"]

TORCHTITAN_VERSION = "0.3.0"
"""The torchtitan release whose command line the script follows."""


@dataclass(frozen=True, kw_only=True)
class TorchtitanConfig:
    """One registered torchtitan model config and the shape it builds."""

    function: str
    """``config_registry`` function name, the value of ``--config``."""
    layers: int
    """Transformer blocks."""
    hidden: int
    """Model width (``dim``)."""
    heads: int
    """Query heads."""
    kv_heads: int
    """Key/value heads."""
    ffn: int
    """SwiGLU inner width (``compute_ffn_hidden_dim`` of the flavor)."""
    vocab: int
    """Vocabulary size."""
    rope_theta: float
    """RoPE base."""
    fp8: bool
    """Whether the config converts linears to float8 (its model spec cannot be changed from the command line)."""
    module: str = "llama3"
    """The ``--module`` the config belongs to."""
    moe: tuple[int | None, ...] = ()
    """A mixture-of-experts config's :func:`moe_shape` (empty for a dense one)."""

    def shape(self) -> tuple[int | float | None, ...]:
        """The fields a ModelSpec must match."""
        return (self.layers, self.hidden, self.heads, self.kv_heads, self.ffn, self.vocab, self.rope_theta,
                *self.moe)


def moe_shape(model: ModelSpec) -> tuple[int | None, ...]:
    """Routed experts, top-k, expert width, shared experts and width, leading dense layers, MoE frequency,
    capacity factor and the MLA ranks/head dims: what a torchtitan MoE config fixes beyond the dense shape."""
    if not model.is_moe:
        return ()
    return (model.experts, model.experts_per_token, model.expert_ffn, model.shared_experts,
            model.shared_expert_ffn if model.shared_experts else None, model.first_dense_layers, model.moe_every,
            model.capacity_factor, model.q_lora_rank, model.kv_lora_rank, model.qk_rope_head_dim,
            model.qk_nope_head_dim, model.v_head_dim)


CONFIGS: tuple[TorchtitanConfig, ...] = (
    TorchtitanConfig(function="llama3_8b", layers=32, hidden=4096, heads=32, kv_heads=8, ffn=14336,
                     vocab=128256, rope_theta=500000.0, fp8=False),
    TorchtitanConfig(function="llama3_70b", layers=80, hidden=8192, heads=64, kv_heads=8, ffn=28672,
                     vocab=128256, rope_theta=500000.0, fp8=False),
    TorchtitanConfig(function="llama3_405b", layers=126, hidden=16384, heads=128, kv_heads=8, ffn=53248,
                     vocab=128256, rope_theta=500000.0, fp8=True),
    TorchtitanConfig(function="deepseek_v3_671b", module="deepseek_v3", layers=61, hidden=7168, heads=128,
                     kv_heads=128, ffn=18432, vocab=129280, rope_theta=10000.0, fp8=False,
                     moe=(256, 8, 2048, 1, 2048, 3, 1, None, 1536, 512, 64, 128, 128)),
)
"""torchtitan 0.3.0's Llama 3 configs (``torchtitan/models/llama3/config_registry.py``) and DeepSeek-V3 671B
(``torchtitan/models/deepseek_v3/config_registry.py``): untied, RMSNorm, SwiGLU, no biases."""

_RESHARD = {0: "default", 2: "never", 3: "always"}


def _shape(model: ModelSpec) -> tuple[int, ...] | None:
    llama = (model.activation, model.norm, model.bias, model.position_embedding, model.tied_embeddings)
    if llama != ("swiglu", "rmsnorm", "none", "rope", False):
        return None
    return (model.layers, model.hidden, model.heads, model.n_kv_heads, model.ffn, model.vocab, model.rope_theta,
            *moe_shape(model))


def find_config(model: ModelSpec, training: TrainingSpec) -> TorchtitanConfig:
    """The registered config that builds ``model`` in ``training.precision``; raises InfeasibleConfig."""
    matches = [c for c in CONFIGS if c.shape() == _shape(model)]
    if not matches:
        shapes = "; ".join(f"{c.function}: layers={c.layers} hidden={c.hidden} heads={c.heads} kv_heads="
                           f"{c.kv_heads} ffn={c.ffn} vocab={c.vocab} rope_theta={c.rope_theta:g}" for c in CONFIGS)
        raise InfeasibleConfig(f"torchtitan: model {model.name!r} is not a registered torchtitan {TORCHTITAN_VERSION}"
                               f" config (the shape is fixed by --config; allowed: {shapes})")
    (config,) = matches
    if config.fp8 != (training.precision == "fp8"):
        raise InfeasibleConfig(f"torchtitan: precision={training.precision} with model {model.name!r} is not supported"
                               f" ({config.function} {'always' if config.fp8 else 'never'} builds float8 linears)")
    return config


def _schedule(cfg: ParallelConfig) -> str:
    if cfg.pp_schedule == "gpipe":
        return "GPipe"
    return "Interleaved1F1B" if cfg.vpp > 1 else "1F1B"


def _switch(name: str, on: bool) -> Flag:
    section, key = name.rsplit(".", 1)
    return (name if on else f"{section}.no-{key.replace('_', '-')}", None)


def overrides(model: ModelSpec, training: TrainingSpec, cfg: ParallelConfig) -> list[Flag]:
    """The ``--section.key`` flags for ``cfg`` (no support check; see :class:`TorchtitanExporter`)."""
    sharded = cfg.zero >= 2
    flags: list[Flag] = [
        ("--training.local_batch_size", cfg.micro_batch * (cfg.grad_accum if cfg.pp > 1 else 1)),
        ("--training.global_batch_size", training.global_batch),
        ("--training.seq_len", training.seq_len),
        ("--training.mixed_precision_param", "float32" if training.precision == "fp32" else "bfloat16"),
        ("--parallelism.data_parallel_replicate_degree", cfg.dp_replicate if sharded else cfg.dp),
        ("--parallelism.data_parallel_shard_degree", cfg.dp_shard if sharded else 1),
        ("--parallelism.fsdp_reshard_after_forward", _RESHARD[cfg.zero]),
        ("--parallelism.tensor_parallel_degree", cfg.tp),
        _switch("--parallelism.enable_sequence_parallel", cfg.sequence_parallel),
        ("--parallelism.context_parallel_degree", cfg.cp),
        ("--parallelism.pipeline_parallel_degree", cfg.pp),
    ]
    if model.is_moe:
        flags.append(("--parallelism.expert_parallel_degree", cfg.ep))
    if cfg.pp > 1:
        flags += [
            ("--parallelism.pipeline_parallel_schedule", _schedule(cfg)),
            ("--parallelism.pipeline_parallel_microbatch_size", cfg.micro_batch),
            ("--parallelism.pipeline_parallel_layers_per_stage", model.layers // (cfg.pp * cfg.vpp)),
            ("--parallelism.pipeline_parallel_first_stage_less_layers", 0),
            ("--parallelism.pipeline_parallel_last_stage_less_layers", 0),
            ("--training.disable_cuda_graphs", None),
        ]
    compile_model = cfg.tp_comm_overlap or training.precision == "fp8"  # float8 linears are compiled
    flags += [_switch("--compile.enable", compile_model),
              _switch("--compile.enable_async_tensor_parallel", cfg.tp_comm_overlap)]
    return flags


class TorchtitanExporter:
    """torchtitan 0.3.0 ``torchrun -m torchtitan.train`` launch script."""

    name = "torchtitan"
    suffix = ".sh"

    def render(
        self, model: ModelSpec, training: TrainingSpec, cluster: ClusterSpec, cfg: ParallelConfig
    ) -> str:
        """The launch script for ``cfg``; raises InfeasibleConfig when torchtitan cannot run it."""
        check_exportable(self.name, training, cluster, cfg)
        config = find_config(model, training)
        if model.is_moe and cfg.ep == 1 and cfg.etp != cfg.tp:
            raise InfeasibleConfig(f"torchtitan: etp={cfg.etp} with ep=1 and tp={cfg.tp} is not supported (with ep=1"
                                   " the routed experts are tensor-parallel over tp: etp=tp)")
        flags = [("--module", config.module), ("--config", config.function), *overrides(model, training, cfg)]
        header = [
            f"torchtitan {TORCHTITAN_VERSION}: {model.name} ({config.function}) on {cluster.node_counts[0]} node(s)"
            f" x {cluster.gpus_per_node} GPUs, tp={cfg.tp} pp={cfg.pp} vpp={cfg.vpp} cp={cfg.cp} dp={cfg.dp}.",
            "Run from a torchtitan checkout (its config's hf_assets_path and dataset) on every node",
            "(multi-node: set NODE_RANK and MASTER_ADDR). Arguments to this script are passed on.",
        ]
        return render_script(header, {}, [*torchrun_launcher(cluster), "-m torchtitan.train"], flags,
                             last=(f"activation-checkpoint:{cfg.recompute}",))
