"""Context parallelism with torch's ``context_parallel`` (ring attention over the ``cp`` mesh dim).

Inside :func:`cp_context` the token, label and RoPE buffers are sharded along the sequence (with
load balancing) and SDPA becomes a ring over the cp ranks. It needs an SDPA kernel with a
context-parallel rule (flash / memory-efficient / cuDNN on CUDA); :func:`check_cp` runs one tiny
attention under ``context_parallel`` and raises :class:`UnsupportedLayout` with torch's own error where
there is none (CPU: ``_scaled_dot_product_flash_attention_for_cpu`` has no sharding strategy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.experimental import context_parallel

from autotune.spec import ModelSpec
from workers.parallel.errors import UnsupportedLayout

__all__ = ["check_cp", "cp_context"]


def check_cp(spec: ModelSpec, cp_mesh: DeviceMesh, device: torch.device) -> None:
    """Raise :class:`UnsupportedLayout` unless context parallelism really runs here for ``spec``."""
    if spec.position_embedding == "learned":
        raise UnsupportedLayout("context parallelism with a learned position table (needs RoPE positions)")
    if spec.sliding_window is not None:
        raise UnsupportedLayout("context parallelism with sliding-window layers (the ring attention has no window)")
    n = 4 * cp_mesh.size()
    q = torch.ones(1, 1, n, 8, device=device)
    try:
        with context_parallel(cp_mesh, buffers=[q], buffer_seq_dims=[2]):
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
    except (NotImplementedError, RuntimeError) as e:
        raise UnsupportedLayout(f"context parallelism on {device.type}: {type(e).__name__}: {e}") from e


@contextlib.contextmanager
def cp_context(
    cp_mesh: DeviceMesh | None,
    buffers: list[torch.Tensor],
    seq_dims: list[int],
    no_restore: list[torch.Tensor],
) -> Iterator[None]:
    """Shard ``buffers`` along ``seq_dims`` over ``cp_mesh`` for the body, restoring all but
    ``no_restore`` (the batch) afterwards; a no-op when ``cp_mesh`` is None."""
    if cp_mesh is None:
        yield
        return
    with context_parallel(
        cp_mesh, buffers=buffers, buffer_seq_dims=seq_dims, no_restore_buffers=set(no_restore)
    ):
        yield
