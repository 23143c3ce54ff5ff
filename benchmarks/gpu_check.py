"""GPU checks for one lent accelerator: GEMM curves (bf16, fp16, tf32, fp8), SDPA attention kernels, HBM
bandwidth and single-GPU training steps, each against what the GPU profile predicts.

1. GEMMs over (width = hidden/tp, tokens) shapes, (tokens × width) @ (width × 4·width): measured fraction of
   the dtype's dense peak next to the profile's curve; fits of the bf16 curve's four constants and of
   (fp8_gemm_eff_max, fp8_gemm_k_dim); the fp8 / bf16 speed-up per shape. fp8 is E4M3 × E4M3 → bf16 with
   per-tensor scales (amax / 448, as Transformer Engine's and torchao's tensorwise recipes) and fast
   accumulation (their forward GEMM); skipped, with the reason recorded, below compute capability 8.9 and on
   CPU (``--smoke`` runs torch's CPU fp8 kernel to test the code). Each timing is the median over ``reps``
   batches of ``inner`` back-to-back calls with one synchronize per batch (``tflops``: the kernels queued as
   in training); ``tflops_synced`` synchronises after every call (the method of docs/gpu_check_h100.json).
2. SDPA causal attention, bf16, head dim 128 and 64, sequence 2k-32k, batch · sequence = 16k tokens and
   heads · head dim = 2048 (the shapes of the FlashAttention-2 paper's benchmark, Dao 2023 §4.1; batch 1 at
   32k, so q, k, v and their gradients stay at most 128 MiB each), forward and forward + backward, each
   backend pinned with ``torch.nn.attention.sdpa_kernel`` (the autograd node that ran is recorded); fractions
   of the bf16 peak, FLOPs counted causally, next to the profile's kernel curve and a fit of its (fwd, bwd,
   k_seq) (benchmarks/gpu_check_profile.py says how each is predicted).
3. HBM copy bandwidth (bytes read + written).
4. World-1 training steps of a Llama-shaped ~1.2B model (bf16 autocast, AdamW; nccl on a GPU): step time and
   ``torch.cuda.max_memory_allocated`` vs the cost model's estimate of the same layout.
5. ``comparison``: per family the rms of ln(measured / predicted) and the ratios; printed and in the JSON.

Writes OUT/gpu_check.json. On the lent device (one H200 or H100, < 5 minutes; ``--quick`` about a third):
    python benchmarks/gpu_check.py --out $OUT --profile h100-sxm      # --profile h200 on an H200
then store the figures as docs/gpu_check_<gpu>.json (docs/gpu_check_h100.json: an H100 SXM run, torch 2.11).
``--check PROFILE [--stored FILE]`` needs no GPU: it reads a stored JSON (default docs/gpu_check_h100.json) and
prints how the catalog profile's current curves compare with its figures (families it lacks: missing);
``--out`` then writes the annotated JSON as OUT/gpu_check_vs_PROFILE.json. ``--smoke``: tiny sizes on CPU.
Figures are printed; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from autotune.catalog import get_gpu, gpu_names
from autotune.spec import ModelSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check_profile import FFN_RATIO, SDPA_BACKENDS, annotate, gemm_flops, report_lines, train_layout  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32}


@dataclass(frozen=True)
class Sizes:
    """What one mode measures."""

    widths: tuple[int, ...]
    tokens: tuple[int, ...]
    reps: int
    inner: int
    seqs: tuple[int, ...]
    head_dims: tuple[int, ...]
    attention_tokens: int
    attention_hidden: int
    hbm_gib: float
    model: ModelSpec
    seq: int
    settings: tuple[tuple[int, str], ...]
    steps: int


LLAMA_1B = ModelSpec(name="llama-1.2b", layers=16, hidden=2048, heads=16, kv_heads=8, ffn_hidden=5632, vocab=32000,
                     activation="swiglu", norm="rmsnorm", max_seq_len=4096)
FULL = Sizes(widths=(512, 1024, 2048, 4096, 8192), tokens=(512, 2048, 8192, 16384), reps=10, inner=10,
             seqs=(2048, 4096, 8192, 16384, 32768), head_dims=(128, 64), attention_tokens=16384,
             attention_hidden=2048, hbm_gib=2.0, model=LLAMA_1B, seq=2048, steps=3,
             settings=((1, "none"), (2, "none"), (4, "none"), (4, "selective"), (8, "full"), (16, "full")))
QUICK = Sizes(widths=(1024, 4096, 8192), tokens=(2048, 16384), reps=5, inner=10, seqs=(2048, 8192, 32768),
              head_dims=(128,), attention_tokens=16384, attention_hidden=2048, hbm_gib=2.0, model=LLAMA_1B, seq=2048,
              steps=3, settings=((1, "none"), (4, "selective")))
SMOKE = Sizes(widths=(64, 128), tokens=(64, 256), reps=2, inner=1, seqs=(128, 256), head_dims=(64,),
              attention_tokens=256, attention_hidden=128, hbm_gib=0.01,
              model=ModelSpec(name="smoke", layers=2, hidden=128, heads=4, kv_heads=2, ffn_hidden=256, vocab=512,
                              activation="swiglu", norm="rmsnorm"),
              seq=64, steps=1, settings=((1, "none"), (2, "full")))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time(fn, warmup: int, reps: int, inner: int = 1) -> float:
    """Median seconds per call over ``reps`` batches of ``inner`` back-to-back calls, one sync per batch."""
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def _error(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def gemm_sweep(dev: torch.device, sz: Sizes) -> list[dict]:
    """bf16 / fp16 / tf32 GEMMs of every (width, tokens) shape."""
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for name, dt in TORCH_DTYPES.items():
        for w in sz.widths:
            for t in sz.tokens:
                a = torch.randn(t, w, device=dev, dtype=dt)
                b = torch.randn(w, FFN_RATIO * w, device=dev, dtype=dt)
                flops = gemm_flops(w, t)
                row = {"dtype": name, "width": w, "tokens": t,
                       "tflops": flops / _time(lambda a=a, b=b: a @ b, 3, sz.reps, sz.inner) / 1e12,
                       "tflops_synced": flops / _time(lambda a=a, b=b: a @ b, 3, sz.reps) / 1e12}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def fp8_unsupported(dev: torch.device, smoke: bool) -> str | None:
    """Why this device cannot run fp8 GEMMs on tensor cores (None: it can, or a smoke run tests the code on CPU)."""
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        return None if (major, minor) >= (8, 9) else f"compute capability {major}.{minor} < 8.9: no fp8 tensor cores"
    return None if smoke else "cpu: no fp8 tensor cores"


def _fp8_matmul(a8: torch.Tensor, b8: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor) -> torch.Tensor:
    """(a8 · scale_a) @ (b8 · scale_b) in bf16; b8 column-major, as cuBLASLt's fp8 GEMM requires. The one fp8
    GEMM call: ``torch.nn.functional.scaled_mm`` (public in torch 2.13; it wraps the private
    ``torch._scaled_mm_v2``), tensorwise scales, fast accumulation as in the forward GEMMs of Transformer
    Engine (fprop without split accumulator) and torchao (``Float8GemmConfig(use_fast_accum=True)``)."""
    tensorwise = torch.nn.functional.ScalingType.TensorWise
    return torch.nn.functional.scaled_mm(a8, b8, scale_a, tensorwise, scale_b, tensorwise,
                                         output_dtype=torch.bfloat16, use_fast_accum=True)


def fp8_sweep(dev: torch.device, sz: Sizes) -> list[dict]:
    """fp8 GEMMs of every shape, with the relative Frobenius error against the bf16 product of the same inputs."""
    fp8, fmax = torch.float8_e4m3fn, torch.finfo(torch.float8_e4m3fn).max
    rows = []
    for w in sz.widths:
        for t in sz.tokens:
            a = torch.randn(t, w, device=dev, dtype=torch.bfloat16)
            bt = torch.randn(FFN_RATIO * w, w, device=dev, dtype=torch.bfloat16)
            sa, sb = (x.abs().amax().float().reshape(1) / fmax for x in (a, bt))
            a8, b8 = (a / sa).to(fp8), (bt / sb).to(fp8).t()
            ref = (a @ bt.t()).float()
            err = torch.linalg.norm(_fp8_matmul(a8, b8, sa, sb).float() - ref) / torch.linalg.norm(ref)
            sec = _time(lambda a8=a8, b8=b8, sa=sa, sb=sb: _fp8_matmul(a8, b8, sa, sb), 3, sz.reps, sz.inner)
            row = {"dtype": "fp8", "width": w, "tokens": t, "tflops": gemm_flops(w, t) / sec / 1e12,
                   "rel_error": float(err)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _attention_times(backend: str, shape: tuple[int, int, int, int], dev: torch.device, sz: Sizes) -> dict:
    """The autograd node that ran and the forward and forward + backward seconds of causal SDPA, one backend
    pinned (``sdpa_kernel`` with one backend raises where it cannot run)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    q, k, v = (torch.randn(*shape, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn(*shape, device=dev, dtype=torch.bfloat16)
    with sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[backend][0])]):
        node = sdpa(q, k, v, is_causal=True).grad_fn.name()
        fwd = _time(lambda: sdpa(q, k, v, is_causal=True), 3, sz.reps, sz.inner)
        fwd_bwd = _time(lambda: torch.autograd.grad(sdpa(q, k, v, is_causal=True), (q, k, v), grad), 3, sz.reps,
                        sz.inner)
    return {"autograd_node": node, "fwd_s": fwd, "fwd_bwd_s": fwd_bwd}


def attention_sweep(dev: torch.device, sz: Sizes) -> list[dict]:
    """Causal SDPA per (backend, head dim, sequence): b = attention_tokens / s (at least 1) sequences of
    attention_hidden / d heads; a backend that cannot run a shape records its error."""
    rows = []
    for backend in SDPA_BACKENDS:
        for d in sz.head_dims:
            for s in sz.seqs:
                b, h = max(1, sz.attention_tokens // s), sz.attention_hidden // d
                row = {"backend": backend, "head_dim": d, "seq": s, "batch": b, "heads": h}
                try:
                    row |= _attention_times(backend, (b, h, s, d), dev, sz)
                except RuntimeError as e:  # a backend that cannot run here is a finding, not a crash
                    row["error"] = _error(e)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def hbm_bandwidth(dev: torch.device, gib: float) -> float:
    """GB/s of a device-to-device copy, counting bytes read and written."""
    n = int(gib * 2**30 / 4)
    src, dst = torch.empty(n, device=dev), torch.empty(n, device=dev)
    sec = _time(lambda: dst.copy_(src), 2, 5)
    return 2 * n * 4 / sec / 1e9


def train_runs(sz: Sizes) -> list[dict]:
    """World-1 measured steps (nccl on GPU, gloo on CPU) of each (micro-batch, recompute) setting."""
    from workers.parallel import parallelize
    from workers.parallel.mesh import backend, init_distributed, shutdown
    from workers.train_step import build_optimizer, train_step

    init_distributed(0, 1, 29512)
    out = []
    try:
        for mbs, recompute in sz.settings:
            _, cfg = train_layout(sz.model, sz.seq, mbs, recompute)
            row = {"micro_batch": mbs, "grad_accum": cfg.grad_accum, "recompute": recompute, "backend": backend()}
            try:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                par = parallelize(sz.model, cfg, seq_len=sz.seq, precision="bf16")
                opt = build_optimizer(par, "adam", lr=1e-4)
                times = []
                for step in range(sz.steps + 1):
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
                row["error"] = _error(e)
            print(json.dumps(row), flush=True)
            out.append(row)
    finally:
        shutdown()
    return out


def measure(dev: torch.device, sz: Sizes, smoke: bool) -> dict:
    """Every measurement of one run, raw (seconds, TFLOP/s, GB/s)."""
    result: dict = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                    "gemm_timing": f"median of {sz.reps} batches of {sz.inner} queued calls, one synchronize each",
                    "train_model": sz.model.model_dump(mode="json"), "train_seq": sz.seq}
    print(json.dumps({k: result[k] for k in ("torch", "device")}), flush=True)
    result["gemm"] = gemm_sweep(dev, sz)
    skip = fp8_unsupported(dev, smoke)
    result["fp8"] = {"skipped": skip} if skip else {"ran": "torch.nn.functional.scaled_mm, e4m3, tensorwise"}
    if not skip:
        try:
            result["gemm"] += fp8_sweep(dev, sz)
        except RuntimeError as e:  # an fp8 GEMM this torch build cannot run is a finding, not a crash
            result["fp8"] = {"skipped": f"failed: {_error(e)}"}
    result["attention"] = attention_sweep(dev, sz)
    result["hbm_copy_gbps"] = hbm_bandwidth(dev, sz.hbm_gib)
    print("hbm GB/s", result["hbm_copy_gbps"], flush=True)
    result["train"] = train_runs(sz)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="folder for gpu_check.json (default: .); with --check, optional")
    ap.add_argument("--profile", default="h100-sxm", choices=gpu_names(), help="GPU profile compared with")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, on CPU where there is no GPU")
    mode.add_argument("--quick", action="store_true", help="fewer shapes (about a third of the full run)")
    mode.add_argument("--check", metavar="PROFILE", choices=gpu_names(),
                      help="compare PROFILE with stored figures; no measurement")
    ap.add_argument("--stored", type=Path, default=DOCS / "gpu_check_h100.json", help="figures --check reads")
    args = ap.parse_args()
    if args.check and not args.stored.is_file():
        ap.error(f"--stored: no such file {args.stored}")
    if args.check:
        gpu = get_gpu(args.check)
        result = annotate(json.loads(args.stored.read_text()), gpu, FULL.model, FULL.seq)
        print(f"stored figures: {args.stored}")
        name = f"gpu_check_vs_{args.check}.json"
    else:
        gpu = get_gpu(args.profile)
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        sz = SMOKE if args.smoke else QUICK if args.quick else FULL
        result = annotate(measure(dev, sz, args.smoke), gpu, sz.model, sz.seq)
        result["profile"] = args.profile
        name = "gpu_check.json"
    print("\n".join(report_lines(result, gpu)), flush=True)
    out = args.out if args.out is not None else None if args.check else Path(".")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
