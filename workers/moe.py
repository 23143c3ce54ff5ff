"""The reference transformer's mixture-of-experts block: top-k token-choice router, grouped routed experts,
shared experts (:class:`MoE`); expert parallelism (:mod:`workers.parallel.ep`) swaps its token exchange."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autotune.spec import ModelSpec
from workers.mlp import ACTIVATIONS, FeedForward

__all__ = ["GroupedExperts", "LocalExchange", "MoE"]


def _spans(counts: list[int]) -> list[tuple[int, int]]:
    """``(start, stop)`` rows of each expert's contiguous slice."""
    out, at = [], 0
    for n in counts:
        out.append((at, at + n))
        at += n
    return out


class _GroupedMM(torch.autograd.Function):
    """``x[rows of expert i] @ w[i]`` for every expert, as one grouped GEMM: one output tensor in forward and
    one stacked weight gradient in backward (per-expert indexing of ``w`` would give every expert its own
    full-size zero-filled gradient). Under autocast the GEMMs run in the autocast dtype."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, counts: list[int]) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.counts = counts
        y = None
        for i, (lo, hi) in enumerate(_spans(counts)):
            part = torch.mm(x[lo:hi], w[i])
            if y is None:
                y = part.new_empty(x.shape[0], w.shape[-1])
            y[lo:hi] = part
        return y if y is not None else x.new_empty(0, w.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, w = ctx.saved_tensors
        gx, gw = torch.empty_like(x), torch.zeros_like(w)
        for i, (lo, hi) in enumerate(_spans(ctx.counts)):
            g = grad[lo:hi]
            gx[lo:hi] = torch.mm(g, w[i].to(g.dtype).t())
            gw[i] = torch.mm(x[lo:hi].to(g.dtype).t(), g)
        return gx, gw, None


class GroupedExperts(nn.Module):
    """The routed experts' MLPs, weights stacked ``[experts, h, f]`` (w1, w3) and ``[experts, f, h]`` (w2), as
    Megatron-LM's ``GroupedMLP`` and torchtitan's ``GroupedExperts``. :meth:`forward` takes tokens sorted by
    expert and each expert's count and runs each projection as a grouped GEMM (:class:`_GroupedMM`: one
    ``torch.mm`` per expert on its contiguous slice)."""

    def __init__(self, spec: ModelSpec, n_experts: int) -> None:
        super().__init__()
        e, h, f, gated = n_experts, spec.hidden, spec.expert_ffn, spec.mlp_matrices == 3
        self.activation = spec.activation
        self.w1 = nn.Parameter(torch.empty(e, h, f))
        self.w2 = nn.Parameter(torch.empty(e, f, h))
        self.w3 = nn.Parameter(torch.empty(e, h, f)) if gated else None
        bias = spec.bias == "all"
        self.w1_bias = nn.Parameter(torch.empty(e, f)) if bias else None
        self.w2_bias = nn.Parameter(torch.empty(e, h)) if bias else None
        self.w3_bias = nn.Parameter(torch.empty(e, f)) if bias and gated else None

    @property
    def n_experts(self) -> int:
        """Experts held here (all of them, or this rank's share under expert parallelism)."""
        return self.w1.shape[0]

    def glu(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """act(a) · b (SwiGLU: silu, GeGLU: tanh GELU)."""
        return ACTIVATIONS[self.activation](a) * b

    def _linear(self, x: torch.Tensor, name: str, counts: list[int]) -> torch.Tensor:
        y = _GroupedMM.apply(x, getattr(self, name), counts)
        bias = getattr(self, f"{name}_bias")
        if bias is None:
            return y
        return y + bias.repeat_interleave(torch.tensor(counts, device=bias.device), dim=0, output_size=x.shape[0])

    def forward(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        a = self._linear(x, "w1", counts)
        hidden = ACTIVATIONS[self.activation](a) if self.w3 is None else self.glu(a, self._linear(x, "w3", counts))
        return self._linear(hidden, "w2", counts)


class LocalExchange:
    """Token exchange without expert parallelism: every expert is local."""

    def __call__(self, tokens: torch.Tensor, counts: list[int], experts: GroupedExperts) -> torch.Tensor:
        return experts(tokens, counts)


class MoE(nn.Module):
    """Mixture-of-experts MLP: top-k token-choice router, routed experts, optional shared experts.

    The router (``gate``, h → experts) scores each token with a softmax over the experts and keeps the top
    ``experts_per_token``, their weights renormalised to sum to one (Mixtral, Jiang et al. 2024, §2.1;
    Qwen3-MoE's ``norm_topk_prob``). The token copies are sorted by expert (:meth:`route`), passed through
    the experts by ``exchange`` (:class:`LocalExchange`, or expert parallelism's all-to-all) and summed
    back into their tokens with the router weights. Dropless unless the spec sets ``capacity_factor``: then
    each expert keeps at most ``ceil(capacity_factor · tokens · k / experts)`` copies, the first ones in
    token order (GShard, Lepikhin et al. 2020, §2.2), and the dropped copies add nothing. Shared experts
    (DeepSeekMoE, Dai et al. 2024) are one MLP of ``shared_experts · shared_expert_ffn`` width that every
    token runs through, as Megatron-LM's ``--moe-shared-expert-intermediate-size``. No auxiliary
    load-balancing loss is added, so the loss is the language-model loss alone.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.top_k, self.n_experts, self.capacity_factor = spec.experts_per_token, spec.experts, spec.capacity_factor
        self.gate = nn.Linear(spec.hidden, spec.experts, bias=spec.bias == "all")
        self.experts = GroupedExperts(spec, spec.experts)
        width = spec.shared_experts * spec.shared_expert_ffn
        self.shared = FeedForward(spec.model_copy(update={"ffn_hidden": width})) if width else None
        self.exchange: LocalExchange = LocalExchange()

    def route(self, expert_ids: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """``(order, counts)``: the token-copy indices (``token · k + j``) sorted by expert, stably, with
        copies over capacity left out, and how many copies each expert gets."""
        flat = expert_ids.flatten()
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.n_experts)
        if self.capacity_factor is None:
            return order, counts.tolist()
        capacity = math.ceil(self.capacity_factor * flat.numel() / self.n_experts)
        starts = torch.cumsum(counts, 0) - counts
        rank_in_expert = torch.arange(flat.numel(), device=flat.device) - starts.repeat_interleave(counts)
        return order[rank_in_expert < capacity], counts.clamp(max=capacity).tolist()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        scores = F.softmax(self.gate(tokens).float(), dim=-1)
        weights, expert_ids = scores.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).type_as(x)
        order, counts = self.route(expert_ids)
        routed = self.exchange(tokens.index_select(0, order // self.top_k), counts, self.experts)
        copies = routed.new_zeros(tokens.shape[0] * self.top_k, shape[-1]).index_copy(0, order, routed)
        out = (copies.view(-1, self.top_k, shape[-1]) * weights.unsqueeze(-1)).sum(1)
        if self.shared is not None:
            out = out + self.shared(tokens)
        return out.view(shape)
