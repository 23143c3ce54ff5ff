"""Measured-step time saved by pruning measured trials, against running every trial to the end.

Runs a set of tiny-model layouts (CPU ranks, gloo) to completion with
:func:`workers.measure.measure_trial`, recording every timed step, then replays the same per-step
series, in the same order, through an Optuna pruner on an in-memory study (minimise step time): each
trial reports its running median step time after every step and stops when ``should_prune()`` says
so, exactly as a driver's ``on_step`` callback would. Replaying the recorded series (rather than
running twice) makes both totals describe the same steps. What a pruner saves depends on the order
trials arrive in (a slow layout among the never-pruned start-up trials runs to the end), so besides
the measured order the series are replayed in ``--orders`` random orders (seeded) and the mean, the
worst and the best saving are printed, with how often the fastest layout still ran to the end. Also
printed: the trial wall time (start-up, warm-up and steps), of which pruning saves only the step part.
``--save FILE`` keeps the measured series as JSON; ``--load FILE`` replays them without measuring.

Run: ``.venv/bin/python benchmarks/measure_pruning.py [--steps 8] [--world 2] [--pruner median|halving]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import optuna

from autotune.catalog import get_gpu, get_model
from autotune.config import derive
from autotune.evaluation import EvalTask
from autotune.spec import TrainingSpec
from autotune.study.driver import PRUNER_STARTUP_TRIALS, PRUNER_WARMUP_STEPS
from workers.measure import measure_trial

#: name -> layout keywords at world 2 (covers DP, ZeRO-1/2/3, TP, TP+SP, PP 1F1B/interleaved/GPipe,
#: recompute, gradient accumulation); the order is the trial order, slow and fast layouts mixed.
LAYOUTS: dict[str, dict[str, object]] = {
    "dp_mb1": {"micro_batch": 1},
    "tp2_sp": {"tp": 2, "sequence_parallel": True},
    "zero3": {"zero": 3, "micro_batch": 2},
    "pp2_1f1b": {"pp": 2},
    "dp_mb4": {"micro_batch": 4},
    "zero1": {"zero": 1, "micro_batch": 2},
    "tp2_full_recompute": {"tp": 2, "recompute": "full"},
    "pp2_interleaved": {"pp": 2, "vpp": 2},
    "zero2_selective": {"zero": 2, "micro_batch": 2, "recompute": "selective"},
    "pp2_gpipe": {"pp": 2, "pp_schedule": "gpipe"},
}


def run_all(world: int, steps: int, training: TrainingSpec) -> dict[str, list[float]]:
    """Every layout to the end: name -> timed step seconds (failed layouts are reported and skipped)."""
    model, gpu = get_model("tiny"), get_gpu("cpu")
    series: dict[str, list[float]] = {}
    for name, kw in LAYOUTS.items():
        cfg = derive(model, training, world, **kw)  # type: ignore[arg-type]
        task = EvalTask(model=model, training=training, gpu=gpu, gpus_per_node=world, config=cfg,
                        options={"steps": steps, "warmup_steps": 1})
        res = measure_trial(task, on_step=lambda i, s: False)
        if not res.ok:
            print(f"  {name:20s} {res.status}: {res.reason}")
            continue
        series[name] = res.metrics["step_times_s"]
        print(f"  {name:20s} wall {res.wall_s:5.1f} s  steps " + " ".join(f"{s:.3f}" for s in series[name]))
    return series


def make_pruner(kind: str, startup: int, warmup: int) -> optuna.pruners.BasePruner:
    """MedianPruner(n_startup_trials, n_warmup_steps) or SuccessiveHalvingPruner(min_resource=warmup+1)."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup + 1, reduction_factor=2)


def replay(series: dict[str, list[float]], pruner: optuna.pruners.BasePruner) -> dict[str, int]:
    """Steps each trial runs when ``pruner`` decides after every step (running median reported)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", pruner=pruner)
    ran: dict[str, int] = {}
    for name, times in series.items():
        trial = study.ask()
        for i in range(len(times)):
            trial.report(statistics.median(times[: i + 1]), i)
            ran[name] = i + 1
            if i < len(times) - 1 and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, statistics.median(times))
    return ran


def saving(series: dict[str, list[float]], ran: dict[str, int]) -> float:
    """Fraction of the timed-step seconds that the steps not run (``ran``) account for."""
    full = sum(sum(t) for t in series.values())
    return 1.0 - sum(sum(t[: ran[n]]) for n, t in series.items()) / full


def main() -> None:
    """Measure (or load), replay, print the totals."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="Timed steps per trial (default 8).")
    ap.add_argument("--world", type=int, default=2, help="Ranks per trial (default 2).")
    ap.add_argument("--pruner", choices=["median", "halving"], default="median")
    ap.add_argument("--startup", type=int, default=PRUNER_STARTUP_TRIALS,
                    help="Trials never pruned (MedianPruner; default: the driver's).")
    ap.add_argument("--warmup", type=int, default=PRUNER_WARMUP_STEPS,
                    help="Steps before pruning may start (default: the driver's).")
    ap.add_argument("--orders", type=int, default=200, help="Random trial orders replayed (default 200).")
    ap.add_argument("--save", type=Path, help="Write the measured series to this JSON file.")
    ap.add_argument("--load", type=Path, help="Replay series from this JSON file instead of measuring.")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--global-batch", type=int, default=8)
    args = ap.parse_args()
    training = TrainingSpec(seq_len=args.seq_len, global_batch=args.global_batch, precision="fp32")
    if args.load:
        data = json.loads(args.load.read_text())
        series, wall = data["series"], data["wall_s"]
        print(f"series from {args.load}: {data['setup']}")
    else:
        setup = (f"tiny model, world {args.world}, seq {args.seq_len}, batch {args.global_batch}, "
                 f"{args.steps} timed steps per trial, {len(LAYOUTS)} layouts")
        print(setup)
        start = time.perf_counter()
        series = run_all(args.world, args.steps, training)
        wall = time.perf_counter() - start
        if args.save:
            args.save.write_text(json.dumps({"setup": setup, "wall_s": wall, "series": series}, indent=1))
    pruner = lambda: make_pruner(args.pruner, args.startup, args.warmup)  # noqa: E731
    ran = replay(series, pruner())
    full = sum(sum(t) for t in series.values())
    pruned = full * (1.0 - saving(series, ran))
    print(f"\npruner: {args.pruner} (startup {args.startup}, warm-up steps {args.warmup}), measured order")
    for name, times in series.items():
        print(f"  {name:20s} median {statistics.median(times):.3f} s  "
              f"ran {ran[name]}/{len(times)} steps{'' if ran[name] == len(times) else '  (pruned)'}")
    best = min(series, key=lambda n: statistics.median(series[n]))
    print(f"\ntimed-step seconds, every trial to the end: {full:8.2f} s")
    print(f"timed-step seconds, with pruning:           {pruned:8.2f} s")
    print(f"saved:                                      {full - pruned:8.2f} s ({100 * (1 - pruned / full):.1f} %)")
    print(f"fastest layout {best} ran to the end: {ran[best] == len(series[best])}")
    rng, names, savings, kept = random.Random(0), list(series), [], 0
    for _ in range(args.orders):
        rng.shuffle(names)
        order = {n: series[n] for n in names}
        ran = replay(order, pruner())
        savings.append(saving(order, ran))
        kept += ran[best] == len(series[best])
    print(f"{args.orders} random trial orders: saved {100 * statistics.mean(savings):.1f} % on average "
          f"(worst {100 * min(savings):.1f} %, best {100 * max(savings):.1f} %); fastest layout ran to the end "
          f"in {kept}/{args.orders}")
    print(f"trial wall time (start-up + warm-up + steps) of the full run: {wall:.1f} s; pruning saves "
          f"{full - pruned:.1f} s of it in the measured order ({100 * (full - pruned) / wall:.1f} %)")
    print(f"RESULT saved_pct={100 * (1 - pruned / full):.1f} saved_mean_pct={100 * statistics.mean(savings):.1f}")


if __name__ == "__main__":
    main()
