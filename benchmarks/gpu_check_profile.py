"""What a GPU profile predicts for each figure ``benchmarks/gpu_check.py`` measures, fits of the profile's
constants to measured figures, and the comparison of the two (no torch: ``--check`` runs anywhere).

Families (:func:`families`), each a list of (measured, predicted) pairs, the ratio measured / predicted per
row written into the row and summarised per family as the rms of ln(measured / predicted):

- ``gemm_<dtype>`` (bf16, fp16, tf32, fp8): fraction of the dtype's dense peak of a (tokens × width) @
  (width × 4·width) GEMM (a layer's fc1), 2·tokens·width·4·width FLOPs. Predicted as the cost model times a
  linear GEMM (:mod:`autotune.costmodel.compute`): FLOPs / (peak · eff) + ``gemm_latency_us``, eff from
  ``gemm_efficiency`` (``fp8_gemm_efficiency`` at the fp8 peak for fp8).
- ``attention_<backend>_<fwd|bwd>``: SDPA causal attention, FLOPs counted causally as FlashAttention's
  benchmarks do (Dao 2023, FlashAttention-2, §4.1; ``flops()`` in ``benchmarks/benchmark_flash_attention.py``
  of Dao-AILab/flash-attention v2.x): forward 4·b·h·s²·d / 2, backward 2.5× forward
  (``compute.FLASH_BWD_RATIO``), as a fraction of the bf16 peak. Each SDPA backend stands for the stack that
  runs that kernel (:data:`SDPA_BACKENDS`); the prediction is that stack's kernel on this GPU
  (``compute.attention_kernel`` / ``attention_efficiency``), or, where the profile describes none, the GEMM
  curve at width heads·d over b·s tokens with backward 2× the forward time, as the cost model falls back.
- ``hbm_copy``: device-to-device copy GB/s (bytes read + written) against ``hbm_gbps``.
- ``train_step`` / ``train_memory``: world-1 training steps against ``estimate_arrays`` of the same layout
  on the ``eager`` stack (the workers' own PyTorch), step seconds and peak GiB.

Benchmark curves are compared at benchmark clocks: ``sustained_fraction`` (power-limited clocks in
training) is not applied; it is printed beside the figures.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import least_squares

from autotune.catalog import get_stack
from autotune.config import ParallelConfig, derive
from autotune.costmodel import estimate_arrays, layout_scalars
from autotune.costmodel.compute import (
    FLASH_BWD_RATIO,
    attention_efficiency,
    attention_kernel,
    fp8_gemm_efficiency,
    gemm_efficiency,
)
from autotune.spec import AttentionKernel, GPUSpec, ModelSpec, TrainingSpec

#: GEMM dtypes measured, in order (fp8: E4M3 inputs, per-tensor scales, bf16 output).
GEMM_DTYPES = ("bf16", "fp16", "tf32", "fp8")
#: fc1's output width over its input width in the measured GEMM shape.
FFN_RATIO = 4
#: SDPA backend -> (torch.nn.attention.SDPBackend member, the catalog stack whose kernel it stands for):
#: PyTorch's flash backend is FlashAttention-2 (as the eager and torchtitan stacks run it), its cuDNN backend the
#: cuDNN fused attention that Transformer Engine runs on Hopper (megatron-te).
SDPA_BACKENDS = {"flash": ("FLASH_ATTENTION", "eager"), "cudnn": ("CUDNN_ATTENTION", "megatron-te")}
#: Stack the training steps are predicted on: the workers' eager PyTorch (catalog stacks.yaml ``eager``).
TRAIN_STACK = "eager"


def families() -> list[str]:
    """Every family a gpu_check JSON can hold, in print order."""
    attention = [f"attention_{b}_{p}" for b in SDPA_BACKENDS for p in ("fwd", "bwd")]
    return [f"gemm_{d}" for d in GEMM_DTYPES] + attention + ["hbm_copy", "train_step", "train_memory"]


def gemm_flops(width: Any, tokens: Any) -> Any:
    """FLOPs of the measured GEMM: 2 · tokens · width · 4·width."""
    return 2.0 * tokens * width * FFN_RATIO * width


def _gemm_fraction(e_max: float, k_dim: float, k_tokens: float, latency_us: float, peak_tflops: float,
                   width: Any, tokens: Any) -> Any:
    """Fraction of peak of the measured GEMM: FLOPs / (FLOPs / (eff · peak) + latency), over peak."""
    flops = gemm_flops(width, tokens)
    eff = e_max / (1.0 + k_dim / width + k_tokens / tokens)
    seconds = flops / (eff * peak_tflops * 1e12) + latency_us * 1e-6
    return flops / seconds / (peak_tflops * 1e12)


def gemm_predicted(gpu: GPUSpec, dtype: str, width: float, tokens: float) -> float:
    """The profile's fraction of ``dtype``'s dense peak for the measured GEMM, latency included."""
    eff = (fp8_gemm_efficiency if dtype == "fp8" else gemm_efficiency)(gpu, width, tokens)
    return float(_gemm_fraction(eff, 0.0, 0.0, gpu.gemm_latency_us, gpu.peak(dtype), width, tokens))


def attention_flops(batch: int, heads: int, seq: int, head_dim: int) -> float:
    """Forward FLOPs of causal attention, counted causally: 4·b·h·s²·d / 2."""
    return 4.0 * batch * heads * seq**2 * head_dim / 2.0


def attention_predicted(gpu: GPUSpec, backend: str, seq: int, head_dim: int, heads: int, tokens: int
                        ) -> tuple[float, float, str]:
    """(forward, backward) fraction of the bf16 peak the profile predicts for ``backend``, and the kernel named."""
    stack = get_stack(SDPA_BACKENDS[backend][1])
    kernel = attention_kernel(gpu, stack, TrainingSpec(seq_len=seq, global_batch=1))
    if kernel is None:
        eff = float(gemm_efficiency(gpu, float(heads * head_dim), float(tokens)))
        return eff, eff * FLASH_BWD_RATIO / 2.0, "gemm curve"
    fwd, bwd = attention_efficiency(kernel, seq, head_dim, stack.attention_factor)
    return float(fwd), float(bwd), next(n for n, k in gpu.attention.items() if k is kernel)


def train_layout(model: ModelSpec, seq: int, micro_batch: int, recompute: str) -> tuple[TrainingSpec, ParallelConfig]:
    """gpu_check's world-1 training layout: bf16, fp32 gradients, grad accumulation 2, the eager stack."""
    training = TrainingSpec(seq_len=seq, global_batch=2 * micro_batch, precision="bf16", grad_buffers="fp32",
                            stack=TRAIN_STACK)
    return training, derive(model, training, 1, micro_batch=micro_batch, recompute=recompute)


def train_predicted(model: ModelSpec, seq: int, gpu: GPUSpec, micro_batch: int, recompute: str
                    ) -> tuple[float, float]:
    """(step seconds, total GiB) the cost model predicts for :func:`train_layout`."""
    training, cfg = train_layout(model, seq, micro_batch, recompute)
    est = estimate_arrays(model, training, gpu, 1, layout_scalars(cfg))
    return float(est["time"]["step_time_s"]), float(est["memory"]["total"])


def fit_gemm(rows: list[dict]) -> dict:
    """Least-squares fit of (gemm_eff_max, gemm_k_dim, gemm_k_tokens, gemm_latency_us) to measured bf16 rows."""
    pts = [(r["width"], r["tokens"], r["fraction_of_peak"], r["peak_tflops"]) for r in rows if r["dtype"] == "bf16"]
    if len(pts) < 4:
        return {"skipped": f"{len(pts)} bf16 shapes, 4 needed"}
    w, t, eff, peak = (np.array(x, dtype=float) for x in zip(*pts, strict=True))

    def resid(p: np.ndarray) -> np.ndarray:
        return _gemm_fraction(p[0], p[1], p[2], p[3], peak, w, t) - eff

    sol = least_squares(resid, x0=[0.8, 192.0, 96.0, 5.0], bounds=([0.05, 0, 0, 0], [1.0, 1e5, 1e6, 1e3]))
    names = ("gemm_eff_max", "gemm_k_dim", "gemm_k_tokens", "gemm_latency_us")
    return dict(zip(names, map(float, sol.x), strict=True)) | {"rms_error": float(np.sqrt(np.mean(sol.fun**2)))}


def fit_fp8(rows: list[dict], gpu: GPUSpec) -> dict:
    """Fit of (fp8_gemm_eff_max, fp8_gemm_k_dim) to measured fp8 rows; gemm_k_tokens and gemm_latency_us held
    at the profile's (the cost model shares them between the two curves)."""
    pts = [(r["width"], r["tokens"], r["fraction_of_peak"]) for r in rows if r["dtype"] == "fp8"]
    if len(pts) < 2:
        return {"skipped": f"{len(pts)} fp8 shapes, 2 needed"}
    w, t, eff = (np.array(x, dtype=float) for x in zip(*pts, strict=True))

    def resid(p: np.ndarray) -> np.ndarray:
        return _gemm_fraction(p[0], p[1], gpu.gemm_k_tokens, gpu.gemm_latency_us, gpu.peak("fp8"), w, t) - eff

    sol = least_squares(resid, x0=[0.7, 400.0], bounds=([0.05, 0], [1.0, 1e5]))
    return {"fp8_gemm_eff_max": float(sol.x[0]), "fp8_gemm_k_dim": float(sol.x[1]),
            "rms_error": float(np.sqrt(np.mean(sol.fun**2)))}


def fit_attention(rows: list[dict], k_head_dim: float) -> dict:
    """Fit of one kernel's (fwd, bwd, k_seq) to measured rows, k_head_dim held: eff = e · s/(s + k_seq) ·
    [d/(d + k_d)] / [128/(128 + k_d)] (:class:`autotune.spec.AttentionKernel`)."""
    ok = [r for r in rows if "bwd_fraction" in r]
    if len(ok) < 2:
        return {"skipped": f"{len(ok)} measured shapes, 2 needed"}
    s = np.array([r["seq"] for r in ok], dtype=float)
    d = np.array([r["head_dim"] for r in ok], dtype=float)
    measured = np.array([[r["fwd_fraction"] for r in ok], [r["bwd_fraction"] for r in ok]])
    head = (d / (d + k_head_dim)) / (128.0 / (128.0 + k_head_dim))

    def resid(p: np.ndarray) -> np.ndarray:
        return (np.outer(p[:2], s / (s + p[2]) * head) - measured).ravel()

    sol = least_squares(resid, x0=[0.5, 0.4, 1000.0], bounds=([0.01, 0.01, 0], [1.0, 1.0, 1e6]))
    return {"fwd": float(sol.x[0]), "bwd": float(sol.x[1]), "k_seq": float(sol.x[2]), "k_head_dim": k_head_dim,
            "rms_error": float(np.sqrt(np.mean(sol.fun**2)))}


def _annotate_gemm(result: dict, gpu: GPUSpec) -> dict[str, list]:
    pairs: dict[str, list] = {f"gemm_{d}": [] for d in GEMM_DTYPES}
    for r in result.get("gemm", []):
        r.pop("profile_curve", None)  # files before the comparison: the curve of the profile they ran against
        r["peak_tflops"] = gpu.peak(r["dtype"])
        r["fraction_of_peak"] = r["tflops"] / r["peak_tflops"]
        r["predicted_fraction"] = gemm_predicted(gpu, r["dtype"], r["width"], r["tokens"])
        r["ratio"] = r["fraction_of_peak"] / r["predicted_fraction"]
        pairs[f"gemm_{r['dtype']}"].append((r["fraction_of_peak"], r["predicted_fraction"]))
    by_shape = {(r["dtype"], r["width"], r["tokens"]): r for r in result.get("gemm", [])}
    result["fp8_speedup"] = [
        {"width": w, "tokens": t, "measured": r["tflops"] / by_shape[("bf16", w, t)]["tflops"],
         "predicted": r["predicted_fraction"] * r["peak_tflops"] / (
             by_shape[("bf16", w, t)]["predicted_fraction"] * gpu.peak("bf16"))}
        for (dtype, w, t), r in by_shape.items() if dtype == "fp8" and ("bf16", w, t) in by_shape]
    return pairs


def _annotate_attention(result: dict, gpu: GPUSpec) -> dict[str, list]:
    pairs: dict[str, list] = {f"attention_{b}_{p}": [] for b in SDPA_BACKENDS for p in ("fwd", "bwd")}
    peak = gpu.peak("bf16") * 1e12
    for r in result.get("attention", []):
        fwd, bwd, kernel = attention_predicted(gpu, r["backend"], r["seq"], r["head_dim"], r["heads"],
                                               r["batch"] * r["seq"])
        r |= {"kernel": kernel, "predicted_fwd_fraction": fwd, "predicted_bwd_fraction": bwd}
        if "fwd_s" not in r:
            continue
        flops = attention_flops(r["batch"], r["heads"], r["seq"], r["head_dim"])
        r["fwd_fraction"] = flops / r["fwd_s"] / peak
        r["fwd_ratio"] = r["fwd_fraction"] / fwd
        pairs[f"attention_{r['backend']}_fwd"].append((r["fwd_fraction"], fwd))
        if r["fwd_bwd_s"] <= r["fwd_s"]:  # timing noise on a tiny shape: no backward figure
            continue
        r["bwd_fraction"] = FLASH_BWD_RATIO * flops / (r["fwd_bwd_s"] - r["fwd_s"]) / peak
        r["bwd_ratio"] = r["bwd_fraction"] / bwd
        pairs[f"attention_{r['backend']}_bwd"].append((r["bwd_fraction"], bwd))
    return pairs


def _annotate_train(result: dict, gpu: GPUSpec, default_model: ModelSpec, default_seq: int) -> dict[str, list]:
    model = ModelSpec.model_validate(result["train_model"]) if "train_model" in result else default_model
    seq = result.get("train_seq", default_seq)
    pairs: dict[str, list] = {"train_step": [], "train_memory": []}
    for r in result.get("train", []):
        r["predicted_step_s"], r["predicted_gib"] = train_predicted(model, seq, gpu, r["micro_batch"], r["recompute"])
        if "measured_step_s" in r:
            pairs["train_step"].append((r["measured_step_s"], r["predicted_step_s"]))
        if "measured_peak_gib" in r:
            pairs["train_memory"].append((r["measured_peak_gib"], r["predicted_gib"]))
    return pairs


def summarize(pairs: list[tuple[float, float]]) -> dict:
    """n, rms of ln(measured / predicted), and the median, lowest and highest ratio measured / predicted."""
    ratio = np.array([m / p for m, p in pairs], dtype=float)
    return {"n": len(pairs), "rms_log_error": float(np.sqrt(np.mean(np.log(ratio) ** 2))),
            "median_ratio": float(np.median(ratio)), "min_ratio": float(ratio.min()), "max_ratio": float(ratio.max())}


def annotate(result: dict, gpu: GPUSpec, default_model: ModelSpec, default_seq: int) -> dict:
    """Add to ``result`` (a gpu_check JSON) the profile's prediction and the ratio per row, the fits beside the
    profile's values, and ``comparison``: per family its :func:`summarize` or why it is missing. Files without
    ``train_model`` / ``train_seq`` ran ``default_model`` at ``default_seq``."""
    pairs = _annotate_gemm(result, gpu) | _annotate_attention(result, gpu)
    pairs |= _annotate_train(result, gpu, default_model, default_seq)
    if "hbm_copy_gbps" in result:
        pairs["hbm_copy"] = [(result["hbm_copy_gbps"], gpu.hbm_gbps)]
    skipped = {"gemm_fp8": result.get("fp8", {}).get("skipped")}
    for r in result.get("attention", []):
        for p in ("fwd", "bwd"):
            skipped.setdefault(f"attention_{r['backend']}_{p}", r.get("error"))
    result["comparison"] = {f: summarize(pairs[f]) if pairs.get(f) else
                            {"missing": skipped.get(f) or "not in the measured figures"} for f in families()}
    result["fits"] = _fits(result, gpu)
    return result


def _fits(result: dict, gpu: GPUSpec) -> dict:
    gemm = result.get("gemm", [])
    fits = {"bf16": {"fitted": fit_gemm(gemm), "profile": {
        "gemm_eff_max": gpu.gemm_eff_max, "gemm_k_dim": gpu.gemm_k_dim, "gemm_k_tokens": gpu.gemm_k_tokens,
        "gemm_latency_us": gpu.gemm_latency_us}}}
    fits["fp8"] = {"fitted": fit_fp8(gemm, gpu), "profile": {
        "fp8_gemm_eff_max": gpu.fp8_gemm_eff_max, "fp8_gemm_k_dim": gpu.fp8_gemm_k_dim}}
    for backend in SDPA_BACKENDS:
        rows = [r for r in result.get("attention", []) if r["backend"] == backend]
        if not rows:
            continue
        kernel = gpu.attention.get(rows[0]["kernel"])
        profile = kernel.model_dump(exclude={"source"}) | {"kernel": rows[0]["kernel"]} if kernel else {
            "kernel": "gemm curve"}
        k_head_dim = kernel.k_head_dim if kernel else AttentionKernel.model_fields["k_head_dim"].default
        fits[f"attention_{backend}"] = {"fitted": fit_attention(rows, k_head_dim),
                                        "profile": profile}
    return fits


def report_lines(result: dict, gpu: GPUSpec) -> list[str]:
    """The comparison and the fits as printable lines."""
    lines = [f"profile {gpu.name} (sustained_fraction {gpu.sustained_fraction}, not applied to the benchmark curves)"
             f" vs {result.get('device', '?')} (torch {result.get('torch', '?')}, gemm timing "
             f"{result.get('gemm_timing', 'each call synchronised')})",
             f"{'family':24} {'n':>3} {'rms ln err':>10} {'median m/p':>10} {'range m/p':>15}"]
    for fam, s in result["comparison"].items():
        if "missing" in s:
            lines.append(f"{fam:24} missing: {s['missing']}")
        else:
            lines.append(f"{fam:24} {s['n']:>3} {s['rms_log_error']:>10.3f} {s['median_ratio']:>10.3f} "
                         f"{s['min_ratio']:>7.3f}-{s['max_ratio']:<7.3f}")
    for name, fit in result["fits"].items():
        fitted = fit["fitted"]
        text = fitted.get("skipped") or " ".join(f"{k}={v:.4g}" for k, v in fitted.items())
        prof = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fit["profile"].items())
        lines.append(f"fit {name}: {text}  | profile: {prof}")
    for r in result.get("fp8_speedup", []):
        lines.append(f"fp8/bf16 speed-up width {r['width']} tokens {r['tokens']}: measured {r['measured']:.2f}x, "
                     f"profile {r['predicted']:.2f}x")
    return lines
