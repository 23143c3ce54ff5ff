"""Fit a hardware profile to microbenchmark rows (see :mod:`workers.microbench`); numpy + scipy, no torch.

What each GPUSpec field is fitted from (every fit is least squares on log(predicted / measured), so
small and large shapes weigh alike):

- GEMM curve: seconds = FLOPs / (peak · eff(width, tokens)) + ``gemm_latency_us``, eff as in
  :func:`autotune.costmodel.compute.gemm_efficiency`, fitted on the main dtype's rows. ``gemm_eff_max``
  is capped at 0.85 of the profile's nominal peak; where the fit needs more (the nominal peak is below
  what the device reaches, e.g. a CPU profile's per-machine figure against per-rank measurements), the
  peak itself is raised to (best fitted e_max / 0.85) · peak and ``gemm_eff_max`` set to 0.85 — the
  curve's predictions are unchanged. Other dtypes keep the curve's shape and get their peak scaled by
  their median measured/predicted throughput ratio.
- ``hbm_gbps``: the copy rows, bytes read + written per second (the best row).
- ``elementwise_bytes_per_token_hidden``: slope of the non-GEMM layer forward's seconds over tokens,
  converted to bytes at ``hbm_gbps`` (bytes = slope · hbm / (h · dtype_bytes / 2), the inverse of
  :func:`autotune.costmodel.compute.layer_forward_times`).
- ``layer_overhead_us``: a real transformer block's forward + backward at small token counts minus
  what the fitted GEMM/element-wise model predicts for it: the fixed host-side cost per layer.
- Links: ring α–β (:mod:`autotune.costmodel.comm`): all-reduce 2(n−1)/n·M/β + 2(n−1)·α, reduce-scatter
  and all-gather (n−1)/n·M/β + (n−1)·α, point-to-point M/β + α; non-negative least squares for (1/β, α)
  over every op, size and group size, each row weighted by 1/measured. Only the intra-node link is
  measured on one node; the inter-node link keeps the base profile's figures unless rows say otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autotune.costmodel.compute import layer_forward_times
from autotune.spec import GPUSpec, ModelSpec, TrainingSpec

__all__ = ["E_MAX", "plan_jobs", "fit_gemm", "fit_link", "fit_hbm", "fit_elementwise", "fit_overhead",
           "fit_profile", "ring_coefficients", "peak_key"]

E_MAX = 0.85
"""Largest GEMM efficiency a profile may claim (GPUSpec.gemm_eff_max's bound)."""


def peak_key(dtype: str, device: str) -> list[str]:
    """Profile peak keys a measured dtype sets: CPU fp32 GEMMs are also the profile's 'tf32' (fp32
    training reads the tf32 peak, see :func:`autotune.costmodel.compute.peak_flops`)."""
    if device == "cpu" and dtype == "fp32":
        return ["fp32", "tf32"]
    return [dtype]


def plan_jobs(*, quick: bool, ranks: int, device: str, model: dict[str, Any], threads: int = 1) -> list[dict]:
    """The microbenchmark jobs for one node: compute on ``ranks`` concurrent ranks, collectives over
    groups of 2..ranks. ``quick`` measures fewer shapes and sizes in one job (under a minute on CPU)."""
    main = "fp32" if device == "cpu" else "bf16"
    widths = [32, 64, 128, 256] if quick else [16, 32, 64, 128, 256, 512]
    tokens = [64, 256, 1024] if quick else [32, 128, 512, 1024, 2048]
    if device != "cpu":
        widths, tokens = [512, 1024, 2048, 4096, 8192], [512, 2048, 8192]
    base = {"reps": 3 if quick else 5, "widths": widths, "tokens": tokens, "attention": [(1, 4, 128, 32)],
            "copy_bytes": 32e6 if device == "cpu" else 2e9, "elementwise_tokens": [64, 256, 1024],
            "layer_seq": [8, 16, 32], "model": model, "sustained_s": 0.01 if quick else 0.03}
    sizes = [4096, 65536, 1 << 20, 4 << 20] if quick else [4096, 16384, 65536, 262144, 1 << 20, 4 << 20, 16 << 20]
    groups = sorted({2, ranks}) if quick else list(range(2, ranks + 1))
    comm = {"reps": 3 if quick else 5, "sizes": sizes, "groups": [g for g in groups if g <= ranks], "model": model}
    common = {"ranks": ranks, "threads": threads if device == "cpu" else None}
    if quick:
        return [common | {"name": "compute + collectives", "compute": base | {"dtypes": [main]}, "comm": comm}]
    others = ["bf16"] if device == "cpu" else ["fp16", "tf32"]
    jobs = [common | {"name": f"compute ({main})", "compute": base | {"dtypes": [main]}}]
    jobs += [common | {"name": f"GEMM ({d})", "compute": base | {"dtypes": [d], "attention": [], "layer_seq": [],
                                                                 "elementwise_tokens": [], "tokens": tokens[:3]}}
             for d in others]
    return jobs + [common | {"name": f"collectives (2..{ranks} ranks)", "comm": comm}] if ranks > 1 else jobs


def _gemm_pred(p: np.ndarray, flops: np.ndarray, w: np.ndarray, t: np.ndarray, peak: float) -> np.ndarray:
    eff = p[0] / (1.0 + p[1] / w + p[2] / t)
    return flops / (peak * eff) + p[3] * 1e-6


def fit_gemm(rows: list[dict[str, Any]], peak_tflops: float) -> dict[str, float]:
    """(e_max, k_dim, k_tokens, latency_us, rms log error) of GEMM rows against a dense peak (TFLOP/s);
    e_max is unbounded here (see the module docstring for the 0.85 cap)."""
    from scipy.optimize import least_squares

    flops, w, t, sec = (np.array([r[k] for r in rows], dtype=float) for k in ("flops", "width", "tokens", "seconds"))
    peak = peak_tflops * 1e12
    best = float(np.max(flops / sec)) / peak

    def resid(p: np.ndarray) -> np.ndarray:
        return np.log(_gemm_pred(p, flops, w, t, peak) / sec)

    x0 = [min(1.5 * best, 50.0), 64.0, 64.0, float(np.min(sec)) * 1e6 / 4]
    sol = least_squares(resid, x0=x0, bounds=([1e-6, 0, 0, 0], [1e3, 1e5, 1e6, 1e6]), x_scale="jac")
    return {"e_max": float(sol.x[0]), "k_dim": float(sol.x[1]), "k_tokens": float(sol.x[2]),
            "latency_us": float(sol.x[3]), "rms_log_error": float(np.sqrt(np.mean(sol.fun ** 2))),
            "best_fraction": best, "rows": len(rows)}


def ring_coefficients(op: str, n: Any, nbytes: Any) -> tuple[Any, Any]:
    """(bytes over β, count of α) of one collective in the ring model of :mod:`autotune.costmodel.comm`."""
    n = np.asarray(n, dtype=float)
    if op == "all_reduce":
        return 2.0 * (n - 1) / n * nbytes, 2.0 * (n - 1)
    if op in ("all_gather", "reduce_scatter"):
        return (n - 1) / n * nbytes, n - 1
    if op == "p2p":
        return np.asarray(nbytes, dtype=float), np.ones_like(n)
    raise ValueError(f"unknown collective {op!r}")


def fit_link(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Bandwidth (GB/s) and latency (µs) of one link from comm rows; relative-error weighted NNLS."""
    from scipy.optimize import nnls

    a = np.array([ring_coefficients(r["op"], r["ranks"], r["bytes"]) for r in rows], dtype=float)
    sec = np.array([r["seconds"] for r in rows], dtype=float)
    x, _ = nnls(a / sec[:, None], np.ones_like(sec))
    inv_bw, alpha = float(x[0]), float(x[1])
    pred = a @ x
    return {"gbps": (1.0 / inv_bw / 1e9) if inv_bw > 0 else 1e6, "latency_us": max(alpha * 1e6, 0.01),
            "rms_log_error": float(np.sqrt(np.mean(np.log(np.maximum(pred, 1e-12) / sec) ** 2))), "rows": len(rows)}


def fit_hbm(rows: list[dict[str, Any]]) -> float:
    """Memory bandwidth, GB/s, from the copy rows (bytes read + written per second, best row)."""
    return max(r["bytes"] / r["seconds"] for r in rows) / 1e9


def fit_elementwise(rows: list[dict[str, Any]], hbm_gbps: float) -> float:
    """``elementwise_bytes_per_token_hidden`` from the element-wise rows' seconds-per-token slope."""
    t = np.array([r["tokens"] for r in rows], dtype=float)
    sec = np.array([r["seconds"] for r in rows], dtype=float)
    slope = np.polyfit(t, sec, 1)[0] if len(rows) > 1 else sec[0] / t[0]
    h, dtype = rows[0]["hidden"], rows[0]["dtype_bytes"]
    return max(float(slope) * hbm_gbps * 1e9 * 2.0 / (h * dtype), 0.0)


def fit_overhead(rows: list[dict[str, Any]], gpu: GPUSpec) -> float:
    """``layer_overhead_us``: median of (measured block forward + backward − modelled compute) over the
    layer rows, the modelled part from ``gpu`` (its GEMM and element-wise fields already fitted)."""
    residuals = []
    for r in rows:
        model = ModelSpec.model_validate(r["model"])
        training = TrainingSpec(seq_len=r["seq"], global_batch=1, precision="fp32")
        L = {"tp": 1, "cp": 1, "micro_batch": 1, "sequence_parallel": 0}
        t = layer_forward_times(model, training, gpu.model_copy(update={"layer_overhead_us": 0.0}), L)
        modelled = 3.0 * float(t["linear"] + t["core"] + t["elementwise"] + t["softmax"])
        residuals.append(r["seconds"] - modelled)
    return max(float(np.median(residuals)) * 1e6, 0.0)


def fit_profile(base: GPUSpec, rows: list[dict[str, Any]], device: str) -> tuple[GPUSpec, dict[str, Any]]:
    """The profile fitted to ``rows`` starting from ``base``, and a report of each fit."""
    report: dict[str, Any] = {}
    update: dict[str, Any] = {}
    gemm = [r for r in rows if r["kind"] == "gemm"]
    main = "fp32" if device == "cpu" else "bf16"
    peaks = dict(base.peak_tflops)
    if any(r["dtype"] == main for r in gemm):
        nominal = base.peak("tf32" if main == "fp32" and device != "cpu" else main)
        fit = fit_gemm([r for r in gemm if r["dtype"] == main], nominal)
        scale = max(1.0, fit["e_max"] / E_MAX)
        for key in peak_key(main, device):
            peaks[key] = nominal * scale
        update |= {"gemm_eff_max": fit["e_max"] / scale, "gemm_k_dim": fit["k_dim"],
                   "gemm_k_tokens": fit["k_tokens"], "gemm_latency_us": fit["latency_us"]}
        report["gemm"] = fit | {"dtype": main, "nominal_peak_tflops": nominal, "peak_tflops": nominal * scale,
                                "peak_raised": scale > 1.0}
        curve = np.array([update["gemm_eff_max"], fit["k_dim"], fit["k_tokens"], fit["latency_us"]])
        for d in sorted({r["dtype"] for r in gemm} - {main}):
            sub = [r for r in gemm if r["dtype"] == d]
            f, w, t, s = (np.array([r[k] for r in sub], dtype=float) for k in ("flops", "width", "tokens", "seconds"))
            ratio = float(np.median(_gemm_pred(curve, f, w, t, base.peak(d) * 1e12) / s))
            for key in peak_key(d, device):
                peaks[key] = base.peak(d) * ratio
            report[f"gemm_{d}"] = {"peak_tflops": base.peak(d) * ratio, "rows": len(sub)}
    update["peak_tflops"] = peaks
    copy = [r for r in rows if r["kind"] == "copy"]
    if copy:
        update["hbm_gbps"] = report["hbm_gbps"] = fit_hbm(copy)
    elem = [r for r in rows if r["kind"] == "elementwise"]
    if elem:
        hbm = update.get("hbm_gbps", base.hbm_gbps)
        update["elementwise_bytes_per_token_hidden"] = fit_elementwise(elem, hbm)
        report["elementwise_bytes_per_token_hidden"] = update["elementwise_bytes_per_token_hidden"]
    comm = [r for r in rows if r["kind"] == "comm"]
    if comm:
        link = fit_link(comm)
        update |= {"intra_node_gbps": link["gbps"], "intra_node_latency_us": link["latency_us"], "nvlink_bus_eff": 1.0}
        report["intra_node"] = link
    gpu = base.model_copy(update=update)
    layer = [r for r in rows if r["kind"] == "layer"]
    if layer:
        gpu = gpu.model_copy(update={"layer_overhead_us": fit_overhead(layer, gpu)})
        report["layer_overhead_us"] = gpu.layer_overhead_us
    report["attention"] = [_attention_check(r, gpu) for r in rows if r["kind"] == "attention"]
    return GPUSpec.model_validate(gpu.model_dump()), report


def _attention_check(r: dict[str, Any], gpu: GPUSpec) -> dict[str, float]:
    """Measured causal attention forward against the GEMM curve's prediction (half the FLOPs, causal)."""
    d, s = r["head_dim"], r["seq"]
    eff = gpu.gemm_eff_max / (1.0 + gpu.gemm_k_dim / (d * r["heads"]) + gpu.gemm_k_tokens / (r["batch"] * s))
    predicted = 0.5 * 2.0 * r["flops"] / (gpu.peak("tf32") * 1e12 * eff)
    return {"seq": s, "measured_s": r["seconds"], "predicted_s": predicted, "ratio": r["seconds"] / predicted}
