"""Import a Hugging Face ``config.json`` into a :class:`ModelSpec`, without the transformers package.

Supported ``architectures``: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (q/k/v biases),
GPT2LMHeadModel (n_embd, n_layer, n_head, n_inner; tied, GELU 4h, learned positions) and
GPTNeoXForCausalLM (parallel attention; biases; rotary). The RoPE base is ``rope_theta`` (Llama, Mistral,
Qwen2; ``rotary_emb_base`` for GPT-NeoX), 10000 when absent (the transformers default for all four).
Anything else — mixture-of-experts models in
particular — is refused by name rather than counted wrongly.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from autotune.errors import SpecError
from autotune.spec import ModelSpec, format_validation_error

__all__ = ["from_hf_config", "SUPPORTED"]

SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel", "GPTNeoXForCausalLM")


def _req(cfg: dict[str, Any], key: str) -> Any:
    if key not in cfg:
        raise SpecError(f"model: config.json field {key!r} is missing")
    return cfg[key]


def _llama_like(cfg: dict[str, Any], bias: str) -> dict[str, Any]:
    return dict(
        layers=_req(cfg, "num_hidden_layers"),
        hidden=_req(cfg, "hidden_size"),
        heads=_req(cfg, "num_attention_heads"),
        kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        ffn_hidden=_req(cfg, "intermediate_size"),
        vocab=_req(cfg, "vocab_size"),
        activation="swiglu",
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        norm="rmsnorm",
        bias=bias,
        position_embedding="rope",
        rope_theta=cfg.get("rope_theta", 10000.0),
        max_seq_len=cfg.get("max_position_embeddings", 4096),
    )


def _gpt2(cfg: dict[str, Any]) -> dict[str, Any]:
    h = _req(cfg, "n_embd")
    return dict(
        layers=_req(cfg, "n_layer"), hidden=h, heads=_req(cfg, "n_head"),
        ffn_hidden=cfg.get("n_inner") or (4 * h if type(h) is int else None),  # else hidden's own error
        vocab=_req(cfg, "vocab_size"), activation="gelu", tied_embeddings=True, norm="layernorm", bias="all",
        position_embedding="learned", max_seq_len=cfg.get("n_positions", 1024), dropout=True,
    )


def _neox(cfg: dict[str, Any]) -> dict[str, Any]:
    return dict(
        layers=_req(cfg, "num_hidden_layers"), hidden=_req(cfg, "hidden_size"), heads=_req(cfg, "num_attention_heads"),
        ffn_hidden=_req(cfg, "intermediate_size"), vocab=_req(cfg, "vocab_size"), activation="gelu",
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)), norm="layernorm", bias="all",
        position_embedding="rope", rope_theta=cfg.get("rotary_emb_base", 10000.0),
        max_seq_len=cfg.get("max_position_embeddings", 2048),
    )


def from_hf_config(cfg: dict[str, Any], name: str = "hf-model") -> ModelSpec:
    """Translate a Hugging Face config dict; raises :class:`SpecError` for unsupported architectures."""
    archs = cfg.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else cfg.get("model_type", "<none>")
    moe_keys = [k for k in ("num_local_experts", "num_experts", "n_routed_experts") if cfg.get(k)]
    if moe_keys:
        raise SpecError(f"model: {arch} is a mixture-of-experts model ({moe_keys[0]}={cfg[moe_keys[0]]});"
                        f" only dense models are supported ({', '.join(SUPPORTED)})")
    builders = {
        "LlamaForCausalLM": lambda c: _llama_like(c, "none"),
        "MistralForCausalLM": lambda c: _llama_like(c, "none"),
        "Qwen2ForCausalLM": lambda c: _llama_like(c, "qkv"),
        "GPT2LMHeadModel": _gpt2,
        "GPTNeoXForCausalLM": _neox,
    }
    if not isinstance(arch, str) or arch not in builders:
        raise SpecError(f"model: unsupported architecture {arch!r} (allowed: {', '.join(SUPPORTED)})")
    fields = builders[arch](cfg)
    try:
        return ModelSpec.model_validate({"name": name, **fields})
    except ValidationError as e:
        raise SpecError(format_validation_error(e, ModelSpec, prefix="model.")) from e
