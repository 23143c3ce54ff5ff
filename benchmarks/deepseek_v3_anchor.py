"""The public MoE anchor: DeepSeek-V3's pre-training cost against the cost model (no parameter fitted to it).

DeepSeek-V3 technical report (DeepSeek-AI 2024, arXiv:2412.19437): Table 1 / §1, pre-training took 2,664 K H800
GPU-hours for 14.8 T tokens, **180 K GPU-hours per trillion tokens**; §3.1, 2,048 H800 GPUs, 8 per node over
NVLink, InfiniBand across nodes; §3.2, 16-way pipeline parallelism (DualPipe), 64-way expert parallelism over
8 nodes, ZeRO-1 data parallelism, no tensor parallelism; §3.3, FP8 mixed-precision training; §4.2, sequences of
4K tokens, a global batch of 15,360 sequences after the warm-up. The preset ``deepseek-v3`` omits the
multi-token-prediction module (671 B total / 37 B active parameters), and its 61 layers split 2, 4 × 14, 3 on
pp 16 (:func:`autotune.pipeline.default_split`).

Prints the model's H800 GPU-hours per trillion tokens and time breakdown for the report's layout (bf16 and
fp8, all-to-all overlap off and on, recompute none and full), then scores a small analytic search around it
(ep, pp, zero, micro-batch, recompute, overlap) and reports where the best layout that fits lands.
Run: ``.venv/bin/python benchmarks/deepseek_v3_anchor.py``.
"""

from __future__ import annotations

import itertools

from autotune.catalog import get_gpu, get_model
from autotune.config import derive
from autotune.costmodel.estimate import TIME_KEYS, estimate_many
from autotune.errors import InfeasibleConfig
from autotune.spec import ClusterSpec, TrainingSpec

#: DeepSeek-V3 report, Table 1: 2,664 K H800 GPU-hours of pre-training for 14.8 T tokens.
REPORTED_K_GPU_HOURS_PER_T = 2664.0 / 14.8
GPUS, SEQ, BATCH = 2048, 4096, 15360
MODEL, GPU = get_model("deepseek-v3"), get_gpu("h800")
CLUSTER = ClusterSpec(gpu="h800", nodes=GPUS // 8, gpus_per_node=8, reliability="off")
#: Around the report's layout (pp 16, ep 64, ZeRO-1, tp 1).
SEARCH = {"pp": [8, 16], "ep": [8, 16, 32, 64, 128], "zero": [0, 1], "micro_batch": [1, 2],
          "recompute": ["none", "selective", "full"], "moe_a2a_overlap": [False, True]}


def _training(precision: str) -> TrainingSpec:
    return TrainingSpec(seq_len=SEQ, global_batch=BATCH, precision=precision, stack="megatron-te", tokens=1e12)


def _row(label: str, est: dict) -> str:
    k_hours = est["gpu_hours"] / 1e3
    ratio = k_hours / REPORTED_K_GPU_HOURS_PER_T
    return (f"{label:<44} {k_hours:7.1f} K  x{ratio:5.2f}  step {est['step_time_s']:6.2f} s"
            f"  MFU {est['mfu']:.3f}  {est['memory_gib']['total']:6.1f} GiB {'fits' if est['fits'] else 'OOM'}")


def _breakdown(est: dict) -> str:
    parts = "  ".join(f"{k} {est['time_breakdown_s'][k]:.2f}" for k in TIME_KEYS if est['time_breakdown_s'][k])
    moe = "  ".join(f"{k} {v:.2f}" for k, v in est["moe_time_s"].items() if k != "rows_per_expert")
    rows = est["moe_time_s"]["rows_per_expert"]
    return f"    breakdown s/step: {parts}\n    MoE parts: {moe}  rows/expert {rows:.0f}"


def report_layout() -> dict:
    """The report's layout under each variant; returns the fp8 + overlap estimate."""
    print(f"DeepSeek-V3 on {GPUS} H800, seq {SEQ}, global batch {BATCH}; reported "
          f"{REPORTED_K_GPU_HOURS_PER_T:.0f} K GPU-hours per trillion tokens")
    print(f"{'layout (pp 16, ep 64, zero 1, tp 1, mb 1)':<44} GPU-h/T   vs 180K")
    variants = [(p, o, r) for p in ("bf16", "fp8") for o in (False, True) for r in ("none", "full")]
    out = {}
    for precision, overlap, recompute in variants:
        t = _training(precision)
        cfg = derive(MODEL, t, GPUS, pp=16, ep=64, zero=1, recompute=recompute, moe_a2a_overlap=overlap)
        est = estimate_many(MODEL, t, GPU, CLUSTER, [cfg])[0]
        out[(precision, overlap, recompute)] = est
        print(_row(f"{precision}, a2a overlap {'on' if overlap else 'off'}, recompute {recompute}", est))
        print(_breakdown(est))
    return out


def search() -> dict:
    """Best fitting layout of the small fp8 search; prints the top three."""
    t = _training("fp8")
    cfgs = []
    for values in itertools.product(*SEARCH.values()):
        kw = dict(zip(SEARCH, values, strict=True))
        try:
            cfgs.append(derive(MODEL, t, GPUS, **kw))
        except InfeasibleConfig:
            continue
    rows = [r for r in estimate_many(MODEL, t, GPU, CLUSTER, cfgs) if r["fits"]]
    rows.sort(key=lambda r: r["step_time_s"])
    print(f"\nsearch (fp8): {len(cfgs)} layouts, {len(rows)} fit in {GPU.memory_gib} GiB")
    for r in rows[:3]:
        c = r["config"]
        label = (f"pp {c['pp']} ep {c['ep']} zero {c['zero']} mb {c['micro_batch']} {c['recompute']}"
                 f" overlap {'on' if c['moe_a2a_overlap'] else 'off'}")
        print(_row(label, r))
        print(_breakdown(r))
    return rows[0]


def main() -> None:
    layouts = report_layout()
    best = search()
    anchor = layouts[("fp8", True, "none")]
    fitting = layouts[("fp8", True, "full")]
    ratio = anchor["gpu_hours"] / 1e3 / REPORTED_K_GPU_HOURS_PER_T
    print(f"\nRESULT reported_k={REPORTED_K_GPU_HOURS_PER_T:.1f} fp8_overlap_k={anchor['gpu_hours'] / 1e3:.1f} "
          f"fp8_overlap_ratio={ratio:.3f} "
          f"fp8_overlap_full_recompute_k={fitting['gpu_hours'] / 1e3:.1f} best_fitting_k={best['gpu_hours'] / 1e3:.1f}")


if __name__ == "__main__":
    main()
