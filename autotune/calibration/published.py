"""Published training runs as cost-model cases: the reference files of ``../shared/reference``.

Each row becomes a :class:`PublishedRun` — model shape, cluster, training target, the layout the run used,
the stack it ran on and its published step time (global batch × seq / (tokens/s per GPU × GPUs)) — so
``benchmarks/fidelity_published.py`` and the tests score the cost model through the same public estimate
API a user calls. Nothing here is fitted; the rows say what they say.

- ``llm_foundry_mpt.csv`` (MosaicML llm-foundry benchmark table, commit 8c8dd48): MPT is a GPT-2-style
  decoder (tied embeddings, LayerNorm, 4h GELU MLP, learned positions of length seq). The benchmark YAMLs
  (``scripts/train/benchmarking/``) train with FlashAttention, no dropout, PyTorch FSDP over all GPUs
  (``FULL_SHARD`` = ZeRO-3, ``SHARD_GRAD_OP`` = ZeRO-2), activation checkpointing of whole blocks when
  ``recompute = full``. Mixed precision: ``DEFAULT`` reduces gradients in fp32, ``PURE`` in bf16 (Composer's
  FSDP ``mixed_precision`` presets), hence ``grad_buffers`` fp32 / low. fp8 rows run Transformer Engine.
  8 GPUs per node.
- ``narayanan2021_table1.csv``: Megatron-LM 2021 on DGX A100 (8 GPUs per node, 8×200 Gb/s IB), full
  recompute, no FlashAttention, gradient all-reduce after backward, no distributed optimizer. The
  micro-batch is not published: the run takes the fastest of 1, 2, 4, 8 that fits (as the paper tuned it).
  Its published figure is hardware TFLOP/s per GPU with the paper's F = 96·B·s·l·h²·(1 + s/6h + V/16lh),
  so the step time is F / (TFLOP/s · GPUs).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autotune.catalog import get_gpu, get_stack
from autotune.config import ParallelConfig, derive
from autotune.costmodel.estimate import estimate_many
from autotune.errors import InfeasibleConfig
from autotune.spec import ClusterSpec, GPUSpec, ModelSpec, StackSpec, TrainingSpec

__all__ = ["PublishedRun", "load_runs", "mpt_runs", "narayanan_runs", "seq_band", "gpu_band", "REFERENCE_FILES",
           "predicted_step_times", "step_time_errors"]

#: The reference files this module reads, by short name.
REFERENCE_FILES = {"mpt": "llm_foundry_mpt.csv", "narayanan": "narayanan2021_table1.csv"}


@dataclass(frozen=True)
class PublishedRun:
    """One published run: what ran, where, how, and how fast."""

    id: str
    source: str
    model: ModelSpec
    cluster: ClusterSpec
    training: TrainingSpec
    layouts: tuple[ParallelConfig, ...]
    """The run's layout; several when a field was not published (the fastest that fits is the run's)."""
    stack: str
    published_step_s: float
    """Published step time, seconds."""

    @property
    def group(self) -> str:
        """GPU × precision × sequence band × GPU-count band: the unit of per-group and leave-one-out scores."""
        return (f"{self.source}:{self.cluster.gpu}/{self.training.precision}/"
                f"{seq_band(self.training.seq_len)}/{gpu_band(self.cluster.gpus)}")


def seq_band(seq: int) -> str:
    """Sequence band: short (<= 2k), medium (4k-8k) or long (>= 16k)."""
    return "s<=2k" if seq <= 2048 else ("s4k-8k" if seq <= 8192 else "s>=16k")


def gpu_band(gpus: int) -> str:
    """GPU-count band: one node (<= 8), 2-8 nodes, or 16 nodes and more."""
    return "g<=8" if gpus <= 8 else ("g16-64" if gpus <= 64 else "g>=128")


def _rows(path: Path) -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        yield from csv.DictReader(line for line in fh if not line.startswith("#"))


def _gpt(name: str, layers: int, hidden: int, heads: int, vocab: int, positions: int, dropout: bool) -> ModelSpec:
    return ModelSpec(name=name, layers=layers, hidden=hidden, heads=heads, vocab=vocab, activation="gelu",
                     tied_embeddings=True, norm="layernorm", bias="all", position_embedding="learned",
                     max_seq_len=positions, dropout=dropout)


def mpt_runs(path: Path) -> list[PublishedRun]:
    """The llm-foundry MPT rows."""
    out = []
    for r in _rows(path):
        seq, gpus = int(r["seq"]), int(r["gpus"])
        model = _gpt(f"mpt-{r['id']}", int(r["n_layer"]), int(r["n_embd"]), int(r["n_head"]), int(r["vocab_size"]),
                     int(r["n_positions"]), dropout=False)
        training = TrainingSpec(seq_len=seq, global_batch=int(r["gbs"]), precision=r["precision"],
                                grad_buffers="low" if r["mp_mode"] == "PURE" else "fp32", stack="llm-foundry")
        nodes = max(1, gpus // 8)
        cluster = ClusterSpec(gpu=r["gpu"], gpus_per_node=min(8, gpus), nodes=nodes, reliability="off")
        zero = int(r["zero"])
        cfg = derive(model, training, gpus, zero=zero, micro_batch=int(r["mbs"]),
                     recompute="full" if r["recompute"] == "full" else "none")
        step = int(r["gbs"]) * seq / (float(r["tokens_per_s_per_gpu"]) * gpus)
        out.append(PublishedRun(id=r["id"], source="mpt", model=model, cluster=cluster, training=training,
                                layouts=(cfg,), stack="llm-foundry", published_step_s=step))
    return out


def narayanan_runs(path: Path) -> list[PublishedRun]:
    """Narayanan et al. 2021, Table 1 (micro-batch candidates 1, 2, 4, 8)."""
    out = []
    for r in _rows(path):
        layers, hidden, heads = int(r["layers"]), int(r["hidden_size"]), int(r["attention_heads"])
        model = _gpt(f"gpt-{r['params_billion']}b", layers, hidden, heads, 51200, 2048, dropout=True)
        gpus = int(r["gpus"])
        training = TrainingSpec(seq_len=2048, global_batch=int(r["global_batch_size"]), flash_attention=False,
                                stack="megatron-2021")
        cluster = ClusterSpec(gpu="a100-80gb", gpus_per_node=8, nodes=gpus // 8, reliability="off")
        layouts = []
        for mb in (1, 2, 4, 8):
            try:
                layouts.append(derive(model, training, gpus, tp=int(r["tensor_parallel"]),
                                      pp=int(r["pipeline_parallel"]), micro_batch=mb, recompute="full",
                                      overlap_grad_reduce=False, overlap_param_gather=False))
            except InfeasibleConfig:
                continue
        out.append(PublishedRun(id=f"narayanan-{r['params_billion']}b", source="narayanan", model=model,
                                cluster=cluster, training=training, layouts=tuple(layouts), stack="megatron-2021",
                                published_step_s=_narayanan_step(model, training, gpus, float(r["tflops_per_gpu"]))))
    return out


def _narayanan_step(model: ModelSpec, training: TrainingSpec, gpus: int, tflops: float) -> float:
    """Step time from the paper's hardware TFLOP/s: F = 96·B·s·l·h²·(1 + s/6h + V/16lh) over GPUs × TFLOP/s."""
    b, s, n, h, v = training.global_batch, training.seq_len, model.layers, model.hidden, model.vocab
    flops = 96.0 * b * s * n * h * h * (1.0 + s / (6.0 * h) + v / (16.0 * n * h))
    return flops / (tflops * 1e12 * gpus)


def load_runs(reference_dir: Path) -> list[PublishedRun]:
    """Every run of both reference files."""
    return (mpt_runs(reference_dir / REFERENCE_FILES["mpt"])
            + narayanan_runs(reference_dir / REFERENCE_FILES["narayanan"]))


def predicted_step_times(runs: list[PublishedRun], gpus: dict[str, GPUSpec] | None = None,
                         stacks: dict[str, StackSpec] | None = None) -> np.ndarray:
    """The cost model's step time of each run: the fastest of its candidate layouts that fits memory, on the
    catalog profiles or the ``gpus`` / ``stacks`` given by name (a fit's trial values)."""
    gpus, stacks = gpus or {}, stacks or {}
    out = []
    for r in runs:
        gpu = gpus.get(r.cluster.gpu) or get_gpu(r.cluster.gpu)
        stack = stacks.get(r.stack) or get_stack(r.stack)
        ests = estimate_many(r.model, r.training, gpu, r.cluster, list(r.layouts), stack)
        fit = [e for e in ests if e["fits"]] or ests
        out.append(min(e["step_time_s"] for e in fit))
    return np.array(out)


def step_time_errors(runs: list[PublishedRun], gpus: dict[str, GPUSpec] | None = None,
                     stacks: dict[str, StackSpec] | None = None) -> np.ndarray:
    """Relative step-time errors of ``runs``, predicted / published − 1."""
    return predicted_step_times(runs, gpus, stacks) / np.array([r.published_step_s for r in runs]) - 1.0
