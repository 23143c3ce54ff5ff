"""MoE model fields and the expert-parallel layout rules (Megatron-LM core_v0.19.0 MoE parallel folding:
tp·cp·dp = etp·ep·edp on a pipeline stage, experts divisible by ep), every refusal with its numbers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from autotune.config import derive
from autotune.errors import InfeasibleConfig
from autotune.spec import ModelSpec, TrainingSpec

T = TrainingSpec(seq_len=4096, global_batch=960)
SMALL = dict(layers=8, hidden=1024, heads=16, kv_heads=4, ffn_hidden=4096, vocab=32000, activation="swiglu",
             norm="rmsnorm")


@pytest.fixture
def moe() -> ModelSpec:
    """16 experts top-2 of width 1536, one shared expert, the first 2 layers dense."""
    return ModelSpec(name="small-moe", experts=16, experts_per_token=2, expert_ffn_hidden=1536, shared_experts=1,
                     first_dense_layers=2, **SMALL)


def test_dense_defaults_unchanged() -> None:
    m = ModelSpec(**SMALL)
    assert (m.is_moe, m.moe_layers, m.is_mla) == (False, 0, False)
    assert m.active_param_count() == m.param_count()


@pytest.mark.parametrize("kw,moe_layers", [
    (dict(), 8), (dict(first_dense_layers=3), 5), (dict(moe_every=2), 4),   # layers 0, 2, 4, 6
    (dict(first_dense_layers=1, moe_every=2), 4),                           # layers 1, 3, 5, 7
    (dict(first_dense_layers=2, moe_every=4), 2),                           # layers 2, 6
])
def test_moe_layer_count(kw, moe_layers) -> None:
    assert ModelSpec(experts=8, experts_per_token=2, **SMALL, **kw).moe_layers == moe_layers


def test_param_counts_by_hand(moe) -> None:
    # h = 1024, kv width 4*64 = 256: attention 2h² + 2h·256 = 2,097,152 + 524,288 = 2,621,440; two RMSNorms 2,048.
    # dense MLP 3·h·4096 = 12,582,912; one expert 3·h·1536 = 4,718,592; router h·16 = 16,384.
    # dense layer 15,206,400; MoE layer 2,623,488 + 16,384 + (16 + 1)·4,718,592 = 82,855,936, active (2 + 1)
    # experts: 2,623,488 + 16,384 + 14,155,776 = 16,795,648. Embedding + output 2·32000·1024 = 65,536,000, final
    # norm 1,024. Total 65,537,024 + 2·15,206,400 + 6·82,855,936 = 593,085,440; active 65,537,024 + 30,412,800
    # + 6·16,795,648 = 196,723,712.
    assert moe.moe_layers == 6
    assert moe.param_count() == 593_085_440
    assert moe.active_param_count() == 196_723_712
    assert moe.active_param_count(input_embedding=False) == 196_723_712 - 32000 * 1024


def test_mla_params_by_hand() -> None:
    # heads 16, nope 64 + rope 32, v 64, q rank 256, kv rank 128, h 1024:
    # q: 1024·256 + 256 + 256·16·96 = 262,144 + 256 + 393,216; kv: 1024·(128 + 32) + 128 + 128·16·(64 + 64)
    # = 163,840 + 128 + 262,144; o: 16·64·1024 = 1,048,576. Sum 2,130,304.
    m = ModelSpec(q_lora_rank=256, kv_lora_rank=128, qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64,
                  **SMALL)
    assert m.is_mla and m.mla_params() == 2_130_304


@pytest.mark.parametrize("kw,message", [
    (dict(experts=8), "experts=8 and experts_per_token=0: set both"),
    (dict(experts_per_token=2), "experts=0 and experts_per_token=2: set both"),
    (dict(experts=2, experts_per_token=4), "experts_per_token=4 exceeds experts=2"),
    (dict(experts=4, experts_per_token=1, first_dense_layers=8), "first_dense_layers=8 and moe_every=1 leave no MoE"),
    (dict(kv_lora_rank=512), "needs qk_rope_head_dim, qk_nope_head_dim, v_head_dim"),
    (dict(q_lora_rank=512), "q_lora_rank need kv_lora_rank"),
    (dict(experts=-1), "greater than or equal to 0"),
    (dict(capacity_factor=0), "greater than 0"),
])
def test_model_refusals(kw, message) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelSpec(**SMALL, **kw)


def test_edp_folds_the_stage(moe) -> None:
    # 32 GPUs, tp 2, pp 2: dp 8, stage ranks tp·cp·dp = 16 = etp 1 · ep 8 · edp 2.
    cfg = derive(moe, T, 32, tp=2, pp=2, ep=8, sequence_parallel=True)
    assert (cfg.dp, cfg.ep, cfg.etp, cfg.edp) == (8, 8, 1, 2)
    # etp 2 · ep 4 · edp 2 = 16 as well.
    assert derive(moe, T, 32, tp=2, pp=2, ep=4, etp=2).edp == 2
    # ep may exceed dp (experts fold over the tp ranks too): tp 4, dp 2, ep 8, edp 1.
    assert derive(moe, T, 8, tp=4, ep=8).edp == 1


@pytest.mark.parametrize("kw,gpus,message", [
    (dict(ep=3), 6, "ep=3 does not divide experts=16"),
    (dict(tp=2, pp=2, ep=16), 16, "etp*ep=1*16=16 does not divide tp*cp*dp=2*1*4=8"),
    (dict(pp=2, ep=4, etp=4), 16, "etp*ep=4*4=16 does not divide tp*cp*dp=1*1*8=8"),
    (dict(etp=5, ep=1), 5, "etp=5 does not divide expert_ffn_hidden=1536"),
    (dict(ep=0), 8, "ep=0 must be a positive integer"),
    (dict(etp=0), 8, "etp=0 must be a positive integer"),
])
def test_expert_rules(moe, kw, gpus, message) -> None:
    with pytest.raises(InfeasibleConfig, match=message.replace("*", r"\*")):
        derive(moe, T, gpus, **kw)


@pytest.mark.parametrize("kw", [dict(ep=2), dict(etp=2), dict(ep=2, etp=2)])
def test_dense_model_refuses_expert_parallelism(kw) -> None:
    dense = ModelSpec(**SMALL)
    with pytest.raises(InfeasibleConfig, match=f"ep={kw.get('ep', 1)} etp={kw.get('etp', 1)}: expert parallelism "
                                               "needs a mixture-of-experts model \\(experts=0\\)"):
        derive(dense, T, 8, **kw)
