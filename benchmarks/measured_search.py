"""How many measured trials until the best measured layout: analytic-warm-started TPE vs TPE vs random.

The reference set (``benchmarks/tiny_cpu_reference.yaml`` on tiny-cpu.yaml's problem, 32 layouts) is
measured once (``benchmarks/measured_set.py``, cached JSON); samplers are then replayed offline against
it: a trial's value is the cached measured throughput. A trial costs one measurement only the first time
a layout is proposed (the driver's evaluation cache makes repeats free), so the figure is the number of
distinct layouts measured until the best one is among them (capped at ``--max-asks`` proposals).

- random: a random order of the reference set;
- TPE: Optuna's TPESampler over the space;
- warm: the analytic stage of a multi-fidelity study (``autotune.study.fidelity``): the analytic ranking's
  ``--top-k`` best layouts enqueued first, then TPE;
- analytic order: the whole analytic ranking enqueued (the analytic score as the prior; no sampler),
  i.e. the rank of the measured best in the analytic ranking.
Analytic scores come from the stored profile ``--profile`` when given (e.g. ``cpu`` from ``autotune
calibrate``) and from the catalog ``cpu`` profile. Median over ``--seeds`` seeds; a sampler that never
proposes the best within ``--max-asks`` proposals counts as (layouts + 1).
Usage: python benchmarks/measured_search.py [--profile cpu --storage URL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measured_set import DEFAULT_CACHE, layout_key, load_cache, reference_layouts, reference_problem  # noqa: E402

from autotune.calibration.refit import predict  # noqa: E402
from autotune.catalog import get_gpu  # noqa: E402
from autotune.search.enumerate import point_key  # noqa: E402
from autotune.search.space import load_space  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)


def trials_to_best(sampler: optuna.samplers.BaseSampler, space: Any, values: dict[str, float], best: str,
                   enqueue: list[dict[str, Any]], max_asks: int) -> int:
    """Distinct layouts measured until ``best`` is among them (``max_asks`` proposals at most)."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for params in enqueue:
        study.enqueue_trial(params)
    seen: set[str] = set()
    for _ in range(max_asks):
        trial = study.ask()
        space.sample(lambda name, choices, t=trial: t.suggest_categorical(name, list(choices)))
        key = point_key(trial.params)
        if key not in values:  # not a valid layout of the set: rejected without a measurement
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        seen.add(key)
        study.tell(trial, values[key])
        if key == best:
            return len(seen)
    return len(values) + 1


def run(profile: str | None, storage: str | None, seeds: int, top_k: int, max_asks: int,
        cache: Path) -> dict[str, Any]:
    """The figures as one JSON-ready dict."""
    spec, problem = reference_problem()
    m, t = problem.model, problem.training
    space = load_space(str(Path(__file__).resolve().parent / "tiny_cpu_reference.yaml")).specialise(
        layers=m.layers, heads=m.heads, seq_len=t.seq_len, global_batch=t.global_batch, gpu_counts=[problem.gpus])
    pairs = reference_layouts(problem)
    measured = load_cache(cache, problem)
    if any(layout_key(c) not in measured for _, c in pairs):
        raise SystemExit(f"{cache} lacks some reference layouts: run benchmarks/measured_set.py first")
    ok = [(p, c) for p, c in pairs if measured[layout_key(c)]["status"] == "ok"]
    tokens = t.global_batch * t.seq_len
    values = {point_key(p): tokens / measured[layout_key(c)]["step_time_s"] for p, c in ok}
    best = max(values, key=values.__getitem__)
    gpus = {"catalog cpu": get_gpu("cpu")}
    if profile:
        from autotune.store.profiles import load_profile

        gpus[f"profile {profile}"] = load_profile(profile, storage)
    out: dict[str, Any] = {"layouts": len(values), "best": best, "seeds": seeds, "top_k": top_k}
    rng = np.random.default_rng(0)
    keys = list(values)
    out["random"] = statistics.median(int(np.where(rng.permutation(keys) == best)[0][0]) + 1 for _ in range(seeds))
    out["tpe"] = statistics.median(trials_to_best(optuna.samplers.TPESampler(seed=s), space, values, best, [],
                                                  max_asks) for s in range(seeds))
    for name, gpu in gpus.items():
        pred = predict(m, t, gpu, problem.cluster.gpus_per_node, [c for _, c in ok])
        ranked = [p for _, p in sorted(zip(pred, [p for p, _ in ok], strict=True), key=lambda x: x[0])]
        out[f"warm ({name})"] = statistics.median(trials_to_best(
            optuna.samplers.TPESampler(seed=s), space, values, best, ranked[:top_k], max_asks) for s in range(seeds))
        out[f"analytic order ({name})"] = [point_key(p) for p in ranked].index(best) + 1
    out["speed-up vs random"] = {k: out["random"] / v for k, v in out.items() if k.startswith(("warm", "analytic"))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="stored profile NAME[@V] for the warm start")
    ap.add_argument("--storage", default=None)
    ap.add_argument("--seeds", type=int, default=21)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--max-asks", type=int, default=300)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = ap.parse_args()
    print(json.dumps(run(args.profile, args.storage, args.seeds, args.top_k, args.max_asks, args.cache), indent=2))


if __name__ == "__main__":
    main()
