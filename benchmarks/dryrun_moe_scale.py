"""Wall time and per-rank memory of the fake-tensor dry run on DeepSeek-V3's training layout.

DeepSeek-V3's technical report (2024, §3.2): 2,048 H800 GPUs, 16-way pipeline parallelism, 64-way expert
parallelism over 8 nodes, ZeRO-1 data parallelism, no tensor parallelism. The ``deepseek-v3`` preset has 61
layers, which 16 stages cannot split evenly without uneven first/last stages, so this runs it with
``--layers`` (64 by default: 4 per stage, the first stage holding the 3 dense layers). The dry run builds
the first and the last pipeline rank's stages at their real size under fake tensors and a fake process
group of 2,048 ranks, each with 256/64 = 4 routed experts per MoE layer and multi-head latent attention.

Run: ``.venv/bin/python benchmarks/dryrun_moe_scale.py [--layers 64] [--seq-len 4096] [--global-batch 15360]``.
"""

from __future__ import annotations

import argparse
import time

from autotune.catalog import get_model
from autotune.config import derive
from autotune.spec import TrainingSpec
from workers.dryrun import GIB, dry_run


def main() -> None:
    """Dry-run the layout once and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--global-batch", type=int, default=15360, help="Sequences per step (DeepSeek-V3: 15360).")
    args = ap.parse_args()
    model = get_model("deepseek-v3").model_copy(update={"layers": args.layers})
    training = TrainingSpec(seq_len=args.seq_len, global_batch=args.global_batch)
    cfg = derive(model, training, 2048, pp=16, ep=64, zero=1)
    start = time.perf_counter()
    out = dry_run(model, training, cfg)
    wall = time.perf_counter() - start
    mem = " ".join(f"{k} {v / GIB:.2f}" for k, v in out["memory_bytes"].items())
    stages = ", ".join(f"pp rank {r}: {v / GIB:.2f}" for r, v in out["stage_totals_bytes"].items())
    print(f"deepseek-v3 ({args.layers} layers, {model.param_count() / 1e9:.1f} B params) on 2048 GPUs, pp 16, "
          f"ep 64, edp {cfg.edp}, zero 1, micro-batch 1 x {cfg.grad_accum}")
    print(f"worst stage {out['worst_stage']}: {mem} GiB (no fixed overhead); {stages} GiB")
    print(f"dry run wall time {wall:.1f} s")


if __name__ == "__main__":
    main()
