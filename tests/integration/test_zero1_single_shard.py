"""ZeRO-1 over a one-rank shard group (tp2 x pp2 x dp1) trains like the unsharded optimizer."""

from __future__ import annotations

import pytest

from autotune.catalog import get_model
from autotune.config import derive
from autotune.spec import TrainingSpec
from workers.launch import run_ranks

pytestmark = pytest.mark.slow


def _losses(rank: int) -> dict[int, list[float]]:
    from workers.parallel import parallelize
    from workers.train_step import build_optimizer, train_step

    model, training = get_model("tiny"), TrainingSpec(seq_len=32, global_batch=4, precision="fp32")
    out = {}
    for zero in (1, 0):
        par = parallelize(model, derive(model, training, 4, tp=2, pp=2, zero=zero), seq_len=32)
        opt = build_optimizer(par, "sgd", lr=0.5)
        out[zero] = [train_step(par, opt, step) for step in range(2)]
    return out


def test_zero1_with_nothing_to_shard_matches_zero0() -> None:
    losses = run_ranks(_losses, 4, timeout_s=240)[0]
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
