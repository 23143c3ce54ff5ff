"""kill -9 a 200-trial study at 20 random points, resume it each time, and count what survived.

Each round runs ``autotune submit`` (first) or ``autotune resume`` as a subprocess in its own process
group and SIGKILLs the group at a random point (``tests/integration/crashkit.py``); a final resume
runs to the budget. Prints the evaluations before each kill, the trials it left RUNNING, and the
invariants checked at the end: completed trials lost or changed, duplicated trials, trials left
RUNNING that were not retried, trials over or under the budget, orphan processes. Target: 0 of each.
By default the drivers join one local Ray started here (like a cluster that outlives a driver);
``--own-ray`` lets each start and lose its own local Ray (slower: a Ray start per round).
Usage: python benchmarks/crash_resume.py [--kills 20] [--seed 0] [--own-ray]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package holds the harness

from tests.integration.crashkit import check, run_chain  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--own-ray", action="store_true", help="each driver starts its own local Ray")
    args = ap.parse_args()
    address = None
    if not args.own_ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        address = ray.get_runtime_context().gcs_address
    with tempfile.TemporaryDirectory() as d:
        chain = run_chain(Path(d), args.kills, args.seed, address)
        bad = check(f"sqlite:///{Path(d) / 'crash.db'}", chain)
    print(f"{'kill':>4} {'evaluated':>9} {'left RUNNING':>12}")
    for i, snap in enumerate(chain.snapshots):
        print(f"{i + 1:>4} {len(snap.rows):>9} {len(snap.running):>12}")
    running = set().union(*(s.running for s in chain.snapshots)) if chain.snapshots else set()
    print(f"{len(chain.snapshots)} kills in {chain.wall_s:.0f} s; {len(running)} trials left RUNNING, all retried: "
          f"{not any('not retried' in b for b in bad)}; orphan processes {chain.orphans}")
    print("violations:", "none" if not bad else "")
    for b in bad:
        print("  " + b)
    print(f"RESULT crash_kills={len(chain.snapshots)} crash_violations={len(bad)} crash_left_running={len(running)} "
          f"crash_orphans={chain.orphans} crash_wall_s={chain.wall_s:.0f}")


if __name__ == "__main__":
    main()
