"""GPU checks for one lent accelerator: backend selection, GEMM efficiency fit, HBM bandwidth, and
measured single-GPU training steps against the analytic model.

1. ``workers.parallel.mesh`` must pick nccl + CUDA; a world-1 nccl process group runs the real
   training step of ``workers/`` (one GPU cannot host two nccl ranks, so no multi-rank parity here).
2. bf16 / fp16 / tf32 GEMMs over (width = hidden/tp, tokens) shapes: measured fraction of the profile's
   dense peak next to the profile's efficiency curve, and a least-squares fit of its three constants.
3. HBM copy bandwidth.
4. Training steps of a Llama-shaped ~1.2B model (bf16 autocast, AdamW) over micro-batch and recompute
   settings: measured step time and ``torch.cuda.max_memory_allocated`` vs ``autotune`` estimates.
Writes everything to OUT/gpu_check.json. ``--smoke`` runs tiny sizes on CPU to test the script itself.
Usage: python benchmarks/gpu_check.py --out DIR [--profile h100-sxm] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from autotune.catalog import get_gpu
from autotune.config import derive
from autotune.costmodel import estimate_arrays, layout_scalars
from autotune.spec import ModelSpec, TrainingSpec

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time(fn, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_sweep(dev: torch.device, widths: list[int], tokens: list[int], reps: int) -> list[dict]:
    """Forward-GEMM shapes of a transformer layer: (tokens x width) @ (width x 4*width)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for name, dt in DTYPES.items():
        for w in widths:
            for t in tokens:
                a = torch.randn(t, w, device=dev, dtype=dt)
                b = torch.randn(w, 4 * w, device=dev, dtype=dt)
                sec = _time(lambda a=a, b=b: a @ b, 3, reps)
                rows.append({"dtype": name, "width": w, "tokens": t, "tflops": 2 * t * w * 4 * w / sec / 1e12})
    return rows


def fit_curve(rows: list[dict], peak: float) -> dict:
    """Least-squares fit of eff = e_max / (1 + k_dim/width + k_tok/tokens) to measured bf16 fractions."""
    from scipy.optimize import least_squares

    pts = [(r["width"], r["tokens"], r["tflops"] / peak) for r in rows if r["dtype"] == "bf16"]
    w, t, eff = (np.array(x, dtype=float) for x in zip(*pts, strict=True))

    def resid(p: np.ndarray) -> np.ndarray:
        return p[0] / (1 + p[1] / w + p[2] / t) - eff

    sol = least_squares(resid, x0=[0.8, 192.0, 96.0], bounds=([0.05, 0, 0], [1.0, 1e5, 1e6]))
    return {"gemm_eff_max": sol.x[0], "gemm_k_dim": sol.x[1], "gemm_k_tokens": sol.x[2],
            "rms_error": float(np.sqrt(np.mean(sol.fun**2)))}


def hbm_bandwidth(dev: torch.device, gib: float) -> float:
    """GB/s of a device-to-device copy, counting bytes read and written."""
    n = int(gib * 2**30 / 4)
    src, dst = torch.empty(n, device=dev), torch.empty(n, device=dev)
    sec = _time(lambda: dst.copy_(src), 2, 5)
    return 2 * n * 4 / sec / 1e9


def train_runs(model: ModelSpec, seq: int, settings: list[tuple[int, str]], steps: int, profile: str) -> list[dict]:
    """World-1 measured steps (nccl on GPU, gloo on CPU) vs the analytic estimate of the same layout."""
    from workers.parallel import parallelize
    from workers.parallel.mesh import backend, init_distributed, shutdown
    from workers.train_step import build_optimizer, train_step

    gpu = get_gpu(profile)
    init_distributed(0, 1, 29512)
    out = []
    try:
        for mbs, recompute in settings:
            training = TrainingSpec(seq_len=seq, global_batch=2 * mbs, precision="bf16", grad_buffers="fp32")
            cfg = derive(model, training, 1, micro_batch=mbs, recompute=recompute)
            est = estimate_arrays(model, training, gpu, 1, layout_scalars(cfg))
            row = {"micro_batch": mbs, "grad_accum": cfg.grad_accum, "recompute": recompute, "backend": backend(),
                   "predicted_step_s": float(est["time"]["step_time_s"]),
                   "predicted_gib": float(est["memory"]["total"]),
                   "predicted_activation_gib": float(est["memory"]["activations"])}
            try:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                par = parallelize(model, cfg, seq_len=seq, precision="bf16")
                opt = build_optimizer(par, "adam", lr=1e-4)
                times = []
                for step in range(steps + 1):
                    _sync()
                    t0 = time.perf_counter()
                    loss = train_step(par, opt, step)
                    _sync()
                    times.append(time.perf_counter() - t0)
                row |= {"measured_step_s": statistics.median(times[1:]), "loss": loss}
                if torch.cuda.is_available():
                    row["measured_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                del par, opt
            except Exception as e:  # an OOM or a failing layout is a figure to report, not a crash
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            print(json.dumps(row), flush=True)
            out.append(row)
    finally:
        shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--profile", default="h100-sxm")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result: dict = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"}
    print(result, flush=True)
    if args.smoke:
        widths, tokens, reps = [64, 128], [64, 256], 2
        model = ModelSpec(name="smoke", layers=2, hidden=128, heads=4, kv_heads=2, ffn_hidden=256, vocab=512,
                          activation="swiglu", norm="rmsnorm")
        seq, settings, steps, gib = 64, [(1, "none"), (2, "full")], 1, 0.01
    else:
        widths, tokens, reps = [512, 1024, 2048, 4096, 8192], [512, 2048, 8192, 16384], 10
        model = ModelSpec(name="llama-1.2b", layers=16, hidden=2048, heads=16, kv_heads=8, ffn_hidden=5632,
                          vocab=32000, activation="swiglu", norm="rmsnorm", max_seq_len=4096)
        seq, steps, gib = 2048, 3, 2.0
        settings = [(1, "none"), (2, "none"), (4, "none"), (4, "selective"), (8, "full"), (16, "full")]
    gpu = get_gpu(args.profile)
    rows = gemm_sweep(dev, widths, tokens, reps)
    for r in rows:
        peak = gpu.peak(r["dtype"]) if dev.type == "cuda" else 1.0
        r["fraction_of_peak"] = r["tflops"] / peak
        r["profile_curve"] = gpu.gemm_eff_max / (1 + gpu.gemm_k_dim / r["width"] + gpu.gemm_k_tokens / r["tokens"])
        print(json.dumps(r), flush=True)
    result["gemm"] = rows
    result["fit_bf16"] = fit_curve(rows, gpu.peak("bf16") if dev.type == "cuda" else 1.0)
    print("fit", result["fit_bf16"], flush=True)
    result["hbm_copy_gbps"] = hbm_bandwidth(dev, gib)
    print("hbm GB/s", result["hbm_copy_gbps"], flush=True)
    result["train"] = train_runs(model, seq, settings, steps, args.profile)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
