"""Load on the service: 32 concurrent clients on loopback for 60 s, mixing reads with 8 submitted analytic studies.

Starts ``autotune serve`` on 127.0.0.1 (a free port, a fresh SQLite file unless ``--storage`` names
another database, one token, ``--max-concurrent-studies`` and ``--max-studies-per-token`` = the number
of studies). Each client is an ``httpx.AsyncClient`` running a bounded loop (at most ``--max-requests``
requests, and none started after ``--duration-s``): the first ``--studies`` clients each submit the
quickstart spec under its own name first; then every client reads at random — the studies list, one
study's state, the best layout of a completed study, a page of its evaluations, health. A response
other than 2xx is an error. After the load the script waits (bounded) for every submitted study to end
and checks in storage that each completed exactly once: as many evaluation rows as the study's budget,
no trial number twice, no layout twice, and the same count for every study (one spec, one space).
Prints requests/s, p50/p99 latency, errors by endpoint, then a ``RESULT`` line.
Run: ``python benchmarks/service_load.py [--clients 32] [--duration-s 60] [--studies 8] [--storage URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package holds the server harness

from autotune.store.storage import Storage  # noqa: E402
from tests.integration import servicekit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "examples" / "quickstart.yaml"
ACTIVE = ("queued", "running")
READS = ("list", "state", "best", "evaluations", "health")
WEIGHTS = (3, 4, 2, 3, 1)
"""Relative frequency of each read (the list and the state of a study are what the page polls most)."""
END_TIMEOUT_S = 600.0


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) by the nearest rank: the ceil(q·n)-th smallest value."""
    ranked = sorted(values)
    return ranked[max(0, math.ceil(q * len(ranked)) - 1)]


class Load:
    """The shared record of every request: latency and outcome per endpoint."""

    def __init__(self, base: str, token: str, names: list[str], deadline: float, max_requests: int) -> None:
        self.base, self.names, self.deadline, self.max_requests = base, names, deadline, max_requests
        self.headers = {"Authorization": f"Bearer {token}"}
        self.latencies: dict[str, list[float]] = {}
        self.calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.submitted: list[str] = []
        self.completed: set[str] = set()

    async def call(self, client: httpx.AsyncClient, kind: str, method: str, path: str, **kw) -> httpx.Response | None:
        start = time.perf_counter()
        try:
            r = await client.request(method, path, **kw)
        except httpx.HTTPError as e:
            self.errors[f"{kind}: {type(e).__name__}"] += 1
            return None
        self.latencies.setdefault(kind, []).append(time.perf_counter() - start)
        self.calls[kind] += 1
        if not r.is_success:
            self.errors[f"{kind}: HTTP {r.status_code} {r.text[:120]}"] += 1
            return None
        return r

    async def read(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        kind = rng.choices(READS, WEIGHTS)[0]
        if kind in ("state", "evaluations") and not self.submitted or kind == "best" and not self.completed:
            kind = "list"
        if kind == "list":
            r = await self.call(client, kind, "GET", "/api/v1/studies")
            if r is not None:
                self.completed |= {s["name"] for s in r.json()["studies"]
                                   if s["name"] in self.names and s["state"] == "completed"}
        elif kind == "state":
            await self.call(client, kind, "GET", f"/api/v1/studies/{rng.choice(self.submitted)}")
        elif kind == "best":
            await self.call(client, kind, "GET", f"/api/v1/studies/{rng.choice(sorted(self.completed))}/best")
        elif kind == "evaluations":
            await self.call(client, kind, "GET", f"/api/v1/studies/{rng.choice(self.submitted)}/evaluations",
                            params={"offset": rng.randrange(0, 3000, 50), "limit": 50})
        else:
            await self.call(client, kind, "GET", "/api/v1/health")

    async def client(self, index: int, spec: dict | None) -> None:
        rng = random.Random(index)
        async with httpx.AsyncClient(base_url=self.base, headers=self.headers, timeout=60) as client:
            if spec is not None:
                r = await self.call(client, "submit", "POST", "/api/v1/studies", content=yaml.safe_dump(spec),
                                    headers={"Content-Type": "application/yaml"})
                if r is not None:
                    self.submitted.append(spec["name"])
            for _ in range(self.max_requests):
                if time.monotonic() >= self.deadline:
                    return
                await self.read(client, rng)


async def wait_ended(base: str, token: str, names: list[str]) -> dict[str, dict]:
    """Every named study's final state, polling until none is queued or running (bounded)."""
    deadline = time.monotonic() + END_TIMEOUT_S
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        while True:
            states = {n: (await client.get(f"/api/v1/studies/{n}")).json() for n in names}
            if all(s["state"] not in ACTIVE for s in states.values()) or time.monotonic() > deadline:
                return states
            await asyncio.sleep(1.0)


def exactly_once(storage: str, states: dict[str, dict]) -> dict[str, str]:
    """Per study, '' when it completed exactly once, else what is wrong (from storage, not the API)."""
    store = Storage(storage, create=False)
    counts = {}
    problems = {}
    for name, state in states.items():
        rows = store.evaluations(name)
        counts[name] = len(rows)
        trials = Counter(r.trial for r in rows)
        layouts = Counter(repr(sorted(r.layout.items())) for r in rows)
        wrong = []
        if state["state"] != "completed":
            wrong.append(f"state {state['state']} ({state.get('error')})")
        if state.get("budget") is not None and len(rows) != state["budget"]:
            wrong.append(f"{len(rows)} rows for a budget of {state['budget']}")
        if max(trials.values(), default=0) > 1:
            wrong.append(f"{sum(n - 1 for n in trials.values() if n > 1)} duplicated trial numbers")
        if max(layouts.values(), default=0) > 1:
            wrong.append(f"{sum(n - 1 for n in layouts.values() if n > 1)} duplicated layouts")
        problems[name] = "; ".join(wrong)
    if len(set(counts.values())) > 1:
        for name in counts:
            problems[name] = "; ".join(p for p in (problems[name], f"row counts differ: {counts}") if p)
    store.close()
    for name, n in counts.items():
        print(f"  {name}: {states[name]['state']}, {n:,} evaluation rows, budget {states[name].get('budget')}"
              f"{'' if not problems[name] else '  <- ' + problems[name]}")
    return problems


async def main_async(args: argparse.Namespace, base: str, token: str, storage: str) -> None:
    template = yaml.safe_load(QUICKSTART.read_text())
    names = [f"load-{i}" for i in range(args.studies)]
    deadline = time.monotonic() + args.duration_s
    load = Load(base, token, names, deadline, args.max_requests)
    start = time.monotonic()
    await asyncio.gather(*(load.client(i, dict(template, name=names[i]) if i < args.studies else None)
                           for i in range(args.clients)))
    wall = time.monotonic() - start
    total = sum(load.calls.values())
    every = [x for values in load.latencies.values() for x in values]
    p50, p99 = percentile(every, 0.50) * 1e3, percentile(every, 0.99) * 1e3
    errors = sum(load.errors.values())
    print(f"{args.clients} clients, {wall:.1f} s: {total:,} requests, {total / wall:,.1f} requests/s, "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, {errors} errors")
    for kind, values in sorted(load.latencies.items()):
        print(f"  {kind:12s} {len(values):6,} requests  p50 {percentile(values, 0.5) * 1e3:8.1f} ms  "
              f"p99 {percentile(values, 0.99) * 1e3:8.1f} ms")
    for what, n in load.errors.most_common(10):
        print(f"  error x{n}: {what}")
    states = await wait_ended(base, token, names)
    print(f"submitted {len(load.submitted)} of {args.studies} studies; final states from the API, rows from storage:")
    problems = exactly_once(storage, states)
    exact = sum(1 for p in problems.values() if not p)
    print(f"RESULT requests_per_s={total / wall:.1f} p50_ms={p50:.1f} p99_ms={p99:.1f} errors={errors} "
          f"requests={total} studies={args.studies} studies_exact={exact} studies_wrong={args.studies - exact}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration-s", type=float, default=60.0)
    ap.add_argument("--studies", type=int, default=8, help="analytic studies submitted (one each by the first clients)")
    ap.add_argument("--max-requests", type=int, default=100_000, help="per client: the loop's bound")
    ap.add_argument("--storage", default=None, help="SQLAlchemy URL [default: a fresh SQLite file]")
    args = ap.parse_args()
    if not 0 < args.studies <= args.clients:
        ap.error(f"--studies: {args.studies} must be between 1 and --clients ({args.clients})")
    flags = ["--max-concurrent-studies", str(args.studies), "--max-studies-per-token", str(args.studies)]
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        storage = args.storage or f"sqlite:///{tmp}/service.db"
        server = servicekit.start(Path(tmp), storage, *flags, env={"AUTOTUNE_TOKENS": token})
        try:
            asyncio.run(main_async(args, server.url, token, storage))
        finally:
            servicekit.kill(server)


if __name__ == "__main__":
    main()
