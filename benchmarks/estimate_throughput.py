"""Analytic cost-model throughput: layouts scored per second, scalar loop against numpy arrays.

Builds a space of valid layouts (tp, pp, cp, vpp, zero, micro-batch, recompute, sequence parallel,
TP overlap) for several models and GPU counts straight as numpy arrays, keeping the combinations that
pass ParallelConfig's divisibility rules, then times memory_breakdown + step_time on the whole space
(vectorised) and on a sample through the scalar path. Run: ``.venv/bin/python benchmarks/estimate_throughput.py``.
"""

from __future__ import annotations

import time

import numpy as np

from autotune.catalog import get_gpu, get_model
from autotune.costmodel.layout import FIELDS
from autotune.costmodel.memory import memory_breakdown
from autotune.costmodel.time import step_time
from autotune.spec import TrainingSpec

GRID = {
    "tp": [1, 2, 4, 8, 16], "pp": [1, 2, 4, 8, 16], "cp": [1, 2, 4], "vpp": [1, 2, 4], "zero": [0, 1, 2, 3],
    "micro_batch": [1, 2, 4, 8], "recompute": [0, 1, 2], "sequence_parallel": [0, 1], "tp_comm_overlap": [0, 1],
}
CASES = [("gpt3-7.5b", 64), ("gpt3-7.5b", 512), ("llama3-8b", 64), ("llama3-8b", 512), ("llama3-70b", 256),
         ("llama3-70b", 1024), ("gpt3-175b", 1024), ("gpt3-175b", 2048)]
SEQ, GBS = 4096, 2048


def valid_space(model, gpus: int) -> dict[str, np.ndarray]:
    """All valid layouts of GRID for ``model`` on ``gpus`` GPUs, as int64 arrays keyed by FIELDS."""
    mesh = np.meshgrid(*(np.array(v, dtype=np.int64) for v in GRID.values()), indexing="ij")
    L = {k: m.ravel() for k, m in zip(GRID, mesh, strict=True)}
    tp, pp, cp, vpp, mb, sp = L["tp"], L["pp"], L["cp"], L["vpp"], L["micro_batch"], L["sequence_parallel"]
    kv = model.n_kv_heads
    ok = (gpus % (tp * pp * cp) == 0) & (model.heads % tp == 0) & ((kv % tp == 0) | (tp % kv == 0))
    ok &= (model.layers % (pp * vpp) == 0) & ((vpp == 1) | (pp > 1)) & (SEQ % cp == 0)
    ok &= (sp == 0) | ((tp > 1) & ((SEQ // cp) % tp == 0))
    ok &= (L["tp_comm_overlap"] == 0) | (tp > 1)
    dp = gpus // (tp * pp * cp)
    ok &= GBS % (mb * np.maximum(dp, 1)) == 0
    L = {k: v[ok] for k, v in L.items()}
    L["dp"] = dp[ok]
    L["grad_accum"] = GBS // (L["micro_batch"] * L["dp"])
    L["dp_shard"] = np.where(L["zero"] >= 1, L["dp"], 1)
    n = len(L["tp"])
    for k, default in (("recompute_layers", 0), ("pp_first_layers", 0), ("pp_last_layers", 0), ("pp_schedule", 0),
                       ("overlap_grad_reduce", 1),
                       ("overlap_param_gather", 1), ("ep", 1), ("etp", 1), ("moe_a2a_overlap", 0)):
        L[k] = np.full(n, default, dtype=np.int64)
    return {k: L[k] for k in FIELDS}


def main() -> None:
    gpu, training = get_gpu("h100-sxm"), TrainingSpec(seq_len=SEQ, global_batch=GBS)
    spaces = [(get_model(name), gpus, valid_space(get_model(name), gpus)) for name, gpus in CASES]
    total = sum(len(L["tp"]) for _, _, L in spaces)
    print(f"space: {total:,} valid layouts over {len(CASES)} (model, GPUs) cases")

    start = time.perf_counter()
    best = []
    for model, _, L in spaces:
        mem = memory_breakdown(model, training, gpu, L)
        tm = step_time(model, training, gpu, 8, L)
        best.append(np.where(mem["fits"], tm["tokens_per_s"], 0.0).max())
    vec = time.perf_counter() - start
    print(f"vectorised: {total / vec:,.0f} layouts/s ({vec:.3f} s for memory_breakdown + step_time)")

    rng = np.random.default_rng(0)
    sample = []
    for model, _, L in spaces:
        for i in rng.choice(len(L["tp"]), size=250, replace=False):
            sample.append((model, {k: int(v[i]) for k, v in L.items()}))
    start = time.perf_counter()
    for model, layout in sample:
        memory_breakdown(model, training, gpu, layout)
        step_time(model, training, gpu, 8, layout)
    scalar = time.perf_counter() - start
    print(f"scalar:     {len(sample) / scalar:,.0f} layouts/s ({len(sample):,} layouts in {scalar:.3f} s)")
    print(f"speed-up:   {(total / vec) / (len(sample) / scalar):,.0f}x")
    for (name, gpus), tps in zip(CASES, best, strict=True):
        print(f"  best fitting layout of {name} on {gpus} GPUs: {tps:,.0f} tokens/s")
    print(f"RESULT layouts={total} vectorised_per_s={total / vec:.0f} scalar_per_s={len(sample) / scalar:.0f}")


if __name__ == "__main__":
    main()
