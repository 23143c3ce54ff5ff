"""Which model shapes each framework's GPT model can build: one table, read by the exporters.

The layout rules live in :mod:`autotune.search.frameworks`; these are the ModelSpec fields beyond a Llama/GPT
block (decoupled head_dim, GeGLU and squared ReLU, q/k norms, post/sandwich norms, sliding windows) that an
exporter must either spell as flags or refuse by name, never drop (which would export a different model).

Sources (the releases the exporters target):

- Megatron-LM core_v0.19.0 ``megatron/training/arguments.py``: ``--kv-channels`` (head_dim), ``--squared-relu``,
  ``--qk-layernorm`` (a norm over each head's channels, RMSNorm with ``--normalization RMSNorm``),
  ``--window-size`` and ``--window-attn-skip-freq`` (one full layer after N-1 windowed ones). Its transformer
  layer is pre-norm only, and its gated GELU is ``--quick-geglu`` (x·sigmoid(1.702x)), not Gemma's tanh GELU.
- Megatron-DeepSpeed ``megatron/arguments.py``: ``--kv-channels``; GELU or ``--swiglu`` MLPs, no q/k norm, no
  sliding window, pre-norm layers.
- torchtitan 0.3.0: only its registered Llama 3 configs (:mod:`autotune.export.torchtitan` matches them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from autotune.errors import InfeasibleConfig
from autotune.spec import ModelSpec

__all__ = ["ModelRule", "MODEL_RULES", "require_model_supported"]


@dataclass(frozen=True, kw_only=True)
class ModelRule:
    """One shape a framework cannot build."""

    field: str
    """The ModelSpec field the rule constrains."""
    ok: Callable[[ModelSpec], bool]
    """True when the framework builds the model's value of ``field``."""
    reason: str
    """Why not (after ``<field>=<value> is not supported``)."""


_PRE_NORM = ModelRule(field="norm_placement", ok=lambda m: m.norm_placement == "pre",
                      reason="its transformer layer normalises sub-layer inputs only (pre-norm)")

MODEL_RULES: dict[str, tuple[ModelRule, ...]] = {
    "megatron": (
        ModelRule(field="activation", ok=lambda m: m.activation != "geglu",
                  reason="Megatron-LM's gated GELU is --quick-geglu, x·sigmoid(1.702x), not the tanh GELU"),
        _PRE_NORM,
        ModelRule(field="qk_norm_scope", ok=lambda m: not m.qk_norm or m.qk_norm_scope == "head",
                  reason="--qk-layernorm normalises each head, not the whole projection"),
    ),
    "deepspeed": (
        ModelRule(field="activation", ok=lambda m: m.activation in ("gelu", "swiglu"),
                  reason="Megatron-DeepSpeed builds GELU or --swiglu MLPs"),
        _PRE_NORM,
        ModelRule(field="qk_norm", ok=lambda m: not m.qk_norm, reason="Megatron-DeepSpeed has no q/k norm"),
        ModelRule(field="sliding_window", ok=lambda m: m.sliding_window is None,
                  reason="Megatron-DeepSpeed has no sliding-window attention"),
    ),
}
"""Shape limits per framework; a framework without an entry builds every shape its exporter spells."""


def require_model_supported(framework: str, model: ModelSpec) -> None:
    """Raise :class:`InfeasibleConfig` naming the framework, model and field when ``framework`` cannot build
    ``model``."""
    for rule in MODEL_RULES.get(framework, ()):
        if not rule.ok(model):
            value = getattr(model, rule.field)
            raise InfeasibleConfig(f"{framework}: model {model.name!r}: {rule.field}={value} is not supported"
                                   f" ({rule.reason})")
