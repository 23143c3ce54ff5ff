"""Hardware microbenchmarks for ``autotune calibrate``, run on a Ray worker's devices with torch.

A *job* is a plain dict; :func:`run_job` runs it on ``job["ranks"]`` local ranks (one process each,
:func:`workers.launch.run_ranks`: gloo on CPU, nccl on GPUs; on CPU each rank runs ``job["threads"]``
threads, the count a measured trial's rank gets) and returns rows of plain data:

- ``compute``: every rank runs the same benchmarks at once, as the ranks of a measured trial share the
  node, each call repeated for ``sustained_s`` so the ranks contend as in a training step: ``gemm``
  (tokens x width) @ (width x 4·width) over shapes and dtypes, ``attention``
  (causal ``scaled_dot_product_attention`` forward), ``copy`` (memory bandwidth, bytes read + written),
  ``elementwise`` (a layer's non-GEMM forward: 2 RMSNorms, SwiGLU gate, RoPE, 2 residual adds) and
  ``layer`` (forward + backward of one reference transformer block of ``job["model"]`` at small token
  counts: the fixed per-layer host cost). Each row keeps the median over ranks of each rank's fastest
  block of repetitions: other processes on a shared host only ever add time.
- ``comm``: for each group size n, ``all_reduce``, ``all_gather``, ``reduce_scatter`` over ranks 0..n-1
  and, for n = 2, ``p2p`` (ping-pong, half the round trip) over message sizes, while every rank keeps
  computing (see :func:`_comm`); rank 0's median call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["run_job", "DTYPE_NAMES"]

#: Row dtype name -> torch dtype attribute.
DTYPE_NAMES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _timer(reps: int, sustained: float = 0.0, group: Any = None) -> Callable[[Callable[[], Any]], float]:
    """Seconds per call of ``fn``: the fastest of ``reps`` blocks after a warm-up call and a barrier.

    With ``sustained`` > 0 a block repeats the call for about that many seconds (compute: every rank
    keeps its core share busy, as in a training step, so the figure includes the node's contention);
    else a block is one call (collectives: every rank of ``group`` must make the same calls)."""
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def run(fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        fn()
        sync()
        calls = max(1, min(1000, int(sustained / max(time.perf_counter() - t0, 1e-6)))) if sustained else 1
        dist.barrier(group=group)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            best = min(best, (time.perf_counter() - t0) / calls)
        return best

    return run


def _gemm_rows(job: dict[str, Any], dev: Any, timed: Callable[..., float]) -> list[dict[str, Any]]:
    import torch

    rows = []
    for name in job["dtypes"]:
        dt = getattr(torch, DTYPE_NAMES[name])
        for w in job["widths"]:
            for t in job["tokens"]:
                a, b = torch.randn(t, w, device=dev, dtype=dt), torch.randn(w, 4 * w, device=dev, dtype=dt)
                rows.append({"kind": "gemm", "dtype": name, "width": w, "tokens": t, "flops": 8.0 * t * w * w,
                             "seconds": timed(lambda a=a, b=b: a @ b)})
    return rows


def _elementwise(x: Any, g: Any, u: Any, freqs: Any, h: int) -> Any:
    import torch.nn.functional as F

    y = F.rms_norm(x, (h,))
    q = y.unflatten(-1, (-1, 2))
    y = (q[..., 0] * freqs[..., 0] - q[..., 1] * freqs[..., 1]).repeat_interleave(2, -1)
    x = x + y
    z = F.silu(g) * u
    return F.rms_norm(x, (h,)) + z[..., :h]


def _layer_rows(job: dict[str, Any], dev: Any, timed: Callable[..., float]) -> list[dict[str, Any]]:
    import torch

    from autotune.spec import ModelSpec
    from workers.model import TransformerBlock, rope_frequencies

    spec = ModelSpec.model_validate(job["model"])
    h, f = spec.hidden, spec.ffn
    rows = []
    for t in job["elementwise_tokens"]:
        x, g, u = torch.randn(t, h, device=dev), torch.randn(t, f, device=dev), torch.randn(t, f, device=dev)
        freqs = torch.randn(t, h // 2, 2, device=dev)
        rows.append({"kind": "elementwise", "tokens": t, "hidden": h, "ffn": f, "dtype_bytes": 4,
                     "seconds": timed(lambda x=x, g=g, u=u, fr=freqs: _elementwise(x, g, u, fr, h))})
    block = TransformerBlock(spec).to(dev)
    for s in job["layer_seq"]:
        x = torch.randn(1, s, h, device=dev, requires_grad=True)
        freqs = rope_frequencies(spec.head_dim, s).to(dev) if spec.position_embedding == "rope" else None

        def step(x: Any = x, freqs: Any = freqs) -> None:
            block(x, freqs).sum().backward()

        rows.append({"kind": "layer", "tokens": s, "seq": s, "model": job["model"], "seconds": timed(step)})
    return rows


def _compute(job: dict[str, Any], dev: Any) -> list[dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    timed = _timer(job["reps"], job.get("sustained_s", 0.02))
    rows = _gemm_rows(job, dev, timed)
    for b, heads, s, d in job["attention"]:
        q, k, v = (torch.randn(b, heads, s, d, device=dev) for _ in range(3))
        rows.append({"kind": "attention", "batch": b, "heads": heads, "seq": s, "head_dim": d,
                     "flops": 2.0 * b * heads * s * s * d, "seconds":
                     timed(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=True))})
    n = int(job["copy_bytes"] // 8)
    src, dst = torch.randn(n, device=dev), torch.empty(n, device=dev)
    rows.append({"kind": "copy", "bytes": 8.0 * n, "seconds": timed(lambda: dst.copy_(src))})
    return rows + _layer_rows(job, dev, timed)


def _busy(job: dict[str, Any], dev: Any) -> Callable[[], Any]:
    """The work between two collectives of a step: forward + backward of one reference transformer
    block of ``job["model"]`` over ``busy_seq`` tokens (many small operators, as in a step's layer)."""
    import torch

    from autotune.spec import ModelSpec
    from workers.model import TransformerBlock, rope_frequencies

    spec = ModelSpec.model_validate(job["model"])
    seq = int(job.get("busy_seq", 32))
    block = TransformerBlock(spec).to(dev)
    x = torch.randn(1, seq, spec.hidden, device=dev, requires_grad=True)
    freqs = rope_frequencies(spec.head_dim, seq).to(dev) if spec.position_embedding == "rope" else None
    return lambda: block(x, freqs).sum().backward()


def _comm(job: dict[str, Any], dev: Any, rank: int, n: int, group: Any) -> list[dict[str, Any]]:
    """Collectives of the first ``n`` ranks while every rank keeps computing, as in a training step:
    each repetition runs the busy work (untimed) and then times the collective alone, which so includes
    waiting for peers that are still computing or not scheduled (on a node whose cores are shared by more
    ranks than cores, most of a call). The median over repetitions is kept: this wait is the quantity."""
    import torch
    import torch.distributed as dist

    busy = _busy(job, dev)
    reps = max(5, 2 * int(job["reps"]))
    if rank >= n:  # keep the other ranks' cores as busy as in a step while the group measures
        for _ in range(len(job["sizes"]) * (3 + (n == 2)) * (reps + 1) + 1):
            busy()
        return []

    def timed(fn: Callable[[], Any]) -> float:
        times = []
        for _ in range(reps + 1):
            busy()
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])

    rows = []
    for nbytes in job["sizes"]:
        elems = max(n, int(nbytes) // 4 // n * n)
        full, shard = torch.ones(elems, device=dev), torch.ones(elems // n, device=dev)
        ops = {"all_reduce": lambda full=full: dist.all_reduce(full, group=group),
               "all_gather": lambda full=full, shard=shard: dist.all_gather_into_tensor(full, shard, group=group),
               "reduce_scatter": lambda full=full, shard=shard: dist.reduce_scatter_tensor(shard, full, group=group)}
        for op, fn in ops.items():
            rows.append({"kind": "comm", "op": op, "ranks": n, "bytes": 4.0 * elems, "seconds": timed(fn)})
        if n == 2:
            peer = 1 - rank

            def ping(full: Any = full, peer: int = peer) -> None:
                if rank == 0:
                    dist.send(full, peer, group=group)
                    dist.recv(full, peer, group=group)
                else:
                    dist.recv(full, peer, group=group)
                    dist.send(full, peer, group=group)

            rows.append({"kind": "comm", "op": "p2p", "ranks": 2, "bytes": 4.0 * elems, "seconds": timed(ping) / 2})
    return rows


def _rank(rank: int, job: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """One rank of a job: the compute rows (every rank) and the comm rows of each group it is in."""
    import torch
    import torch.distributed as dist

    from workers.parallel.mesh import device

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    dev = device()
    out: dict[str, list[dict[str, Any]]] = {"compute": _compute(job["compute"], dev) if job.get("compute") else []}
    out["comm"] = []
    for n in (job.get("comm") or {}).get("groups", []):
        group = dist.new_group(list(range(n)))
        out["comm"] += _comm(job["comm"], dev, rank, n, group)
        dist.barrier()
    return out


def _merge(per_rank: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of rank 0 with ``seconds`` replaced by the median over ranks."""
    out: list[dict[str, Any]] = []
    for i, row in enumerate(per_rank[0]):
        out.append(row | {"seconds": statistics.median(r[i]["seconds"] for r in per_rank)})
    return out


def run_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one benchmark job on ``job["ranks"]`` local ranks: its ``compute`` section (a mapping of
    shapes) on every rank, its ``comm`` section (``groups``: rank counts, ``sizes``: bytes) on the first
    n ranks for each n; the rows (compute: median over ranks; comm: rank 0's)."""
    from workers.launch import run_ranks

    per_rank = run_ranks(_rank, int(job["ranks"]), (job,), timeout_s=float(job.get("timeout_s", 900)))
    return _merge([r["compute"] for r in per_rank]) + per_rank[0]["comm"]


def device_info() -> dict[str, Any]:
    """This worker's host, device kind and count (run before planning the jobs)."""
    import socket

    import torch

    cuda = torch.cuda.is_available()
    return {"host": socket.gethostname(), "device": "cuda" if cuda else "cpu",
            "devices": torch.cuda.device_count() if cuda else 0,
            "name": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}
