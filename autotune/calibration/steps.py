"""The training-step stage of ``autotune calibrate``: host costs fitted to real training steps.

Microbenchmarks time kernels and collectives in isolation; a real step pays more per layer and per
collective than they show (module hooks of DDP/FSDP and DTensor, autograd bookkeeping, the step's Ray
call, ranks waiting for each other on an oversubscribed host). On this machine's CPU the ``layer``
microbenchmark gave 2.4 ms per layer where a refit to 32 measured layouts found 8.6 ms, so a
microbenchmark-only profile under-rated pipeline parallelism (which halves the layers a rank runs).

This stage measures a few simple layouts of a small calibration problem (the ``tiny`` model, a
shorter sequence and batch than any example study, so the figures of ``benchmarks/fidelity_cpu.py``
are out of sample) with the same code a measured trial runs (:func:`workers.measure.measure_trial`),
then fits only the three host costs the microbenchmarks cannot see — ``layer_overhead_us``,
``intra_node_latency_us`` and ``tp_layer_overhead_us`` — with :func:`autotune.calibration.refit.fit_measured`, every
other field staying as the microbenchmarks set it. The layouts separate them: data parallel (the
per-layer cost, one gradient all-reduce per bucket), ZeRO-3 (collectives per layer: the latency),
tensor + sequence parallel (the tensor-parallel modules' dispatch), pipeline (half the layers per rank),
tensor + pipeline parallel and, in the full set, full recompute (a second forward).

On this machine (4 gloo ranks) the training steps moved the profile's median error on the 32 reference
layouts of ``benchmarks/fidelity_cpu.py`` (tiny model, 128 tokens: none of them measured here) from
31-69 % (microbenchmarks alone) to 10.6-11.6 % (full set) and 12.9-14.3 % (quick set), Kendall τ 0.87
to 0.89; fitting only the first two fields left 28 %, since tensor parallelism's cost on CPU is
DTensor's dispatch (10-33 ms per layer), not its collectives.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autotune.calibration.refit import fit_measured, predict
from autotune.config import InfeasibleConfig, ParallelConfig, derive
from autotune.spec import GPUSpec, ModelSpec, TrainingSpec

__all__ = ["STEP_FIELDS", "STEP_OPTIONS", "STEP_LAYOUTS", "step_training", "step_layouts", "fit_steps"]

STEP_FIELDS = ["layer_overhead_us", "intra_node_latency_us", "tp_layer_overhead_us"]
"""The profile fields the training steps set (everything else comes from the microbenchmarks)."""
STEP_OPTIONS = {"warmup_steps": 2, "steps": 5, "seed": 0}
"""``measure_trial`` options of each calibration layout; the fastest timed step is kept (on a shared host
other processes only ever add time). A set-up of several seconds dominates a trial either way."""
STEP_LAYOUTS: list[dict[str, Any]] = [
    {},
    {"pp": 2},
    {"tp": 2, "sequence_parallel": True},
    {"zero": 3},
    {"tp": 2, "sequence_parallel": True, "pp": 2},
    {"recompute": "full"},
]
"""Layout arguments of :func:`autotune.config.derive`, in order of use (``--quick`` takes the first 5:
with a single tensor-parallel layout the quick fit over-predicted TP 2 × PP 2 by 30–57 %)."""


def step_training(device: str, ranks: int) -> TrainingSpec:
    """The calibration problem's training target: 64 tokens, two sequences per rank."""
    return TrainingSpec(seq_len=64, global_batch=2 * ranks, precision="fp32" if device == "cpu" else "bf16")


def step_layouts(model: ModelSpec, training: TrainingSpec, ranks: int, quick: bool) -> list[ParallelConfig]:
    """The valid calibration layouts on ``ranks`` ranks (on one rank only plain data parallel is left)."""
    out: list[ParallelConfig] = []
    for kwargs in STEP_LAYOUTS[:5] if quick else STEP_LAYOUTS:
        try:
            cfg = derive(model, training, ranks, **kwargs)
        except InfeasibleConfig:
            continue
        if cfg not in out:
            out.append(cfg)
    return out


def fit_steps(base: GPUSpec, model: ModelSpec, training: TrainingSpec, gpus_per_node: int,
              configs: list[ParallelConfig], measured: list[float]) -> tuple[GPUSpec, dict[str, Any]]:
    """``base`` with :data:`STEP_FIELDS` fitted to the measured step times (the latency only when some
    layout runs collectives, the tensor-parallel cost only when some layout has tp > 1); the report of
    :func:`autotune.calibration.refit.fit_measured` plus each layout's measured and predicted seconds."""
    fields = [f for f, used in zip(STEP_FIELDS, (True, any(c.world > 1 for c in configs),
                                                 any(c.tp > 1 for c in configs)), strict=True) if used]
    gpu, report = fit_measured(model, training, gpus_per_node, configs, measured, base, params=fields)
    before = predict(model, training, base, gpus_per_node, configs)
    after = predict(model, training, gpu, gpus_per_node, configs)
    report["layouts"] = [{"layout": c.to_dict(), "measured_s": float(m), "before_s": float(b), "after_s": float(a)}
                         for c, m, b, a in zip(configs, np.asarray(measured, dtype=float), before, after, strict=True)]
    return gpu, report
