"""run_ranks: values come back in rank order; a raising, dying or hanging rank fails fast, never hangs."""

from __future__ import annotations

import os
import time

import pytest

from workers.launch import RankFailure, run_ranks

pytestmark = pytest.mark.slow


def _rank_and_world(rank: int) -> tuple[int, int]:
    import torch.distributed as dist

    return rank, dist.get_world_size()


def _rank1_raises(rank: int) -> None:
    if rank == 1:
        raise ValueError("boom on rank 1")


def _rank1_dies(rank: int) -> None:
    if rank == 1:
        os._exit(3)
    time.sleep(60)


def test_values_in_rank_order() -> None:
    assert run_ranks(_rank_and_world, 2, timeout_s=60) == [(0, 2), (1, 2)]


def test_raising_rank_fails_with_its_traceback() -> None:
    with pytest.raises(RankFailure, match="boom on rank 1"):
        run_ranks(_rank1_raises, 2, timeout_s=60)


def test_dead_rank_fails_before_the_deadline() -> None:
    start = time.monotonic()
    with pytest.raises(RankFailure, match="rank 1 exited with code 3"):
        run_ranks(_rank1_dies, 2, timeout_s=50)
    assert time.monotonic() - start < 40
