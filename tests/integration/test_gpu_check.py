"""``benchmarks/gpu_check.py`` run as the script it is, on CPU: ``--smoke`` measures every family at tiny sizes
and writes the comparison; ``--check`` scores the h100-sxm profile against the stored H100 figures
(docs/gpu_check_h100.json) without a GPU. Expected numbers are worked out by hand below; no timing is asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
H100_BF16 = 989.4e12  # gpus.yaml h100-sxm: NVIDIA H100 SXM5 datasheet dense peaks, FLOP/s
H100_PEAKS = {"bf16": H100_BF16, "fp16": H100_BF16, "tf32": 494.7e12, "fp8": 1978.9e12}


def _run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_smoke_measures_every_family_on_cpu(tmp_path) -> None:
    _run("--smoke", "--profile", "h100-sxm", "--out", str(tmp_path))
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    gemm = {(r["dtype"], r["width"], r["tokens"]): r for r in out["gemm"]}
    assert len(gemm) == 16  # bf16, fp16, tf32, fp8 x widths {64, 128} x tokens {64, 256}
    # bf16, width 128, 256 tokens: eff = 0.80 / (1 + 102/128) = 0.445217; FLOPs 2*256*128*512 = 33,554,432;
    # time = FLOPs / (eff * 989.4e12) + 24.5 us = 2.45762e-5 s -> fraction of peak 0.0013800.
    assert gemm[("bf16", 128, 256)]["predicted_fraction"] == pytest.approx(0.0013800, rel=1e-3)
    # fp8, same shape: eff = 0.70 / (1 + 400/128) = 0.169697 at 1978.9e12; time = 9.9921e-8 + 24.5e-6 s
    # -> fraction 33,554,432 / 2.45999e-5 / 1978.9e12 = 0.00068926.
    assert gemm[("fp8", 128, 256)]["predicted_fraction"] == pytest.approx(0.00068926, rel=1e-3)
    for r in out["gemm"]:
        assert r["fraction_of_peak"] == pytest.approx(r["tflops"] * 1e12 / H100_PEAKS[r["dtype"]])
    # E4M3 keeps 3 mantissa bits: rounding to nearest leaves a relative error uniform within ±2^-5..±2^-4 of each
    # input, rms 0.018-0.036; a product of two such inputs sqrt(2) times that, 0.026-0.051, and a sum of many
    # products keeps the relative rms. bf16 alone (8 bits) would give ~0.003: the GEMM really ran in fp8.
    assert all(0.01 < gemm[("fp8", w, t)]["rel_error"] < 0.1 for w in (64, 128) for t in (64, 256))
    assert len(out["fp8_speedup"]) == 4

    flash = [r for r in out["attention"] if r["backend"] == "flash"]
    assert [r["seq"] for r in flash] == [128, 256]
    first = flash[0]
    assert "Flash" in first["autograd_node"] and first["kernel"] == "flash2"  # eager stack on H100: FlashAttention-2
    assert (first["batch"], first["heads"]) == (2, 2)  # 256 tokens / 128 = 2 sequences; 128 hidden / d 64 = 2 heads
    # Causal forward FLOPs 4*b*h*s^2*d/2 = 2*2*2*128^2*64 = 8,388,608; backward 2.5x.
    assert first["fwd_fraction"] == pytest.approx(8_388_608 / first["fwd_s"] / H100_BF16)
    if "bwd_fraction" in first:
        assert first["bwd_fraction"] == pytest.approx(2.5 * 8_388_608 / (first["fwd_bwd_s"] - first["fwd_s"])
                                                      / H100_BF16)
    # flash2 on h100-sxm: 0.37 * 128/(128 + 575) * (64/80) / (128/144) = 0.37 * 0.182077 * 0.9 = 0.060632
    assert first["predicted_fwd_fraction"] == pytest.approx(0.060632, rel=1e-4)
    assert first["predicted_bwd_fraction"] == pytest.approx(0.060632 * 0.33 / 0.37, rel=1e-4)
    cudnn = [r for r in out["attention"] if r["backend"] == "cudnn"]
    assert cudnn and all("error" in r for r in cudnn)  # no cuDNN attention on CPU: recorded, not a crash
    assert out["comparison"]["attention_cudnn_fwd"]["missing"].startswith("RuntimeError")

    assert out["hbm_copy_gbps"] > 0 and out["comparison"]["hbm_copy"]["n"] == 1
    assert [r["micro_batch"] for r in out["train"]] == [1, 2] and all("measured_step_s" in r for r in out["train"])
    for fam in ("gemm_bf16", "gemm_fp16", "gemm_tf32", "gemm_fp8", "attention_flash_fwd", "train_step"):
        s = out["comparison"][fam]
        assert s["n"] > 0 and s["min_ratio"] <= s["median_ratio"] <= s["max_ratio"]
        assert math.isfinite(s["rms_log_error"])


def test_check_scores_the_h100_profile_against_stored_figures(tmp_path) -> None:
    proc = _run("--check", "h100-sxm", "--out", str(tmp_path))
    out = json.loads((tmp_path / "gpu_check_vs_h100-sxm.json").read_text())
    cmp = out["comparison"]
    assert [cmp[f]["n"] for f in ("gemm_bf16", "gemm_fp16", "gemm_tf32")] == [20, 20, 20]
    for fam in ("gemm_fp8", "attention_flash_fwd", "attention_flash_bwd", "attention_cudnn_fwd"):
        assert "missing" in cmp[fam]  # the 2026 H100 run predates these families: reported, not failed
        assert any(line.startswith(fam) and "missing" in line for line in proc.stdout.splitlines())
    # HBM copy 2,981 GB/s stored vs the 3,350 GB/s datasheet: ratio 0.8899, |ln| 0.1166.
    assert cmp["hbm_copy"]["median_ratio"] == pytest.approx(2980.989 / 3350, rel=1e-4)
    assert cmp["hbm_copy"]["rms_log_error"] == pytest.approx(0.1166, abs=1e-3)
    # The h100-sxm curve was fitted to these 20 bf16 shapes (gpus.yaml: e_max 0.80, 24.5 us per GEMM, rms error
    # 0.014 of peak); the script's own fit must land there.
    fit = out["fits"]["bf16"]["fitted"]
    assert fit["gemm_eff_max"] == pytest.approx(0.80, abs=0.02)
    assert fit["gemm_latency_us"] == pytest.approx(24.5, abs=2.0)
    assert fit["rms_error"] < 0.016
    assert out["fits"]["fp8"]["fitted"]["skipped"].startswith("0 fp8 shapes")


def test_check_rejects_unknown_profile_in_one_line() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check", "h900"], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, cwd=ROOT)
    assert proc.returncode == 2
    assert "--check: invalid choice: 'h900'" in proc.stderr and "h100-sxm" in proc.stderr
