"""Refit a training stack profile's figures to measured step times, the GPU profile held fixed.

``fit_stack`` chooses the values of some StackSpec float fields (:data:`STACK_FIELDS`; by default
:func:`default_fields`) that minimise, by least squares (``scipy.optimize.least_squares``, trust-region
reflective, in log-parameter space within each field's bounds),

    Σ_i r_i²,  r_i = log(predicted_i / measured_i),   plus   Σ_j (PRIOR · log(p_j / start_j))²

over the measured rows i, where ``predicted`` is the analytic step time (:func:`autotune.costmodel.time.step_time`)
of the row's layout and training target on the candidate stack. The small prior (the GPU refit's
:data:`autotune.calibration.refit.PRIOR`) keeps a field the rows cannot tell apart from another at its start
value; a field whose start value is 0 (``layer_host_us`` of the eager stack) has no scale to pull towards and
no prior. The fit reports the rms error sqrt(mean r_i²) before and after — the quantity it minimises, so it
does not rise (but for the FLOOR a zero field starts from) — and :func:`autotune.calibration.refit.error_metrics`
(median |error|, Kendall's τ).

How the fields enter the step time (:mod:`autotune.costmodel.compute`, :mod:`autotune.costmodel.time`):
``layer_host_us`` floors a layer's forward + backward per micro-batch (a layer waits for its host), so below
every layer's GPU time it has no gradient: a field that changes no prediction when raised 10 % from its start
is also started from :data:`START_QUANTILES` of its log range, and the lowest-cost solution kept. ``elementwise_factor``
scales the element-wise HBM traffic; ``attention_factor`` divides the fused attention kernel's throughput at
the training sequence length, so the rows tell it from the other two only through how the attention share of a
step changes with sequence length.

``stack_from_study`` reads a study's measured trials and its resolved GPU and stack for ``autotune calibrate
--from-study STUDY --stack NAME``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from autotune.calibration.refit import PRIOR, check_fields, error_metrics
from autotune.config import ParallelConfig
from autotune.costmodel.compute import attention_kernel
from autotune.costmodel.layout import layout_arrays
from autotune.costmodel.time import step_time
from autotune.errors import SpecError
from autotune.spec import GPUSpec, ModelSpec, StackSpec, TrainingSpec
from autotune.store.storage import Storage

__all__ = ["STACK_FIELDS", "FLOOR", "CEILING", "START_QUANTILES", "default_fields", "predict_rows", "rms_log_error",
           "fit_stack", "stack_from_study"]

FLOOR = 1e-4
"""Lowest value a field bounded below by 0 is fitted down to (log space needs a positive floor): negligible in
each field's unit (µs of host time, a fraction of throughput or of slowdown, bytes per element)."""
CEILING = 1e7
"""Highest value of a field without an upper bound (1e7 µs = 10 s of host time per layer)."""
START_QUANTILES = (0.25, 0.5, 0.75)
"""Where in its log range [FLOOR, bound] a field without effect at its start value is also started from (for
``layer_host_us``: 0.056 µs, 32 µs and 18 ms); every such field at the same quantile in one start."""


def _bounds() -> dict[str, tuple[float, float]]:
    """Each float field of StackSpec with (low, high) bounds from its own constraints."""
    out = {}
    for name, f in StackSpec.model_fields.items():
        if f.annotation is not float:
            continue
        lo, hi = FLOOR, CEILING
        for m in f.metadata:
            lo = max(lo, getattr(m, "gt", None) or getattr(m, "ge", None) or lo)
            hi = min(hi, getattr(m, "le", None) or getattr(m, "lt", None) or hi)
        out[name] = (lo, hi)
    return out


STACK_FIELDS: dict[str, tuple[float, float]] = _bounds()
"""The StackSpec fields a refit may fit (its float fields), with their (low, high) bounds."""


def default_fields(trainings: Sequence[TrainingSpec], gpu: GPUSpec, stack: StackSpec) -> list[str]:
    """``layer_host_us`` and ``elementwise_factor``; ``attention_factor`` too where the rows hold more than one
    sequence length and a fused attention kernel runs (without one the factor changes nothing)."""
    names = ["layer_host_us", "elementwise_factor"]
    if len({t.seq_len for t in trainings}) > 1 and any(attention_kernel(gpu, stack, t) for t in trainings):
        names.append("attention_factor")
    return names


def predict_rows(model: ModelSpec, gpu: GPUSpec, gpus_per_node: int, trainings: Sequence[TrainingSpec],
                 configs: Sequence[ParallelConfig], stack: StackSpec, nics_per_node: int | None = None) -> np.ndarray:
    """Analytic step times (seconds) of row i = (``trainings[i]``, ``configs[i]``) on ``stack``, vectorised over
    the rows that share a training target."""
    out = np.empty(len(configs))
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(trainings):
        groups.setdefault(t.model_dump_json(exclude={"stack"}), []).append(i)
    for idx in groups.values():
        L = layout_arrays([configs[i] for i in idx])
        t = step_time(model, trainings[idx[0]], gpu, gpus_per_node, L, nics_per_node=nics_per_node, stack=stack)
        out[idx] = np.atleast_1d(t["step_time_s"])
    return out


def rms_log_error(predicted: Any, measured: Any) -> float:
    """sqrt(mean(log(predicted / measured)²)): the fit's objective without its prior."""
    r = np.log(np.asarray(predicted, dtype=float) / np.asarray(measured, dtype=float))
    return float(np.sqrt(np.mean(r * r)))


def _with(base: StackSpec, names: list[str], values: np.ndarray) -> StackSpec:
    return base.model_copy(update=dict(zip(names, (float(v) for v in values), strict=True)))


def fit_stack(model: ModelSpec, gpu: GPUSpec, gpus_per_node: int, trainings: Sequence[TrainingSpec],
              configs: Sequence[ParallelConfig], measured: Any, base: StackSpec, fields: Sequence[str] | None = None,
              nics_per_node: int | None = None) -> tuple[StackSpec, dict[str, Any]]:
    """``base`` with ``fields`` (default :func:`default_fields`) fitted to the ``measured`` step times of rows
    (``trainings[i]``, ``configs[i]``) on ``gpu``; the report holds the rms and median errors before and after
    and each field's old and new value. Refuses fewer rows than fields."""
    from scipy.optimize import least_squares

    names = check_fields(list(fields) if fields is not None else default_fields(trainings, gpu, base),
                         STACK_FIELDS, "stack")
    meas = np.asarray(measured, dtype=float)
    if not len(meas) == len(configs) == len(trainings):
        raise ValueError(f"need one measured step time per row (got {len(meas)} for {len(configs)} layouts, "
                         f"{len(trainings)} training targets)")
    if len(meas) < len(names):
        raise SpecError(f"fields: {len(meas)} measured rows cannot determine {len(names)} fields ({', '.join(names)})")
    lo = np.log([STACK_FIELDS[n][0] for n in names])
    hi = np.log([STACK_FIELDS[n][1] for n in names])
    zero = np.array([not getattr(base, n) for n in names])
    x0 = np.clip(np.log([getattr(base, n) or STACK_FIELDS[n][0] for n in names]), lo + 1e-9, hi - 1e-9)
    weight = np.where(zero, 0.0, PRIOR)

    def predict(x: np.ndarray) -> np.ndarray:
        return predict_rows(model, gpu, gpus_per_node, trainings, configs, _with(base, names, np.exp(x)),
                            nics_per_node)

    def resid(x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.log(predict(x) / meas), weight * (x - x0)])

    p0 = predict(x0)
    flat = np.array([np.allclose(predict(x0 + np.log(1.1) * (np.arange(len(names)) == j)), p0, rtol=1e-12)
                     for j in range(len(names))])
    starts = [x0] + [np.clip(np.where(flat, lo + q * (hi - lo), x0), lo + 1e-9, hi - 1e-9)
                     for q in START_QUANTILES if flat.any()]
    sol = min((least_squares(resid, x0=s, bounds=(lo, hi), x_scale=1.0) for s in starts), key=lambda r: r.cost)
    values = np.clip(np.exp(sol.x), [STACK_FIELDS[n][0] for n in names], [STACK_FIELDS[n][1] for n in names])
    fitted = StackSpec.model_validate(_with(base, names, values).model_dump())  # exp(log(2)) may exceed 2
    report: dict[str, Any] = {"fields": {n: {"before": getattr(base, n), "after": getattr(fitted, n)} for n in names}}
    for when, stack in (("before", base), ("after", fitted)):
        pred = predict_rows(model, gpu, gpus_per_node, trainings, configs, stack, nics_per_node)
        report[when] = {"rms_log_error": rms_log_error(pred, meas), **error_metrics(pred, meas)}
    return fitted, report


def stack_from_study(store: Storage, study: str, fields: Sequence[str] | None = None
                     ) -> tuple[StackSpec, dict[str, Any]]:
    """The stack ``study`` scored on, refitted to its measured trials
    (:func:`autotune.calibration.refit.measured_rows`) with its GPU profile (``cluster.profile`` pinned at
    submit, else ``cluster.gpu``) fixed, and the fit's provenance: study, storage, trials, hosts, the GPU and
    the stack it started from, errors and field values. Refuses fewer measured trials than fitted fields."""
    from autotune.calibration.refit import config_of, measured_rows
    from autotune.spec import parse_spec
    from autotune.study.resolve import resolve

    problem = resolve(parse_spec(store.require_spec(study, field="from-study")), storage=store.url)
    base = problem.training.stack
    assert isinstance(base, StackSpec)  # resolve() puts the StackSpec there
    names = check_fields(fields, STACK_FIELDS, "stack") if fields is not None else None
    rows = measured_rows(store.evaluations(study))
    gpn = problem.cluster.gpus_per_node
    trainings = [problem.training.at_batch(r.layout.get("global_batch", problem.training.global_batch)) for r in rows]
    names = names or default_fields(trainings, problem.gpu, base)
    if len(rows) < len(names):
        raise SpecError(f"from-study: study {study!r} has {len(rows)} measured trials (fidelity measure with a step "
                        f"time); fitting {len(names)} stack fields ({', '.join(names)}) needs at least {len(names)}")
    configs = [config_of(problem.model, t, gpn * r.layout.get("nodes", 1), r.layout)
               for t, r in zip(trainings, rows, strict=True)]
    fitted, report = fit_stack(problem.model, problem.gpu, gpn, trainings, configs,
                               [r.metrics["step_time_s"] for r in rows], base, names, problem.cluster.nics_per_node)
    source = {"kind": "study", "study": study, "storage": store.display_url, "trials": [r.trial for r in rows],
              "rows": len(rows), "hosts": sorted({r.host for r in rows}), "gpu": problem.gpu.name,
              "stack": base.name, **report}
    return fitted, source
