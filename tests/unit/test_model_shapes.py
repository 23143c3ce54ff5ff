"""The reference transformer builds the Gemma / Qwen3 / OLMo 2 / Phi-3 / Nemotron shapes: parameters equal
ModelSpec's count, windows hide old keys, squared ReLU and the fused GeGLU compute what they should."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autotune.catalog.hf import from_hf_config
from autotune.spec import ModelSpec
from workers.dryrun_kernels import geglu
from workers.mlp import FeedForward
from workers.model import build_model, synthetic_batch, window_mask

BASE = {"num_hidden_layers": 3, "hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 80, "vocab_size": 64, "max_position_embeddings": 64}
# Small config.json files of each architecture: decoupled head_dim 16 (q_dim 64 != 48) where the family has it.
CONFIGS = {
    "NemotronForCausalLM": BASE | {"head_dim": 16, "hidden_act": "relu2", "partial_rotary_factor": 0.5},
    "Gemma2ForCausalLM": BASE | {"head_dim": 16, "sliding_window": 4},
    "Gemma3ForCausalLM": BASE | {"head_dim": 16, "sliding_window": 4, "sliding_window_pattern": 3},
    "Qwen3ForCausalLM": BASE | {"head_dim": 16, "tie_word_embeddings": True},
    "Olmo2ForCausalLM": BASE,
    "Phi3ForCausalLM": BASE | {"sliding_window": 5},
}


def _spec(arch: str) -> ModelSpec:
    return from_hf_config({"architectures": [arch], **CONFIGS[arch]})


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_parameter_count_matches_formula(arch: str) -> None:
    spec = _spec(arch)
    model = build_model(spec, seq_len=16)
    assert sum(p.numel() for p in model.parameters()) == spec.param_count()
    inputs, _ = synthetic_batch(spec.vocab, 16, 2, step=0)
    assert model(inputs).shape == (2, 16, spec.vocab)


def test_window_mask_by_hand() -> None:
    # w = 2: each query sees itself and the key before it.
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(window_mask(4, 2), expected)


def test_windowed_layers_forget_tokens_outside_the_window() -> None:
    # One windowed layer (w = 4): position 10 depends on tokens 7..10 only, so changing token 0 leaves it;
    # with full attention (Gemma 2's layer 1) it changes.
    windowed = _spec("Phi3ForCausalLM").model_copy(update={"layers": 1, "sliding_window": 4})
    x, _ = synthetic_batch(windowed.vocab, 16, 1, step=0)
    y = x.clone()
    y[0, 0] = (y[0, 0] + 1) % windowed.vocab
    model = build_model(windowed, seq_len=16)
    torch.testing.assert_close(model(x)[:, 4:], model(y)[:, 4:])
    full = build_model(windowed.model_copy(update={"sliding_window": None}), seq_len=16)
    assert not torch.allclose(full(x)[:, 10], full(y)[:, 10])


def test_squared_relu_mlp() -> None:
    spec = _spec("NemotronForCausalLM")
    mlp = FeedForward(spec)
    x = torch.randn(3, spec.hidden)
    torch.testing.assert_close(mlp(x), mlp.w2(torch.relu(mlp.w1(x)) ** 2))
    assert mlp.w3 is None


def test_fused_geglu_matches_eager_with_gradients() -> None:
    a = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 7, dtype=torch.float64)
    fused = geglu(a, b)
    ga, gb = torch.autograd.grad(fused, (a, b), g)
    eager = F.gelu(a, approximate="tanh") * b
    ea, eb = torch.autograd.grad(eager, (a, b), g)
    torch.testing.assert_close(fused, eager)
    torch.testing.assert_close((ga, gb), (ea, eb))
