"""Fuzz the CLI with 1,000 bad inputs and count the outcomes: worked, exit 2 in one line, or other (a bug).

The five input kinds of ``tests/integration/test_fuzz_inputs.py`` (specs, model YAML, HF config.json,
search spaces, CLI flags), 200 random (not derandomised) Hypothesis examples each by default, through
``autotune.cli.main`` in-process against an empty SQLite study DB. Target: other = 0.
Usage: python benchmarks/fuzz_inputs.py [--examples 1000] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package holds the strategies

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.integration import fuzzkit as fk  # noqa: E402

ESTIMATE = ["estimate", "--gpu", "h100-sxm", "--gpus", "8", "--seq-len", "2048", "--global-batch", "16"]


def cases(tmp: Path, db: Path) -> dict[str, tuple[st.SearchStrategy, object]]:
    """Input kind -> (strategy, function from one example to the CLI arguments)."""
    url = f"sqlite:///{db}"

    def spec(text: str) -> list[str]:
        (tmp / "spec.yaml").write_text(text)
        return ["submit", str(tmp / "spec.yaml"), "--storage", url]

    def model(text: str) -> list[str]:
        (tmp / "model.yaml").write_text(text)
        return [*ESTIMATE, "--model", str(tmp / "model.yaml")]

    def hf(text: str) -> list[str]:
        (tmp / "hf").mkdir(exist_ok=True)
        (tmp / "hf" / "config.json").write_text(text)
        return [*ESTIMATE, "--model", str(tmp / "hf" / "config.json")]

    def space(text: str) -> list[str]:
        (tmp / "space.yaml").write_text(text)
        data = dict(fk.BASE_SPEC, search=dict(fk.BASE_SPEC["search"], space=str(tmp / "space.yaml")))
        return spec(json.dumps(data))

    def flags(pair: tuple[list[str], list[str]]) -> list[str]:
        est, sub = pair
        return est if sub is None else spec(json.dumps(fk.BASE_SPEC)) + sub

    both = st.one_of(st.tuples(fk.estimate_flags(), st.none()), st.tuples(st.just([]), fk.submit_flags()))
    return {"spec": (fk.specs(), spec), "model yaml": (fk.model_yamls(), model), "hf config": (fk.hf_configs(), hf),
            "space": (fk.spaces(), space), "cli flags": (both, flags)}


def _fuzzer(strategy, to_args, db: Path, n: int, tally: Counter, bugs: list[str]):
    """A Hypothesis test that runs ``n`` examples through the CLI and tallies the outcomes."""

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=["generate"])
    @given(strategy)
    def one(example) -> None:
        outcome = fk.run(to_args(example), db)
        tally[outcome.split(":")[0]] += 1
        if outcome.startswith("other"):
            bugs.append(outcome)

    return one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=None, help="Hypothesis seed [default: random].")
    args = ap.parse_args()
    counts: dict[str, Counter] = {}
    bugs: list[str] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        db = fk.prepare(tmp)
        per_kind = args.examples // 5
        for kind, (strategy, to_args) in cases(tmp, db).items():
            one = _fuzzer(strategy, to_args, db, per_kind, counts.setdefault(kind, Counter()), bugs)
            (seed(args.seed)(one) if args.seed is not None else one)()
    wall = time.perf_counter() - start
    total = sum((c for c in counts.values()), Counter())
    print(f"{'input':<12} {'ok':>6} {'exit 2':>7} {'other':>6}")
    for kind, c in counts.items():
        print(f"{kind:<12} {c['ok']:>6} {c['exit2']:>7} {c['other']:>6}")
    print(f"{'total':<12} {total['ok']:>6} {total['exit2']:>7} {total['other']:>6}   ({wall:.1f} s, target other = 0)")
    for b in sorted({b.split(" for [")[0] for b in bugs}):
        print(b[:300])
    n = sum(total.values())
    print(f"RESULT fuzz_examples={n} fuzz_ok={total['ok']} fuzz_exit2={total['exit2']} fuzz_other={total['other']}")


if __name__ == "__main__":
    main()
