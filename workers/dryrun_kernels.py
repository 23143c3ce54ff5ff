"""Fused-kernel storage for the dry run: what a GPU training stack saves for backward, not CPU eager.

The reference model (:mod:`workers.model`) in eager CPU torch saves more than Megatron-LM's fused
kernels (the analytic model's assumption, Korthikanti et al. 2022) per token per layer:

* RMSNorm: the CPU composite upcasts to fp32 and saves fp32 copies (4h + 4h per norm); a fused
  kernel (Apex/TE, torch's CUDA ``_fused_rms_norm``) saves the bf16 input and one fp32 rstd per token.
* SwiGLU: eager saves silu(w1·x) as well (+2f bytes); Megatron's fused ``bias_swiglu`` saves only
  w1·x and w3·x and recomputes the silu in backward (in the routed and shared experts too).
* SwiGLU's storage holds for GeGLU too (Megatron's ``bias_geglu`` saves both inputs).
* GQA: ``repeat_interleave`` saves K and V expanded to all heads (4h instead of 4·g·d bytes);
  flash attention with native GQA (``enable_gqa``) saves the kv heads only. A sliding-window layer runs
  it causal: FlashAttention's ``window_size`` saves the same q, k, v, output and log-sum-exp, where the
  eager core's boolean (s, s) mask would be one more saved tensor.
* MLA (value heads narrower than query/key heads, 128 vs 192 in DeepSeek-V3): torch's fused SDPA kernels
  need one head width, and without one SDPA falls back to the math path that stores the s×s scores; V is
  zero-padded to the query width instead (its copy and the output are then stored 192/128 wider, and
  the counted FLOPs of P·V are those of the padded width).
* Sequence parallelism: DTensor saves the all-gathered (b, s, h) inputs of the QKV and fc1 layers;
  Megatron (Korthikanti §4.2.2) saves the sequence shard and all-gathers again in backward —
  :func:`save_sequence_shards` does the same with saved-tensor hooks.
* Cross-entropy: ``F.cross_entropy`` (also under ``loss_parallel``) saves the fp32 log-softmax and
  allocates two more fp32 logits-sized tensors in backward; Megatron's vocab-parallel cross-entropy
  (:func:`vocab_parallel_cross_entropy`) turns the saved fp32 softmax into the gradient in place.

:func:`fuse` swaps these modules' classes in place (same parameters, same parallelisms and hooks, same
numerics up to rounding) so the dry run measures fused storage; ``kernels="eager"`` in
:func:`workers.dryrun.dry_run` skips it and measures the eager model as the measure fidelity runs it.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.utils._python_dispatch import _disable_current_modes

from workers.mlp import FeedForward
from workers.model import Attention, AttentionCore
from workers.moe import GroupedExperts

__all__ = ["fuse", "geglu", "rms_norm", "save_sequence_shards", "swiglu", "vocab_parallel_cross_entropy"]


def _up(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least fp32 (the kernels' accumulation precision)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _kernel(likes: list[torch.Tensor], body: Any) -> list[torch.Tensor]:
    """Outputs shaped like ``likes``, filled from ``body()`` as one fused kernel would: the outputs are
    allocations the memory tracker sees, ``body``'s intermediates (fp32 upcasts) are not."""
    outs = [torch.empty_like(t) for t in likes]
    with _disable_current_modes():
        for out, value in zip(outs, body(), strict=True):
            out.copy_(value)
    return outs


class _RMSNorm(torch.autograd.Function):
    """y = x · rstd · w with rstd = 1/sqrt(mean(x²) + eps); saves x and the fp32 rstd only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        rstd_like = x.new_empty((*x.shape[:-1], 1), dtype=torch.promote_types(x.dtype, torch.float32))

        def body() -> tuple[torch.Tensor, torch.Tensor]:
            rstd = torch.rsqrt(_up(x).pow(2).mean(-1, keepdim=True) + eps)
            return (_up(x) * rstd).type_as(x) * w, rstd

        y, rstd = _kernel([x, rstd_like], body)
        ctx.save_for_backward(x, w, rstd)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, w, rstd = ctx.saved_tensors

        def body() -> tuple[torch.Tensor, torch.Tensor]:
            xhat = _up(x) * rstd
            gw = (_up(grad) * xhat).flatten(0, -2).sum(0)
            gx = _up(grad) * _up(w)
            return rstd * (gx - xhat * (gx * xhat).mean(-1, keepdim=True)), gw

        gx, gw = _kernel([x, w], body)
        return gx, gw, None


class _SwiGLU(torch.autograd.Function):
    """silu(a) · b; saves a and b, recomputes silu(a) in backward (Megatron's fused bias_swiglu)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return _kernel([a], lambda: (F.silu(a) * b,))[0]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = ctx.saved_tensors

        def body() -> tuple[torch.Tensor, torch.Tensor]:
            sig = torch.sigmoid(_up(a))
            return _up(grad) * _up(b) * sig * (1 + _up(a) * (1 - sig)), _up(grad) * _up(a) * sig

        ga, gb = _kernel([a, b], body)
        return ga, gb


class _GeGLU(torch.autograd.Function):
    """gelu_tanh(a) · b; saves a and b, recomputes the GELU in backward (Megatron's fused bias_geglu)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return _kernel([a], lambda: (F.gelu(a, approximate="tanh") * b,))[0]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = ctx.saved_tensors

        def body() -> tuple[torch.Tensor, torch.Tensor]:
            x = _up(a)
            t = torch.tanh(0.7978845608028654 * (x + 0.044715 * x**3))  # sqrt(2/pi); Hendrycks & Gimpel 2016
            dgelu = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * 0.7978845608028654 * (1 + 3 * 0.044715 * x * x)
            return _up(grad) * _up(b) * dgelu, _up(grad) * 0.5 * x * (1 + t)

        ga, gb = _kernel([a, b], body)
        return ga, gb


class _VocabParallelCE(torch.autograd.Function):
    """Mean cross-entropy of vocabulary-sharded logits (Megatron's ``_VocabParallelCrossEntropy``):
    an fp32 softmax computed in place and saved, turned into the gradient in place in backward."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, labels: torch.Tensor, start: int, group: Any) -> torch.Tensor:
        x = logits.to(torch.promote_types(logits.dtype, torch.float32), copy=True)
        peak = x.amax(-1, keepdim=True)
        if group is not None:
            dist.all_reduce(peak, dist.ReduceOp.MAX, group=group)
        x.sub_(peak).exp_()
        denom = x.sum(-1, keepdim=True)
        if group is not None:
            dist.all_reduce(denom, group=group)
        x.div_(denom)
        target = labels - start
        outside = (target < 0) | (target >= x.shape[-1])
        target = target.clamp(0, x.shape[-1] - 1).unsqueeze(-1)
        p = x.gather(-1, target).squeeze(-1).masked_fill(outside, 0.0)
        if group is not None:
            dist.all_reduce(p, group=group)
        ctx.save_for_backward(x, target, outside)
        return -p.clamp_min(1e-30).log().mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        x, target, outside = ctx.saved_tensors
        x.scatter_add_(-1, target, (outside.to(x.dtype) - 1).unsqueeze(-1))
        x.mul_(grad / target.numel())
        return x, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, start: int = 0,
                                 group: Any = None) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` ``(b, s, V/t)`` holding vocabulary ids ``[start, start + V/t)``
    on this rank of the tensor-parallel ``group`` (None: unsharded)."""
    return _VocabParallelCE.apply(logits, labels, start, group)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Fused-storage RMSNorm of ``x`` over its last dim."""
    return _RMSNorm.apply(x, weight, eps)


def swiglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fused-storage silu(a) · b."""
    return _SwiGLU.apply(a, b)


class _FusedRMSNorm(nn.RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps if self.eps is not None else 1e-6)


def geglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fused-storage gelu_tanh(a) · b."""
    return _GeGLU.apply(a, b)


class _FusedFeedForward(FeedForward):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        glu = geglu if self.activation == "geglu" else swiglu
        return self.w2(glu(self.w1(x), self.w3(x)))


class _FusedExperts(GroupedExperts):
    def glu(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return swiglu(a, b)


class _GQACore(AttentionCore):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        dv = v.shape[-1]
        if dv == q.shape[-1]:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        v = F.pad(v, (0, q.shape[-1] - dv))  # MLA: the fused kernel needs v as wide as q and k
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)[..., :dv]


class _GQAAttention(Attention):
    def expand_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v  # the fused kernel reads shared K/V heads in place (enable_gqa)


def fuse(chunk: nn.Module) -> nn.Module:
    """Give ``chunk``'s RMSNorms, SwiGLU MLPs and attention fused-kernel storage, in place (before the
    parallelisms are applied, so their hooks and plans see the same module tree)."""
    for module in chunk.modules():
        if type(module) is nn.RMSNorm:
            module.__class__ = _FusedRMSNorm
        elif type(module) is FeedForward and module.w3 is not None:
            module.__class__ = _FusedFeedForward
        elif type(module) is GroupedExperts and module.w3 is not None:
            module.__class__ = _FusedExperts
        elif type(module) is Attention:
            module.__class__ = _GQAAttention
        elif type(module) is AttentionCore:
            module.__class__ = _GQACore
    return chunk


@contextlib.contextmanager
def save_sequence_shards(chunks: list[nn.Module]) -> Iterator[None]:
    """While inside, tensors autograd saves that are contiguous views of a block's all-gathered
    attention or MLP input are stored as their sequence shard (one per gathered input) and re-gathered when backward
    unpacks them."""
    gathered: dict[int, tuple[weakref.ref[DTensor], DTensor | None]] = {}

    def key(t: DTensor) -> int:
        return t.to_local().untyped_storage()._cdata

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        if isinstance(x, DTensor) and x.placements == (Replicate(),):
            k = key(x)
            gathered[k] = (weakref.ref(x, lambda _: gathered.pop(k, None)), None)

    def pack(t: torch.Tensor) -> Any:
        if not isinstance(t, DTensor) or not t.is_contiguous() or key(t) not in gathered:
            return t
        ref, shard = gathered[key(t)]
        base = ref()
        if base is None:
            return t
        if shard is None:
            shard = base.redistribute(base.device_mesh, (Shard(1),))
            gathered[key(t)] = (ref, shard)
        return shard, t.shape

    def unpack(packed: Any) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        shard, shape = packed
        return shard.redistribute(shard.device_mesh, (Replicate(),)).view(shape)

    hooks = [block.get_submodule(name).register_forward_pre_hook(record)
             for chunk in chunks for block in chunk.layers.values() for name in ("attention", "feed_forward")]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        for h in hooks:
            h.remove()
