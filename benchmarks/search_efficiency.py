"""How many evaluations each sampler needs to come within 1 % of the exhaustive optimum.

For each large example study: the optimum from scoring the whole space with the vectorised cost model,
then TPE / Thompson / GP / random proposing layouts exactly as the driver does (invalid -> pruned, over
memory -> told with a positive memory constraint and the memory as a user attribute, else the tokens/s),
median over seeds. Prints a table.
Usage: python benchmarks/search_efficiency.py [--seeds 10] [--cap-fraction 0.1] [--gp-cap 300]
       [--random-seeds N] [--random-cap-fraction 1.0] [--samplers tpe,thompson,gp,random]
"""

from __future__ import annotations

import argparse
import statistics
import time
from importlib import resources

import numpy as np
import optuna

from autotune.search.enumerate import point_key, score_space
from autotune.search.samplers import CONSTRAINT, make_sampler
from autotune.search.space import load_space
from autotune.search.thompson import MEMORY_ATTR
from autotune.spec import load_spec
from autotune.study.resolve import resolve

STUDIES = ("llama3-70b-64xh100", "gpt3-175b-1024xa100", "llama3-405b-8192xh100")


def evals_to_target(space, table, target: float, sampler: str, seed: int, cap: int) -> int | None:
    """Trials until one within 1 % of ``target`` (None if not within ``cap``)."""
    study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler, seed, False, space))
    for n in range(1, cap + 1):
        trial = study.ask()
        params = space.sample(lambda name, choices, t=trial: t.suggest_categorical(name, list(choices)))
        del params
        tps, fits, mem, cap_gib = table.get(point_key(trial.params), (None, False, 0.0, 0.0))
        if tps is None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        trial.set_constraint(CONSTRAINT, mem - cap_gib)
        trial.set_user_attr(MEMORY_ATTR, mem)
        study.tell(trial, tps)
        if fits and tps >= 0.99 * target:
            return n
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--cap-fraction", type=float, default=0.1, help="give up after this share of the space")
    ap.add_argument("--gp-cap", type=int, default=300, help="GP trials cap (GP cost grows as n^3)")
    ap.add_argument("--random-seeds", type=int, default=None,
                    help="seeds for random [default: --seeds]; its median over few seeds is very noisy")
    ap.add_argument("--random-cap-fraction", type=float, default=1.0,
                    help="random's cap (cheap per trial, so by default the whole space: a measured median)")
    ap.add_argument("--samplers", default="tpe,thompson,gp,random")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for name in STUDIES:
        path = resources.files("search_spaces").joinpath(f"examples/{name}.yaml")
        spec = load_spec(str(path))
        problem = resolve(spec)
        m, t = problem.model, problem.training
        space = load_space(spec.search.space).specialise(layers=m.layers, heads=m.heads, seq_len=t.seq_len,
                                                         global_batch=t.global_batch, gpu_counts=[problem.gpus])
        start = time.perf_counter()
        scored = score_space(problem, space)
        enum_s = time.perf_counter() - start
        best = scored.best()
        target = float(scored.tokens_per_s[best])
        capacity = problem.gpu.memory_gib * problem.gpu.usable_fraction
        table = {point_key(p): (float(scored.tokens_per_s[i]), bool(scored.fits[i]), float(scored.memory_gib[i]),
                                capacity)
                 for i, p in enumerate(scored.points) if scored.configs[i] is not None}
        n_space = len(scored.points)
        print(f"{name}: {n_space} points ({len(table)} valid, {int(scored.fits.sum())} fit), enumerated in "
              f"{enum_s:.2f} s; optimum {target:,.0f} tokens/s", flush=True)
        for sampler in args.samplers.split(","):
            fraction = args.random_cap_fraction if sampler == "random" else args.cap_fraction
            cap = args.gp_cap if sampler == "gp" else max(1, int(fraction * n_space))
            counts = []
            seeds = (args.random_seeds or args.seeds) if sampler == "random" else args.seeds
            for seed in range(seeds):
                n = evals_to_target(space, table, target, sampler, seed, cap)
                counts.append(n if n is not None else np.inf)
            med = statistics.median(counts)
            rows.append((name, sampler, n_space, med, med / n_space, sum(np.isinf(counts))))
            print(f"  {sampler:6s} median {med} evaluations ({med / n_space:.2%} of the space), "
                  f"{sum(np.isinf(counts))}/{seeds} seeds hit the cap of {cap}", flush=True)
    print("\n| study | sampler | space | median evals to 1 % | share of space | seeds capped |")
    print("|---|---|---|---|---|---|")
    for name, sampler, n, med, share, capped in rows:
        print(f"| {name} | {sampler} | {n} | {med} | {share:.2%} | {capped} |")
    for name in STUDIES:
        by = {s: med for (n, s, _, med, _, _) in rows if n == name}
        for s in by:
            if "random" in by and s != "random":
                print(f"{name}: random / {s} = {by['random'] / by[s]:.1f}x")
    best = {n: min((r[3], r[4]) for r in rows if r[0] == n and r[1] != "random") for n in STUDIES}  # evals, share
    rand = {n: r[3] for r in rows if r[1] == "random" for n in STUDIES if r[0] == n}
    print(f"RESULT best_share_max={max(b[1] for b in best.values()):.4f} "
          f"random_over_best_min={min((rand[n] / best[n][0] for n in rand), default=0):.2f}")

if __name__ == "__main__":
    main()
