"""Run a function on ``world`` local ranks (one spawned process each) in one process group.

Each rank joins the group on a free port (gloo on CPU, nccl on GPUs), runs ``fn(rank, *args)``,
passes a barrier and destroys the group. The parent collects the return values; when a rank raises,
dies or the deadline passes, every rank is killed and :class:`RankFailure` carries the reason.
"""

from __future__ import annotations

import contextlib
import pickle
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

from autotune.errors import AutotuneError

__all__ = ["RankFailure", "free_port", "run_ranks"]


class RankFailure(AutotuneError):
    """A rank raised, died or timed out; the message holds its traceback or exit code."""


def free_port() -> int:
    """A TCP port that is free on this host right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(
    rank: int,
    world: int,
    port: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    results: Any,
    timeout_s: float,
) -> None:
    from workers.parallel.mesh import init_distributed, shutdown

    try:
        init_distributed(rank, world, port, timeout_s=timeout_s)
        value = fn(rank, *args)
        shutdown()
        results.put((rank, True, pickle.dumps(value)))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
        raise


def run_ranks(
    fn: Callable[..., Any], world: int, args: tuple[Any, ...] = (), *, timeout_s: float = 300
) -> list[Any]:
    """``[fn(0, *args), …, fn(world - 1, *args)]`` computed by ``world`` ranks; ``fn`` must be picklable
    (module level). Collectives time out after ``timeout_s``, and so does the whole run."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(r, world, port, fn, args, results, timeout_s), daemon=True)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    values: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < world:
            try:
                rank, ok, value = results.get(timeout=1.0)
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode is not None and r not in values]
                if dead:
                    raise RankFailure(f"rank {dead[0]} exited with code {procs[dead[0]].exitcode}") from None
                if time.monotonic() > deadline:
                    raise RankFailure(
                        f"ranks {sorted(set(range(world)) - set(values))} timed out after {timeout_s:.0f}s"
                    ) from None
                continue
            if not ok:
                raise RankFailure(f"rank {rank} failed:\n{value}")
            values[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=10 if len(values) == world else 0)
            if p.is_alive():
                p.kill()
                p.join()
        with contextlib.suppress(Exception):
            results.close()
    return [values[r] for r in range(world)]
