"""How long ``autotune submit`` + ``autotune best`` take to answer Galvatron's question, end to end.

The question: Llama-2-7B, sequence 2048, global batch 16, 8 x A100-80GB (one node) — which layout is
fastest? hetu-galvatron 2.4.0's search answered it in :data:`GALVATRON_S` seconds on this 2-core machine
(8 GPUs, 80 GB, one global batch per run; the figure the study-engine issue measured). Each case runs the
CLI in fresh processes, as a user would, on a new SQLite file: ``submit`` (the analytic stage: every layout
of the space scored and stored) then ``best --json``; the wall time covers both, interpreter start-up
included. Cases: the ``megatron`` and ``fsdp`` spaces with one global batch (target <= 3.5 s, >= 100x
Galvatron), the same with four global batch sizes in one study (target <= 5 s), and the quickstart example.
Usage: python benchmarks/search_time.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import yaml

GALVATRON_S = 352.0
"""hetu-galvatron 2.4.0 search time for the question above on this machine (8 GPUs, 80 GB, one batch)."""
QUESTION = {"model": "llama2-7b", "cluster": {"gpu": "a100-80gb", "gpus_per_node": 8, "nodes": 1},
            "training": {"seq_len": 2048, "global_batch": 16, "precision": "bf16"}, "objective": "throughput"}
BATCHES = [16, 64, 256, 1024]


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "autotune", *args], capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"autotune {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def _case(spec: dict, tmp: Path, tag: str) -> dict:
    path = tmp / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp / tag}.db"
    start = time.perf_counter()
    _cli("submit", str(path), "--storage", url, "--quiet")
    best = json.loads(_cli("best", spec["name"], "--storage", url, "--json"))
    wall = time.perf_counter() - start
    return {"wall_s": wall, "layouts": best["evaluations"], "best": best}


def _layout(cfg: dict) -> str:
    keys = ("tp", "pp", "dp", "cp", "zero", "micro_batch", "recompute")
    return " ".join(f"{k}={cfg[k]}" for k in keys if k in cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="Runs per case; the median wall time is reported.")
    args = ap.parse_args()
    quick = yaml.safe_load(resources.files("search_spaces").joinpath("examples/quickstart.yaml").read_text())
    cases = {f"{space}": QUESTION | {"name": f"galvatron-{space}", "search": {"space": space}}
             for space in ("megatron", "fsdp")}
    cases |= {f"{space}-4-batches": QUESTION | {
        "name": f"galvatron-{space}-batches", "search": {"space": space},
        "training": QUESTION["training"] | {"global_batch": BATCHES}} for space in ("megatron", "fsdp")}
    cases["quickstart"] = quick | {"search": {k: v for k, v in quick["search"].items() if k != "sampler"}}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tag, spec in cases.items():
            runs = [_case(spec, Path(tmp), f"{tag}-{i}") for i in range(args.repeat)]
            results[tag] = runs[0] | {"wall_s": statistics.median(r["wall_s"] for r in runs)}
    print(f"| case | layouts scored | wall s (submit + best, median of {args.repeat}) | Galvatron 352 s / wall | "
          "best layout | tokens/s |")
    print("|---|---|---|---|---|---|")
    for tag, r in results.items():
        b = r["best"]
        ratio = f"{GALVATRON_S / r['wall_s']:.0f}x" if "batches" not in tag and tag != "quickstart" else "-"
        print(f"| {tag} | {r['layouts']:,} | {r['wall_s']:.2f} | {ratio} | {_layout(b['config'])} | "
              f"{b['metrics']['tokens_per_s']:,.0f} |")
        if "by_global_batch" in b:
            for batch, e in b["by_global_batch"].items():
                tps = e["metrics"]["tokens_per_s"]
                print(f"|   global batch {batch} | | | | {_layout(e['config'])} | {tps:,.0f} |")
    one = max(results[t]["wall_s"] for t in ("megatron", "fsdp"))
    four = max(results[t]["wall_s"] for t in ("megatron-4-batches", "fsdp-4-batches"))
    print(f"RESULT search_wall_s_max={one:.2f} speedup_min={GALVATRON_S / one:.0f} "
          f"batches_wall_s_max={four:.2f} quickstart_wall_s={results['quickstart']['wall_s']:.2f}")


if __name__ == "__main__":
    main()
