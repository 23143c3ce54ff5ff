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

A mixture-of-experts spec puts a :class:`workers.moe.MoE` block in place of the MLP (:class:`workers.mlp.FeedForward`)
of its MoE layers (:meth:`ModelSpec.is_moe_layer`); expert parallelism (:mod:`workers.parallel.ep`) swaps its token
exchange. A spec with ``kv_lora_rank`` attends with :class:`LatentAttention` (MLA).

Initialisation is per parameter from a generator seeded by (seed, parameter name), so a pipeline
stage holding any subset of the layers gets exactly the weights of the full model.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn

from autotune.spec import ModelSpec
from workers.mlp import FeedForward
from workers.moe import MoE

__all__ = ["Transformer", "TransformerBlock", "Attention", "AttentionCore", "LatentAttention", "build_model",
           "init_weights", "synthetic_batch", "rope_frequencies", "window_mask"]


def _norm(spec: ModelSpec) -> nn.Module:
    return _norm_of(spec, spec.hidden)


def _norm_of(spec: ModelSpec, width: int) -> nn.Module:
    if spec.norm == "rmsnorm":
        return nn.RMSNorm(width, eps=1e-5)
    return nn.LayerNorm(width, eps=1e-5)


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


class LatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2, Liu et al. 2024, §2.1; DeepSeek-V3's ``MLA``).

    Queries go through a low-rank down-projection ``wq_a`` (h → q_lora_rank), a norm and ``wq_b`` (→ heads ·
    (nope + rope)), or one ``wq`` without a q rank; keys and values through ``wkv_a`` (h → kv_lora_rank + rope:
    the compressed latent and one rotary key shared by all heads), a norm and ``wkv_b`` (latent → heads ·
    (nope + v)). Each head's key is its non-rotary part and the shared rotary key; RoPE turns the rotary
    parts only. Shapes and names as transformers' ``DeepseekV3Attention`` (q_a_proj, q_b_proj,
    kv_a_proj_with_mqa, kv_b_proj, o_proj). Head counts are inferred from the (possibly tensor-parallel)
    shapes; the ``1/sqrt(nope + rope)`` scale is SDPA's default for that query width.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        h, a = spec.hidden, spec.heads
        self.nope, self.rope, self.v_dim = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim
        self.kv_rank, qk = spec.kv_lora_rank, spec.qk_nope_head_dim + spec.qk_rope_head_dim
        rank = spec.q_lora_rank
        self.wq = nn.Linear(h, a * qk, bias=False) if rank is None else None
        self.wq_a = nn.Linear(h, rank, bias=False) if rank is not None else None
        self.q_norm = _norm_of(spec, rank) if rank is not None else None
        self.wq_b = nn.Linear(rank, a * qk, bias=False) if rank is not None else None
        self.wkv_a = nn.Linear(h, self.kv_rank + self.rope, bias=False)
        self.kv_norm = _norm_of(spec, self.kv_rank)
        self.wkv_b = nn.Linear(self.kv_rank, a * (self.nope + self.v_dim), bias=False)
        self.wo = nn.Linear(a * self.v_dim, h, bias=False)
        self.core = AttentionCore()
        self.rope_key: nn.Module = nn.Identity()
        """The shared rotary key passes through it (tensor parallelism sums its gradient over the ranks that
        each use it for their own heads)."""

    def forward(self, x: torch.Tensor, freqs: torch.Tensor | None) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.wq(x) if self.wq is not None else self.wq_b(self.q_norm(self.wq_a(x)))
        q = q.view(b, s, -1, self.nope + self.rope)
        q_nope, q_rope = q.split((self.nope, self.rope), dim=-1)
        latent, k_rope = self.wkv_a(x).split((self.kv_rank, self.rope), dim=-1)
        kv = self.wkv_b(self.kv_norm(latent)).view(b, s, -1, self.nope + self.v_dim)
        k_nope, v = kv.split((self.nope, self.v_dim), dim=-1)
        k_rope = self.rope_key(k_rope).unsqueeze(2)
        if freqs is not None:
            q_rope, k_rope = _apply_rope(q_rope, freqs), _apply_rope(k_rope, freqs)
        q = torch.cat((q_nope, q_rope), dim=-1)
        k = torch.cat((k_nope, k_rope.expand(-1, -1, k_nope.shape[2], -1)), dim=-1)
        out = self.core(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class TransformerBlock(nn.Module):
    """x + post(attn(pre(x))), then x + post(mlp(pre(x))): pre-norms only (Llama), post-norms only (OLMo 2)
    or both (Gemma's sandwich); an absent norm is None. The mlp is a :class:`~workers.moe.MoE` in MoE layers,
    the attention :class:`LatentAttention` with MLA."""

    def __init__(self, spec: ModelSpec, layer: int = 0, moe: bool = False) -> None:
        super().__init__()
        pre, post = spec.norm_placement != "post", spec.norm_placement != "pre"
        self.attention_norm = _norm(spec) if pre else None
        self.attention: nn.Module = LatentAttention(spec) if spec.is_mla else Attention(spec, layer)
        self.attention_post_norm = _norm(spec) if post else None
        self.ffn_norm = _norm(spec) if pre else None
        self.feed_forward: nn.Module = MoE(spec) if moe else FeedForward(spec)
        self.ffn_post_norm = _norm(spec) if post else None

    @staticmethod
    def _maybe(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        return x if norm is None else norm(x)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor | None) -> torch.Tensor:
        x = x + self._maybe(self.attention_post_norm, self.attention(self._maybe(self.attention_norm, x), freqs))
        return x + self._maybe(self.ffn_post_norm, self.feed_forward(self._maybe(self.ffn_norm, x)))


class Transformer(nn.Module):
    """Decoder-only transformer; tokens ``(b, s)`` → logits ``(b, s, vocab)`` (or hidden states on PP stages)."""

    def __init__(self, spec: ModelSpec, seq_len: int, layer_ids: range | None = None) -> None:
        """``layer_ids``: the blocks to build, keyed by their index in the whole model (a pipeline stage's;
        default all ``spec.layers``), so MoE layers fall where :meth:`ModelSpec.is_moe_layer` puts them."""
        super().__init__()
        self.spec = spec
        self.tok_embeddings: nn.Module | None = nn.Embedding(spec.vocab, spec.hidden)
        learned = spec.position_embedding == "learned"
        self.pos_embeddings: nn.Module | None = (
            nn.Embedding(spec.max_seq_len, spec.hidden) if learned else None
        )
        ids = range(spec.layers) if layer_ids is None else layer_ids
        self.layers = nn.ModuleDict({str(i): TransformerBlock(spec, i, spec.is_moe_layer(i)) for i in ids})
        self.norm: nn.Module | None = _norm(spec)
        self.output: nn.Module | None = nn.Linear(spec.hidden, spec.vocab, bias=False)
        if spec.tied_embeddings:
            self.output.weight = self.tok_embeddings.weight
        rotary = spec.qk_rope_head_dim if spec.is_mla else spec.head_dim
        freqs = None if learned else rope_frequencies(rotary, seq_len)
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
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
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
