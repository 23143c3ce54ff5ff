"""The reference transformer's dense MLP and its activations (:class:`FeedForward`), shared by the dense layers and
the MoE block's shared experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autotune.spec import ModelSpec

__all__ = ["ACTIVATIONS", "FeedForward"]


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
