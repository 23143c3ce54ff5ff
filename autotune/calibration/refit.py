"""Refit a profile's efficiency parameters to measured step times, and the error figures of a fit.

``fit_measured`` minimises, over the chosen GPUSpec fields, the log error of the analytic step time
against measured step times (``scipy.optimize.least_squares``):

    r_i = log(predicted_i / measured_i),   plus   PRIOR · log(p_j / base_j) for each fitted field j,

under a Cauchy loss of scale ROBUST_SCALE (a residual of 0.1 = 10 % counts fully, larger ones
progressively less; started from the squared-loss solution, since the Cauchy loss barely pulls a start
that is far off), in log-parameter space (every field is positive; scales from 1e-2 µs to 1e4
GB/s). The small prior term keeps fields the data cannot tell apart (e.g. GEMM efficiency against a
per-layer cost when every layout has the same layer width) at the base profile's values instead of wandering. As in
:mod:`autotune.calibration.fit`, ``gemm_eff_max`` may exceed 0.85 during the fit; the result then raises the
peak instead (same predictions, ``gemm_eff_max`` = 0.85).

``error_metrics``: median absolute relative error |pred/meas − 1| and Kendall's τ (scipy.stats).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from autotune.calibration.fit import E_MAX
from autotune.config import ParallelConfig, derive
from autotune.costmodel.compute import peak_flops
from autotune.costmodel.layout import layout_arrays
from autotune.costmodel.time import step_time
from autotune.errors import SpecError
from autotune.spec import GPUSpec, ModelSpec, TrainingSpec
from autotune.store.storage import EvaluationRecord

__all__ = ["PARAMS", "PRIOR", "ROBUST_SCALE", "error_metrics", "predict", "fit_measured", "measured_rows", "config_of",
           "check_fields"]

#: Fields refitted by default, with (low, high) bounds.
PARAMS: dict[str, tuple[float, float]] = {
    "gemm_eff_max": (1e-5, 1e3),
    "gemm_k_dim": (1e-2, 1e5),
    "gemm_k_tokens": (1e-2, 1e6),
    "gemm_latency_us": (1e-3, 1e6),
    "elementwise_bytes_per_token_hidden": (1e-2, 1e5),
    "layer_overhead_us": (1e-2, 1e7),
    "tp_layer_overhead_us": (1e-2, 1e7),
    "intra_node_latency_us": (1e-2, 1e6),
    "intra_node_gbps": (1e-3, 1e4),
}
PRIOR = 0.05
"""Weight of the pull of each fitted field towards its base value (log space)."""
ROBUST_SCALE = 0.1
"""Scale of the Cauchy loss on the log residuals. Step times measured on a shared machine have heavy,
one-sided noise (other processes only ever add time); a squared loss lets a few disturbed layouts
pull every field. On the 32 tiny-CPU layouts the 2-fold cross-validated median error was 17.6 % with
a squared loss, 15.8 % soft-L1, 16.1 % Huber and 13.7 % Cauchy (catalog base; benchmarks/fidelity_cpu.py)."""
_START = {"gemm_latency_us": 1.0, "layer_overhead_us": 10.0, "tp_layer_overhead_us": 10.0}
"""Where the prior of a field whose base value is 0 sits."""
ZERO_STARTS = (1.0, 100.0, 10000.0)
"""Multiples of :data:`_START` the fit starts a zero-based field from (the best solution is kept): in log
space a field far below its fitted value has almost no gradient (10 µs of host cost where 15 ms is
needed), so one start can stay stuck."""


def check_fields(names: Sequence[str], allowed: Mapping[str, Any], what: str, field: str = "fields") -> list[str]:
    """``names`` as a list when each is one of ``allowed`` (the fittable ``what`` profile fields) and none
    repeats; else a one-line SpecError naming ``field`` and listing the allowed names."""
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise SpecError(f"{field}: {', '.join(map(repr, bad)) or 'none'} not fittable {what} fields "
                        f"(allowed: {', '.join(allowed)})")
    if len(set(names)) != len(names):
        raise SpecError(f"{field}: a field is listed twice ({', '.join(names)})")
    return list(names)


def error_metrics(predicted: Any, measured: Any) -> dict[str, float]:
    """Median absolute relative error, Kendall's τ and the row count."""
    from scipy.stats import kendalltau

    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    tau = float(kendalltau(p, m).statistic) if len(p) > 1 else float("nan")
    return {"median_abs_rel_error": float(np.median(np.abs(p / m - 1.0))), "kendall_tau": tau, "n": int(len(p))}


def predict(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, gpus_per_node: int,
            configs: list[ParallelConfig]) -> np.ndarray:
    """Analytic step times (seconds) of ``configs``, vectorised."""
    return np.atleast_1d(step_time(model, training, gpu, gpus_per_node, layout_arrays(configs))["step_time_s"])


def _with(base: GPUSpec, names: list[str], values: np.ndarray) -> GPUSpec:
    return base.model_copy(update=dict(zip(names, (float(v) for v in values), strict=True)))


def _normalise(gpu: GPUSpec, training: TrainingSpec) -> GPUSpec:
    """Move any GEMM efficiency above 0.85 into the training precision's peak (same predictions)."""
    if gpu.gemm_eff_max <= E_MAX:
        return gpu
    scale = gpu.gemm_eff_max / E_MAX
    lin, _ = peak_flops(gpu, training.precision)
    keys = [k for k, v in gpu.peak_tflops.items() if v * 1e12 == lin]
    peaks = {k: v * scale if k in keys else v for k, v in gpu.peak_tflops.items()}
    return gpu.model_copy(update={"gemm_eff_max": E_MAX, "peak_tflops": peaks})


def fit_measured(model: ModelSpec, training: TrainingSpec, gpus_per_node: int, configs: list[ParallelConfig],
                 measured: Any, base: GPUSpec, params: list[str] | None = None) -> tuple[GPUSpec, dict[str, Any]]:
    """``base`` with ``params`` (default :data:`PARAMS`) fitted to ``measured`` step times of ``configs``;
    the report holds the errors before and after and each field's old and new value."""
    from scipy.optimize import least_squares

    names = list(params or PARAMS)
    meas = np.asarray(measured, dtype=float)
    if len(meas) != len(configs) or len(meas) == 0:
        raise ValueError(f"need one measured step time per layout (got {len(meas)} for {len(configs)})")
    x0 = np.log([getattr(base, n) or _START.get(n, 1.0) for n in names])
    lo, hi = np.log([PARAMS[n][0] for n in names]), np.log([PARAMS[n][1] for n in names])
    x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)

    def resid(x: np.ndarray) -> np.ndarray:
        pred = predict(model, training, _with(base, names, np.exp(x)), gpus_per_node, configs)
        return np.concatenate([np.log(pred / meas), PRIOR * (x - x0)])

    zero = np.array([not getattr(base, n) for n in names])
    sols = []
    for k in ZERO_STARTS:
        x1 = np.clip(np.where(zero, x0 + np.log(k), x0), lo + 1e-9, hi - 1e-9)
        start = least_squares(resid, x0=x1, bounds=(lo, hi), x_scale=1.0).x  # squared loss: into the basin
        sols.append(least_squares(resid, x0=start, bounds=(lo, hi), x_scale=1.0, loss="cauchy",
                                  f_scale=ROBUST_SCALE))
        if not zero.any():
            break
    sol = min(sols, key=lambda r: r.cost)
    fitted = _normalise(_with(base, names, np.exp(sol.x)), training)
    fitted = GPUSpec.model_validate(fitted.model_dump())
    before = error_metrics(predict(model, training, base, gpus_per_node, configs), meas)
    after = error_metrics(predict(model, training, fitted, gpus_per_node, configs), meas)
    fields = {n: {"before": getattr(base, n), "after": getattr(fitted, n)} for n in names}
    return fitted, {"before": before, "after": after, "fields": fields, "peak_tflops": fitted.peak_tflops}


def config_of(model: ModelSpec, training: TrainingSpec, gpus: int, layout: dict[str, Any]) -> ParallelConfig:
    """The validated layout of a stored layout dict (``dp``, ``grad_accum`` are derived; ``nodes`` and
    ``global_batch`` are the study case's, in ``gpus`` and ``training``)."""
    kwargs = {k: v for k, v in layout.items() if k not in ("dp", "grad_accum", "nodes", "global_batch")}
    return derive(model, training, gpus, **kwargs)


def measured_rows(rows: list[EvaluationRecord]) -> list[EvaluationRecord]:
    """The ``measure`` rows with a step time: ``ok``, and ``pruned`` (stopped early by the pruner, its
    step time from the steps it ran); a layout measured twice (cache hit) counts once."""
    out, seen = [], set()
    for r in rows:
        step = r.metrics.get("step_time_s")
        if r.fidelity != "measure" or r.status not in ("ok", "pruned") or not step or not np.isfinite(step):
            continue
        key = repr(sorted(r.layout.items()))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out
