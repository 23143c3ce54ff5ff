"""The reference decoder-only transformer built from a :class:`~autotune.spec.ModelSpec`.

Structured like torchtitan's Llama so the parallelisms in :mod:`workers.parallel` can address it by
name: ``tok_embeddings`` (+ ``pos_embeddings`` for a learned position table), ``layers`` (an
``nn.ModuleDict`` keyed ``"0"`` … ``"L-1"``; pipeline splitting deletes entries), ``norm`` and
``output``. ``forward`` skips whichever of these a pipeline stage does not own (set to ``None``), so a
middle stage maps hidden states to hidden states.

The block follows the spec's shape: queries of heads·head_dim (decoupled from h as in Gemma, Qwen3,
Minitron), SwiGLU / GeGLU (tanh GELU gate, transformers' ``gelu_pytorch_tanh``) / GELU / squared-ReLU MLPs,
q/k RMSNorm per head (Qwen3, Gemma 3) or over the projections (OLMo 2), pre / post / sandwich norms
(``attention_post_norm`` and ``ffn_post_norm`` on the sub-layer outputs), and sliding-window layers, whose
core runs SDPA with a windowed causal boolean mask (query i sees keys i-w+1 … i).

Initialisation is per parameter from a generator seeded by (seed, parameter name), so a pipeline
stage holding any subset of the layers gets exactly the weights of the full model.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn

from autotune.spec import ModelSpec

__all__ = ["Transformer", "build_model", "init_weights", "synthetic_batch", "rope_frequencies", "window_mask"]


def _norm(spec: ModelSpec) -> nn.Module:
    if spec.norm == "rmsnorm":
        return nn.RMSNorm(spec.hidden, eps=1e-5)
    return nn.LayerNorm(spec.hidden, eps=1e-5)


def rope_frequencies(head_dim: int, seq_len: int, theta: float = 10000.0) -> torch.Tensor:
    """RoPE angles as a real tensor ``(seq_len, head_dim // 2, 2)`` of (cos, sin)."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv)
    return torch.stack((angles.cos(), angles.sin()), dim=-1)


def _apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels of ``x`` ``(b, s, heads, head_dim)`` by the angles in ``freqs``."""
    xf = x.float().unflatten(-1, (-1, 2))
    cos, sin = freqs[: x.shape[1], None, :, 0], freqs[: x.shape[1], None, :, 1]
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


def window_mask(seq_len: int, window: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean ``(s, s)`` mask, True where query i may attend to key j: i - window < j <= i."""
    i = torch.arange(seq_len, device=device)
    d = i[:, None] - i[None, :]
    return (d >= 0) & (d < window)


class AttentionCore(nn.Module):
    """Causal scaled-dot-product attention over ``(b, heads, s, head_dim)``, optionally over a sliding
    ``window`` of keys; the selective-recompute unit."""

    def __init__(self, window: int | None = None) -> None:
        super().__init__()
        self.window = window

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.window is None or self.window >= q.shape[2]:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        mask = window_mask(q.shape[2], self.window, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _qk_norms(spec: ModelSpec) -> tuple[nn.Module | None, nn.Module | None]:
    """RMSNorms of queries and keys: one weight of head_dim shared by the heads, or one per projection."""
    if not spec.qk_norm:
        return None, None
    if spec.qk_norm_scope == "head":
        return nn.RMSNorm(spec.head_dim, eps=1e-6), nn.RMSNorm(spec.head_dim, eps=1e-6)
    return nn.RMSNorm(spec.q_dim, eps=1e-6), nn.RMSNorm(spec.kv_dim, eps=1e-6)


class Attention(nn.Module):
    """Grouped-query attention. Head counts are inferred from the (possibly tensor-parallel) shapes."""

    def __init__(self, spec: ModelSpec, layer: int = 0) -> None:
        super().__init__()
        h, qkv_bias = spec.hidden, spec.bias != "none"
        self.head_dim, self.n_rep = spec.head_dim, spec.heads // spec.n_kv_heads
        self.wq = nn.Linear(h, spec.q_dim, bias=qkv_bias)
        self.wk = nn.Linear(h, spec.kv_dim, bias=qkv_bias)
        self.wv = nn.Linear(h, spec.kv_dim, bias=qkv_bias)
        self.wo = nn.Linear(spec.q_dim, h, bias=spec.bias == "all")
        self.q_norm, self.k_norm = _qk_norms(spec)
        self.per_head_norm = spec.qk_norm_scope == "head"
        self.core = AttentionCore(spec.sliding_window if spec.is_windowed(layer) else None)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor | None) -> torch.Tensor:
        b, s, _ = x.shape
        q, k = self.wq(x), self.wk(x)
        if self.q_norm is not None and not self.per_head_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.view(b, s, -1, self.head_dim), k.view(b, s, -1, self.head_dim)
        if self.q_norm is not None and self.per_head_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        v = self.wv(x).view(b, s, -1, self.head_dim)
        if freqs is not None:
            q, k = _apply_rope(q, freqs), _apply_rope(k, freqs)
        k, v = self.expand_kv(k, v)
        out = self.core(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))

    def expand_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Repeat each key/value head for the query heads that share it (GQA)."""
        return k.repeat_interleave(self.n_rep, dim=2), v.repeat_interleave(self.n_rep, dim=2)


def _relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


#: The MLP's activation per ModelSpec.activation (gated ones multiply by w3 x).
ACTIVATIONS = {"gelu": F.gelu, "relu2": _relu2, "swiglu": F.silu, "geglu": lambda x: F.gelu(x, approximate="tanh")}


class FeedForward(nn.Module):
    """Gated w2(act(w1 x) * w3 x) for SwiGLU (silu) and GeGLU (tanh GELU), else w2(act(w1 x)) for GELU and
    squared ReLU (relu(x)², Nemotron-4)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        bias = spec.bias == "all"
        self.activation = spec.activation
        self.w1 = nn.Linear(spec.hidden, spec.ffn, bias=bias)
        self.w2 = nn.Linear(spec.ffn, spec.hidden, bias=bias)
        self.w3 = nn.Linear(spec.hidden, spec.ffn, bias=bias) if spec.mlp_matrices == 3 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = ACTIVATIONS[self.activation]
        if self.w3 is None:
            return self.w2(act(self.w1(x)))
        return self.w2(act(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """x + post(attn(pre(x))), then x + post(mlp(pre(x))): pre-norms only (Llama), post-norms only (OLMo 2)
    or both (Gemma's sandwich); an absent norm is None."""

    def __init__(self, spec: ModelSpec, layer: int = 0) -> None:
        super().__init__()
        pre, post = spec.norm_placement != "post", spec.norm_placement != "pre"
        self.attention_norm = _norm(spec) if pre else None
        self.attention = Attention(spec, layer)
        self.attention_post_norm = _norm(spec) if post else None
        self.ffn_norm = _norm(spec) if pre else None
        self.feed_forward = FeedForward(spec)
        self.ffn_post_norm = _norm(spec) if post else None

    @staticmethod
    def _maybe(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        return x if norm is None else norm(x)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor | None) -> torch.Tensor:
        x = x + self._maybe(self.attention_post_norm, self.attention(self._maybe(self.attention_norm, x), freqs))
        return x + self._maybe(self.ffn_post_norm, self.feed_forward(self._maybe(self.ffn_norm, x)))


class Transformer(nn.Module):
    """Decoder-only transformer; tokens ``(b, s)`` → logits ``(b, s, vocab)`` (or hidden states on PP stages)."""

    def __init__(self, spec: ModelSpec, seq_len: int) -> None:
        super().__init__()
        self.spec = spec
        self.tok_embeddings: nn.Module | None = nn.Embedding(spec.vocab, spec.hidden)
        learned = spec.position_embedding == "learned"
        self.pos_embeddings: nn.Module | None = (
            nn.Embedding(spec.max_seq_len, spec.hidden) if learned else None
        )
        self.layers = nn.ModuleDict({str(i): TransformerBlock(spec, i) for i in range(spec.layers)})
        self.norm: nn.Module | None = _norm(spec)
        self.output: nn.Module | None = nn.Linear(spec.hidden, spec.vocab, bias=False)
        if spec.tied_embeddings:
            self.output.weight = self.tok_embeddings.weight
        freqs = None if learned else rope_frequencies(spec.head_dim, seq_len)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tok_embeddings is not None:
            tokens = x
            x = self.tok_embeddings(tokens)
            if self.pos_embeddings is not None:
                x = x + self.pos_embeddings(torch.arange(tokens.shape[1], device=tokens.device)[None])
        for layer in self.layers.values():
            x = layer(x, self.freqs)
        if self.norm is not None:
            x = self.norm(x)
        return self.output(x) if self.output is not None else x


def init_weights(model: nn.Module, seed: int, std: float = 0.02) -> None:
    """Initialise every parameter from a generator seeded by (seed, its name): normals for matrices,
    ones for norm weights, zeros for biases. Independent of which layers a module still holds."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)


def build_model(
    spec: ModelSpec, *, seq_len: int, seed: int = 0, device: str | torch.device = "cpu"
) -> Transformer:
    """A :class:`Transformer` for ``spec`` with deterministic weights, on ``device`` (fp32)."""
    model = Transformer(spec, seq_len)
    init_weights(model, seed)
    return model.to(device)


def synthetic_batch(
    vocab: int, seq_len: int, batch: int, step: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step``: ``(inputs, labels)`` of shape ``(batch, seq_len)``, labels shifted
    by one token. Seeded by (seed, step) so every rank and layout sees the same data."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    tokens = torch.randint(0, vocab, (batch, seq_len + 1), generator=gen)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
