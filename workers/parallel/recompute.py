"""Activation recomputation with ``torch.utils.checkpoint`` (non-reentrant), as torchtitan's ``apply_ac``.

``full`` checkpoints whole transformer blocks (the first ``recompute_layers`` blocks of the stage, or
all); ``selective`` checkpoints only the attention core (softmax(QKᵀ)V), whose activations grow with s².
"""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

__all__ = ["apply_recompute"]


def apply_recompute(chunk: nn.Module, mode: str, recompute_layers: int | None = None) -> None:
    """Wrap blocks (``full``) or attention cores (``selective``) of ``chunk`` in place; ``none`` is a no-op."""
    if mode == "none":
        return
    names = list(chunk.layers.keys())
    if mode == "full":
        for name in names[: len(names) if recompute_layers is None else recompute_layers]:
            chunk.layers[name] = checkpoint_wrapper(chunk.layers[name])
    elif mode == "selective":
        for name in names:
            attention = chunk.layers[name].attention
            attention.core = checkpoint_wrapper(attention.core)
    else:
        raise ValueError(f"recompute={mode!r} must be one of none, selective, full")
