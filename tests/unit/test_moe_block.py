"""The reference model's MoE block and latent attention against hand-worked cases and a naive per-token loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autotune.catalog import get_model
from autotune.config import derive
from autotune.spec import ModelSpec, TrainingSpec
from workers.model import build_model
from workers.moe import MoE
from workers.parallel.ep import _expert_major, grad_divisor

MOE = get_model("tiny-moe")
MLA = ModelSpec(**MOE.model_dump() | dict(name="tiny-moe-mla", q_lora_rank=48, kv_lora_rank=32, qk_rope_head_dim=16,
                                          qk_nope_head_dim=32, v_head_dim=32))
SMALL = ModelSpec(name="moe-small", layers=2, hidden=16, heads=2, vocab=32, activation="swiglu", norm="rmsnorm",
                  experts=3, experts_per_token=2, expert_ffn_hidden=8, shared_experts=1)


def _moe(spec: ModelSpec) -> MoE:
    torch.manual_seed(0)
    moe = MoE(spec)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return moe


def test_route_sorts_copies_by_expert_stably() -> None:
    # copies token*k + j of experts [[0, 2], [2, 1], [0, 2]] -> flat [0, 2, 2, 1, 0, 2]:
    # expert 0 gets copies 0, 4; expert 1 copy 3; expert 2 copies 1, 2, 5.
    order, counts = _moe(SMALL).route(torch.tensor([[0, 2], [2, 1], [0, 2]]))
    assert order.tolist() == [0, 4, 3, 1, 2, 5] and counts == [2, 1, 3]


def test_capacity_keeps_the_first_copies_of_each_expert() -> None:
    # capacity = ceil(1.0 * 6 copies / 3 experts) = 2: expert 2 keeps copies 1 and 2 and drops copy 5.
    moe = _moe(SMALL.model_copy(update={"capacity_factor": 1.0}))
    order, counts = moe.route(torch.tensor([[0, 2], [2, 1], [0, 2]]))
    assert order.tolist() == [0, 4, 3, 1, 2] and counts == [2, 1, 2]


def _naive(moe: MoE, x: torch.Tensor, capacity: int | None = None) -> torch.Tensor:
    """Token by token: softmax over the experts, top-k renormalised, sum of w_j * expert_j(x) + shared(x)."""
    e = moe.experts
    out, seen = [], [0] * moe.n_experts
    for t in x:
        scores = F.softmax(moe.gate(t).float(), -1)
        w, ids = scores.topk(moe.top_k)
        w = w / w.sum()
        y = moe.shared(t)
        for wj, i in zip(w, ids.tolist(), strict=True):
            seen[i] += 1
            if capacity is not None and seen[i] > capacity:
                continue
            y = y + wj * ((F.silu(t @ e.w1[i]) * (t @ e.w3[i])) @ e.w2[i])
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_moe_forward_matches_a_per_token_loop(capacity_factor) -> None:
    spec = SMALL.model_copy(update={"capacity_factor": capacity_factor})
    moe = _moe(spec)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    # 10 tokens x 2 copies over 3 experts: capacity ceil(0.5 * 20 / 3) = 4 copies per expert
    expected = _naive(moe, x.reshape(-1, 16), None if capacity_factor is None else 4).view(2, 5, 16)
    torch.testing.assert_close(moe(x), expected, atol=1e-5, rtol=1e-5)


def test_grouped_experts_gradients_match_per_token_autograd() -> None:
    moe = _moe(SMALL)
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(2))
    moe(x).square().sum().backward()
    got = [p.grad.clone() for p in moe.experts.parameters()]
    moe.zero_grad()
    _naive(moe, x).square().sum().backward()
    for g, p in zip(got, moe.experts.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, atol=1e-4, rtol=1e-4)


def test_received_copies_regroup_expert_major() -> None:
    # from source 0: 1 copy for local expert 0, 2 for expert 1; from source 1: 3 for expert 0, none for 1.
    # Received rows: [s0e0: 0 | s0e1: 1 2 | s1e0: 3 4 5]; expert-major: e0 <- 0, 3, 4, 5; e1 <- 1, 2.
    assert _expert_major([[1, 2], [3, 0]], torch.device("cpu")).tolist() == [0, 3, 4, 5, 1, 2]


def test_moe_layers_and_parameters_match_the_spec() -> None:
    # tiny-moe: first_dense_layers 1, moe_every 1 -> layers 1, 2, 3 are MoE; DeepSeek-V3 (3 dense) -> 3.. are.
    assert [MOE.is_moe_layer(i) for i in range(4)] == [False, True, True, True]
    every2 = MOE.model_copy(update={"first_dense_layers": 0, "moe_every": 2})
    assert [every2.is_moe_layer(i) for i in range(4)] == [True, False, True, False]
    for spec in (MOE, MLA, SMALL):
        model = build_model(spec, seq_len=8)
        assert sum(p.numel() for p in model.parameters()) == spec.param_count()
    # ModelSpec.param_count is moe-model's formula; tiny-moe by hand: embedding + output 2 x 512 x 128, 4 blocks
    # of attention 2*128^2 + 2*128*64 and 2 norms of 128, block 0's MLP 3*128*384, blocks 1-3 router 128*8 +
    # 8 experts 3*128*96 + shared 3*128*96, final norm 128: 1,474,688.
    assert MOE.param_count() == 1_474_688


def test_latent_attention_runs_causally() -> None:
    # Changing a later token leaves the earlier positions' logits unchanged.
    model = build_model(MLA, seq_len=8, seed=1)
    x = torch.randint(0, MLA.vocab, (1, 8), generator=torch.Generator().manual_seed(3))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % MLA.vocab
    torch.testing.assert_close(model(x)[0, :-1], model(y)[0, :-1])


def test_expert_gradient_divisor() -> None:
    # dp 2 x tp 2, ep 2: the loss averages over dp*cp = 2 token shards; without sequence parallelism the two tp
    # ranks route the same tokens, so the edp sum counts each twice more.
    train = TrainingSpec(seq_len=16, global_batch=4)
    assert grad_divisor(derive(MOE, train, 4, tp=2, ep=2, sequence_parallel=True)) == 2
    assert grad_divisor(derive(MOE, train, 4, tp=2, ep=2)) == 4
    assert grad_divisor(derive(MOE, train, 4, ep=4)) == 4
