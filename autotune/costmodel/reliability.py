"""Time to train on a cluster that fails: checkpoints, restarts and goodput, vectorised over layouts.

Seed 001's training time (epochs × samples / GBS × step time) leaves out hardware failures; on thousands
of GPUs they decide the time to train. The Llama 3 405B run on 16,384 H100s had 419 unexpected
interruptions in 54 days and kept more than 90 % effective training time through fast checkpointing and
restarts (Dubey et al. 2024, §3.3.4). This module turns a layout and :class:`autotune.spec.ReliabilitySpec`
into the expected figures.

Checkpoint contents. A checkpoint holds the weights in the parameter dtype and the optimizer states
(fp32 master weights, Adam m and v: 2 + 12 = 14 bytes/param in mixed precision — what Megatron-LM and
DeepSpeed save; 4 + 8 in fp32 training), never the gradients. Each rank holds them as sharded by tp, pp and
ZeRO (the same arithmetic as :mod:`autotune.costmodel.memory`; an expert-parallel factor enters through
the per-rank parameter count). A replicated state is written by one replica (DeepSpeed's model-state file
from data-parallel rank 0; torch DCP's de-duplication keeps a replicated tensor on one rank), so the
busiest rank writes all it holds: ZeRO-1 keeps its weights whole (2Ψ + 12Ψ/N), ZeRO-3 shards both
(14Ψ/N). The busiest node writes what its GPUs hold (never more than the whole checkpoint); storage
takes the unique bytes (14 bytes × parameters) at its aggregate bandwidth, and the write lasts the
longer of the two. On reload every rank reads everything it holds.

Failures. The job stops when any GPU fails: rate Λ = λ × GPUs (λ per GPU per day), MTBF M = 1/Λ. A
synchronous checkpoint stalls training for its write time C; an asynchronous one only for the
device-to-host snapshot (bytes per rank / snapshot bandwidth), its write then runs in the background, so
the next checkpoint cannot start before the write ends (interval ≥ write time) and a failure during the
write falls back one checkpoint further (on average one write time more lost). Interval τ: Young's
first-order optimum τ = sqrt(2 C M) (Young 1974; Daly 2006) or the user's. Restart cost
R = restart (detect + reschedule + init) + reload (+ the write lag when asynchronous). Checkpoints
fall between optimizer steps: the interval is at least one step.

Goodput (useful time / wall time) follows Daly's expected wall time for Poisson failures (Daly 2006,
"A higher order estimate of the optimum checkpoint interval for restart dumps", FGCS 22, eq. 13):
T_wall = M e^{R/M} (e^{(τ+C)/M} − 1) × T_ideal / τ, so goodput = τ / (M e^{R/M} (e^{(τ+C)/M} − 1)),
always in (0, τ/(τ+C)]; to first order 1 − C/τ − ((τ+C)/2 + R)/M: each failure costs half an interval of
recomputation plus restart plus reload (``lost_per_failure_min``). Expected failures = T_wall / M.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autotune.costmodel.layout import Layout
from autotune.costmodel.memory import GIB, model_state_bytes, stage_params
from autotune.costmodel.moe import expert_shard, expert_stage_params
from autotune.spec import ModelSpec, ReliabilitySpec, TrainingSpec

__all__ = ["RELIABILITY_KEYS", "EXPECTED_KEYS", "checkpoint_bytes", "young_daly_interval_s", "daly_goodput",
           "reliability_arrays", "expected_figures", "with_expected"]

#: The ``reliability`` block of an estimate, in display order.
RELIABILITY_KEYS = (
    "job_failures_per_day", "mtbf_hours", "checkpoint_gib_per_rank", "checkpoint_gib_total", "checkpoint_write_s",
    "checkpoint_stall_s", "checkpoint_read_s", "checkpoint_interval_min", "lost_per_failure_min", "goodput",
)
#: The top-level expected figures an estimate adds beside the ideal ``training_days``, ``gpu_hours``, ``cost``.
EXPECTED_KEYS = ("goodput", "expected_training_days", "expected_gpu_hours", "expected_failures", "expected_cost")
_DAY_S = 86400.0


def checkpoint_bytes(model: ModelSpec, training: TrainingSpec, L: Layout) -> tuple[Any, Any]:
    """(bytes the busiest rank holds of a checkpoint, unique bytes of the whole checkpoint).

    Weights plus optimizer states of the larger pipeline stage's rank, sharded by ``tp``, ``pp`` and ZeRO
    ``zero`` over ``dp_shard`` (routed experts over ep·etp and their ZeRO group) exactly as the memory model
    shards them; gradients are not saved.
    """
    first, last = stage_params(model, L["tp"], L["pp"])
    ex_first, ex_last = expert_stage_params(model, L)
    w1, _, o1 = model_state_bytes(first, L["zero"], L["dp_shard"], training)
    w2, _, o2 = model_state_bytes(last, L["zero"], L["dp_shard"], training)
    ew1, _, eo1 = model_state_bytes(ex_first, L["zero"], expert_shard(L), training)
    ew2, _, eo2 = model_state_bytes(ex_last, L["zero"], expert_shard(L), training)
    w1, o1, w2, o2 = w1 + ew1, o1 + eo1, w2 + ew2, o2 + eo2
    w, _, o = model_state_bytes(model.param_count(), 0, 1, training)
    return np.maximum(w1 + o1, w2 + o2), w + o


def young_daly_interval_s(stall_s: Any, mtbf_s: Any) -> Any:
    """Young/Daly first-order optimum checkpoint interval sqrt(2 × checkpoint cost × MTBF), seconds."""
    return np.sqrt(2.0 * np.asarray(stall_s, dtype=float) * mtbf_s)


def daly_goodput(interval_s: Any, stall_s: Any, restart_s: Any, mtbf_s: Any) -> Any:
    """Useful / wall time, τ / (M e^{R/M} (e^{(τ+C)/M} − 1)) (Daly 2006), computed in logs so a long segment
    between failures underflows to 0 instead of overflowing."""
    tau = np.asarray(interval_s, dtype=float)
    x = (tau + stall_s) / mtbf_s
    log_expm1 = x + np.log(-np.expm1(-x))
    return np.exp(np.log(tau / mtbf_s) - np.asarray(restart_s, dtype=float) / mtbf_s - log_expm1)


def reliability_arrays(model: ModelSpec, training: TrainingSpec, rel: ReliabilitySpec, gpus_per_node: int,
                       L: Layout, step_s: Any = 0.0) -> dict[str, Any]:
    """The ``reliability`` block (:data:`RELIABILITY_KEYS`) for one layout (ints) or many (numpy arrays);
    checkpoints are taken between optimizer steps, so the interval is at least one step of ``step_s``."""
    world = np.asarray(L["tp"] * L["pp"] * L["cp"] * L["dp"], dtype=float)
    rank_b, total_b = checkpoint_bytes(model, training, L)
    node_b = np.minimum(np.minimum(world, gpus_per_node) * rank_b, total_b)
    write_s = np.maximum(node_b / (rel.checkpoint_write_gbps_per_node * 1e9), total_b / (rel.storage_write_gbps * 1e9))
    read_s = np.maximum(np.minimum(world, gpus_per_node) * rank_b / (rel.checkpoint_read_gbps_per_node * 1e9),
                        world * rank_b / (rel.storage_read_gbps * 1e9))
    failures_per_day = rel.failures_per_gpu_day * world
    mtbf_s = _DAY_S / failures_per_day
    if rel.async_checkpoint:
        stall_s, lag_s = rank_b / (rel.snapshot_gbps * 1e9), write_s
    else:
        stall_s, lag_s = write_s, 0.0
    if rel.checkpoint_interval_min is None:
        interval_s = young_daly_interval_s(stall_s, mtbf_s)
    else:
        interval_s = np.full_like(world, rel.checkpoint_interval_min * 60.0)
    interval_s = np.maximum(np.maximum(interval_s, lag_s), step_s)
    restart_s = rel.restart_min * 60.0 + read_s + lag_s
    return {
        "job_failures_per_day": failures_per_day,
        "mtbf_hours": mtbf_s / 3600.0,
        "checkpoint_gib_per_rank": rank_b / GIB,
        "checkpoint_gib_total": np.full_like(world, total_b / GIB),
        "checkpoint_write_s": write_s,
        "checkpoint_stall_s": stall_s,
        "checkpoint_read_s": read_s,
        "checkpoint_interval_min": interval_s / 60.0,
        "lost_per_failure_min": ((interval_s + stall_s) / 2.0 + restart_s) / 60.0,
        "goodput": daly_goodput(interval_s, stall_s, restart_s, mtbf_s),
    }


def expected_figures(ideal: dict[str, Any], reliability: dict[str, Any], price_per_gpu_hour: float | None
                     ) -> dict[str, float]:
    """Expected whole-run figures with failures from the ideal ones (``training_days``, ``gpu_hours``) and a
    ``reliability`` block: days and GPU-hours divided by the goodput, failures = wall time / MTBF, and the cost
    of the expected GPU-hours when a price is given."""
    if "training_days" not in ideal:
        return {}
    goodput = reliability["goodput"]
    days = ideal["training_days"] / goodput
    out = {"goodput": goodput, "expected_training_days": days, "expected_gpu_hours": ideal["gpu_hours"] / goodput,
           "expected_failures": days * 24.0 / reliability["mtbf_hours"]}
    if price_per_gpu_hour is not None:
        out["expected_cost"] = out["expected_gpu_hours"] * price_per_gpu_hour
    return out


def with_expected(metrics: dict[str, Any], est: dict[str, Any], price_per_gpu_hour: float | None) -> dict[str, Any]:
    """``metrics`` (any evaluator's, with its own ideal figures) with the ``reliability`` block and expected
    figures of ``est``, the study cluster's estimate of the same layout; none when ``est`` has none
    (reliability off). The block depends on the layout and the cluster (its interval on the estimated step
    time only where one step is longer than the optimum), so a measured step time gets expected figures at
    the measured speed with the estimate's goodput."""
    out = {k: v for k, v in metrics.items() if k != "reliability" and k not in EXPECTED_KEYS}
    if "reliability" not in est:
        return out
    return out | {"reliability": est["reliability"]} | expected_figures(out, est["reliability"], price_per_gpu_hour)
