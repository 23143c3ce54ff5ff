"""Measured step times of the tiny model's reference layouts on this machine, cached in a JSON file.

Each layout of ``benchmarks/tiny_cpu_reference.yaml`` (or any list of layouts) is measured once with
:func:`workers.measure.measure_trial` (4 gloo ranks, ``warmup_steps`` 2, ``steps`` 8) and stored under
its layout key; later runs read the cache. The step time kept is the *fastest* timed step: on a shared
2-core machine other processes only ever add time, so the minimum is the least noisy estimate of what
the layout itself costs (the median is in ``median_s`` too).
Usage: python benchmarks/measured_set.py [--cache FILE] [--limit N]   (measures what is missing)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from autotune.config import ParallelConfig, derive
from autotune.search.enumerate import score_space
from autotune.search.space import load_space
from autotune.spec import StudySpec, load_spec
from autotune.study.resolve import Problem, resolve

__all__ = ["HERE", "SPEC", "REFERENCE_SPACE", "DEFAULT_CACHE", "reference_problem", "reference_layouts",
           "layout_key", "load_cache", "measure_layouts", "config_of", "problem_key"]

HERE = Path(__file__).resolve().parent
SPEC = HERE.parent / "search_spaces" / "examples" / "tiny-cpu.yaml"
REFERENCE_SPACE = HERE / "tiny_cpu_reference.yaml"
DEFAULT_CACHE = HERE / "tiny_cpu_measured.json"
MEASURE_OPTIONS = {"warmup_steps": 2, "steps": 8, "seed": 0}


def reference_problem() -> tuple[StudySpec, Problem]:
    """tiny-cpu.yaml and its resolved problem (tiny model, 4 CPU ranks)."""
    spec = load_spec(SPEC)
    return spec, resolve(spec)


def reference_layouts(problem: Problem, space_ref: str | Path = REFERENCE_SPACE) -> list[tuple[dict, ParallelConfig]]:
    """(space point, layout) of every valid point of the reference space, in enumeration order."""
    m, t = problem.model, problem.training
    space = load_space(str(space_ref)).specialise(layers=m.layers, heads=m.heads, seq_len=t.seq_len,
                                                  global_batch=t.global_batch, gpu_counts=[problem.gpus])
    scored = score_space(problem, space)
    return [(p, c) for p, c in zip(scored.points, scored.configs, strict=True) if c is not None]


def layout_key(cfg: ParallelConfig) -> str:
    """The cache key of a layout."""
    return json.dumps(cfg.to_dict(), sort_keys=True)


def _derive_kwargs(layout: dict[str, Any]) -> dict[str, Any]:
    drop = {"dp", "grad_accum", "nodes"}
    return {k: v for k, v in layout.items() if k not in drop}


def problem_key(problem: Problem) -> dict[str, Any]:
    """What a measurement depends on besides the layout: model, training, world size and step counts."""
    return {"model": problem.model.model_dump(mode="json"), "training": problem.training.model_dump(mode="json"),
            "gpus": problem.gpus, "options": MEASURE_OPTIONS}


def load_cache(path: Path, problem: Problem) -> dict[str, dict[str, Any]]:
    """The cached measurements of ``problem`` (layout key -> record); empty when there are none, or when
    the cache was measured for another problem (tiny-cpu.yaml changed)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data["layouts"] if data.get("problem") == problem_key(problem) else {}


def measure_layouts(problem: Problem, configs: list[ParallelConfig], cache: Path = DEFAULT_CACHE,
                    *, log: bool = True) -> dict[str, dict[str, Any]]:
    """Measure every layout not in ``cache`` (writing it after each), return key -> record for ``configs``."""
    from autotune.evaluation import EvalTask
    from workers.measure import measure_trial

    data = load_cache(cache, problem)
    for i, cfg in enumerate(configs):
        key = layout_key(cfg)
        if key in data:
            continue
        task = EvalTask(model=problem.model, training=problem.training, gpu=problem.gpu,
                        gpus_per_node=problem.cluster.gpus_per_node, config=cfg, options=dict(MEASURE_OPTIONS))
        t0 = time.perf_counter()
        res = measure_trial(task)
        times = res.metrics.get("step_times_s") or []
        data[key] = {"layout": cfg.to_dict(), "status": res.status, "reason": res.reason,
                     "step_time_s": min(times) if times else None, "median_s": res.metrics.get("step_time_s"),
                     "step_times_s": times, "wall_s": time.perf_counter() - t0}
        cache.write_text(json.dumps({"problem": problem_key(problem), "layouts": data}, indent=1, sort_keys=True))
        if log:
            print(f"[{i + 1}/{len(configs)}] {res.status} {data[key]['step_time_s']} {key}", flush=True)
    return {layout_key(c): data[layout_key(c)] for c in configs}


def config_of(problem: Problem, layout: dict[str, Any]) -> ParallelConfig:
    """The validated layout of a stored layout dict."""
    return derive(problem.model, problem.training, problem.gpus, **_derive_kwargs(layout))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    _, problem = reference_problem()
    configs = [c for _, c in reference_layouts(problem)][: args.limit]
    rows = measure_layouts(problem, configs, args.cache)
    ok = sum(r["status"] == "ok" for r in rows.values())
    print(f"{len(rows)} layouts, {ok} ok -> {args.cache}")


if __name__ == "__main__":
    main()
