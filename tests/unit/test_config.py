"""Every ParallelConfig validation rule, with the numbers in the message."""

from __future__ import annotations

import pytest

from autotune.config import derive
from autotune.errors import AutotuneError, InfeasibleConfig
from autotune.spec import TrainingSpec

T = TrainingSpec(seq_len=8192, global_batch=512)


def test_derives_dp_and_grad_accum(llama8b) -> None:
    cfg = derive(llama8b, T, 64, tp=4, pp=2, micro_batch=2)
    assert (cfg.dp, cfg.grad_accum) == (8, 32)
    assert cfg.micro_batch * cfg.grad_accum * cfg.dp == 512
    assert cfg.world == 64


@pytest.mark.parametrize("kwargs,gpus,message", [
    (dict(tp=3), 9, "tp=3 does not divide heads=32"),
    (dict(tp=4, pp=3), 8, "tp*pp*cp=4*3*1=12 does not divide gpus=8"),
    (dict(pp=3, vpp=3), 3, "layers=32 is not divisible by pp*vpp=3*3=9"),
    (dict(pp=2, vpp=3), 2, "layers=32 is not divisible by pp*vpp=2*3=6"),
    (dict(vpp=2), 1, "vpp=2 needs pp > 1"),
    (dict(cp=3), 3, "cp=3 does not divide seq_len=8192"),
    (dict(sequence_parallel=True), 1, "sequence_parallel needs tp > 1"),
    (dict(micro_batch=3), 8, "global_batch=512 is not divisible by micro_batch*dp=3*8=24"),
    (dict(zero=4), 8, "zero=4 must be one of 0, 1, 2, 3"),
    (dict(zero=0, dp_shard=2), 8, "dp_shard=2 needs zero >= 1"),
    (dict(zero=3, dp_shard=3), 8, "dp_shard=3 does not divide dp=8"),
    (dict(recompute="some"), 8, "recompute='some' must be one of none, selective, full"),
    (dict(recompute="selective", recompute_layers=2), 8, "recompute_layers=2 needs recompute='full'"),
    (dict(recompute="full", recompute_layers=33), 8, "recompute_layers=33 must be in 1..layers/pp=32"),
    (dict(tp=0), 8, "tp=0 must be a positive integer"),
    (dict(tp_comm_overlap=True), 8, "tp_comm_overlap needs tp > 1"),
])
def test_rules(llama8b, kwargs, gpus, message) -> None:
    with pytest.raises(InfeasibleConfig, match=message.replace("*", r"\*").replace("(", r"\(")):
        derive(llama8b, T, gpus, **kwargs)


def test_tp_incompatible_with_kv_heads() -> None:
    from autotune.catalog import get_model

    qwen = get_model("qwen2.5-7b")  # heads=28, kv_heads=4: tp=7 divides heads, but not kv_heads nor vice versa
    with pytest.raises(InfeasibleConfig, match="tp=7 and kv_heads=4: neither divides the other"):
        derive(qwen, TrainingSpec(seq_len=4096, global_batch=70), 7, tp=7)


def test_infeasible_is_an_autotune_error() -> None:
    assert issubclass(InfeasibleConfig, AutotuneError)


def test_zero_with_pipelining_is_a_valid_layout(llama8b) -> None:
    # torchtitan composes FSDP2 with pipelining; which framework runs it is not ParallelConfig's rule.
    cfg = derive(llama8b, T, 16, pp=2, zero=3)
    assert (cfg.zero, cfg.pp, cfg.dp_shard) == (3, 2, 8)


def test_hsdp_and_default_shard(llama8b) -> None:
    assert derive(llama8b, T, 16, zero=3, dp_shard=4).dp_replicate == 4
    assert derive(llama8b, T, 16, zero=1).dp_shard == 16
    assert derive(llama8b, T, 16).dp_shard == 1


def test_gqa_tp_above_kv_heads_allowed_when_multiple(llama8b) -> None:
    # kv_heads=8 with tp=16 is rejected above; tp=32? heads=32, kv=8: 32 % 8 == 0 -> KV replicated.
    assert derive(llama8b, T, 32, tp=32).tp == 32
