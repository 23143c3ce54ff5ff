"""Import a Hugging Face ``config.json`` into a :class:`ModelSpec`, without the transformers package.

Supported ``architectures``: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (q/k/v biases),
GPT2LMHeadModel (n_embd, n_layer, n_head, n_inner; tied, GELU 4h, learned positions) and
GPTNeoXForCausalLM (parallel attention; biases; rotary). The RoPE base is ``rope_theta`` (Llama, Mistral,
Qwen2; ``rotary_emb_base`` for GPT-NeoX), 10000 when absent (the transformers default for all four).
Mixture-of-experts models: MixtralForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM, DeepseekV2ForCausalLM,
DeepseekV3ForCausalLM (multi-head latent attention; the multi-token-prediction layers are not part of the model)
and GptOssForCausalLM (see :data:`MOE_BUILDERS`). Anything else is refused by name rather than counted wrongly.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from autotune.errors import SpecError
from autotune.spec import ModelSpec, format_validation_error

__all__ = ["from_hf_config", "SUPPORTED", "MOE_BUILDERS"]

SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel", "GPTNeoXForCausalLM",
             "MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "DeepseekV2ForCausalLM",
             "DeepseekV3ForCausalLM", "GptOssForCausalLM")


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


# Mixture-of-experts architectures: field names of transformers' MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig,
# DeepseekV2Config / DeepseekV3Config and GptOssConfig (transformers v4.57).
def _head_dim(cfg: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """``head_dim`` only where it differs from hidden / heads (Qwen3, gpt-oss), so nothing changes elsewhere."""
    hd = cfg.get("head_dim")
    heads = fields["heads"]
    same = hd is None or (type(heads) is int and heads > 0 and hd * heads == fields["hidden"])
    return fields if same else fields | {"head_dim": hd}


def _mixtral(cfg: dict[str, Any]) -> dict[str, Any]:
    return _llama_like(cfg, "none") | dict(experts=_req(cfg, "num_local_experts"),
                                           experts_per_token=_req(cfg, "num_experts_per_tok"))


def _qwen_moe_layers(cfg: dict[str, Any], arch: str) -> dict[str, Any]:
    """Qwen2MoeDecoderLayer: layer i is MoE when i is not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0,
    i.e. layers k-1, 2k-1, ...; a leading run of mlp_only_layers is first_dense_layers (step 1 only)."""
    step, only = cfg.get("decoder_sparse_step", 1) or 1, cfg.get("mlp_only_layers") or []
    if only and (step != 1 or only != list(range(len(only)))):
        raise SpecError(f"model: {arch} mlp_only_layers={only} with decoder_sparse_step={step} is not a layer"
                        " pattern autotune models (leading dense layers, then every k-th layer MoE)")
    return dict(first_dense_layers=len(only) if only else step - 1, moe_every=step)


def _qwen2_moe(cfg: dict[str, Any]) -> dict[str, Any]:
    shared = cfg.get("shared_expert_intermediate_size") or 0
    return _llama_like(cfg, "qkv") | _qwen_moe_layers(cfg, "Qwen2MoeForCausalLM") | dict(
        experts=_req(cfg, "num_experts"), experts_per_token=_req(cfg, "num_experts_per_tok"),
        expert_ffn_hidden=_req(cfg, "moe_intermediate_size"), shared_experts=1 if shared else 0,
        shared_expert_ffn_hidden=shared or None)


def _qwen3_moe(cfg: dict[str, Any]) -> dict[str, Any]:
    fields = _llama_like(cfg, "qkv" if cfg.get("attention_bias") else "none")
    return _head_dim(cfg, fields) | _qwen_moe_layers(cfg, "Qwen3MoeForCausalLM") | dict(
        experts=_req(cfg, "num_experts"), experts_per_token=_req(cfg, "num_experts_per_tok"),
        expert_ffn_hidden=_req(cfg, "moe_intermediate_size"))


def _deepseek(cfg: dict[str, Any]) -> dict[str, Any]:
    """DeepseekV2/V3DecoderLayer: layer i is MoE when i >= first_k_dense_replace and i % moe_layer_freq == 0; the
    n_shared_experts shared experts are one MLP of n_shared_experts x moe_intermediate_size (same parameters)."""
    first, freq = cfg.get("first_k_dense_replace", 0) or 0, cfg.get("moe_layer_freq", 1) or 1
    if first % freq:
        raise SpecError(f"model: first_k_dense_replace={first} is not a multiple of moe_layer_freq={freq}: not a"
                        " layer pattern autotune models (leading dense layers, then every k-th layer MoE)")
    fields = _llama_like(cfg, "none") | dict(kv_heads=None)
    return fields | dict(
        experts=_req(cfg, "n_routed_experts"), experts_per_token=_req(cfg, "num_experts_per_tok"),
        expert_ffn_hidden=_req(cfg, "moe_intermediate_size"), shared_experts=cfg.get("n_shared_experts") or 0,
        first_dense_layers=first, moe_every=freq, q_lora_rank=cfg.get("q_lora_rank"),
        kv_lora_rank=_req(cfg, "kv_lora_rank"), qk_rope_head_dim=_req(cfg, "qk_rope_head_dim"),
        qk_nope_head_dim=_req(cfg, "qk_nope_head_dim"), v_head_dim=_req(cfg, "v_head_dim"))


def _gpt_oss(cfg: dict[str, Any]) -> dict[str, Any]:
    """GptOssForCausalLM: biases on q/k/v/o, the router and the experts (bias='all'); top-k is
    num_experts_per_tok (``experts_per_token`` in OpenAI's own config.json)."""
    top_k = cfg.get("num_experts_per_tok") or _req(cfg, "experts_per_token")
    fields = _llama_like(cfg, "all" if cfg.get("attention_bias", True) else "none")
    return _head_dim(cfg, fields) | dict(experts=_req(cfg, "num_local_experts"), experts_per_token=top_k)


#: Builders of the mixture-of-experts architectures.
MOE_BUILDERS = {
    "MixtralForCausalLM": _mixtral,
    "Qwen2MoeForCausalLM": _qwen2_moe,
    "Qwen3MoeForCausalLM": _qwen3_moe,
    "DeepseekV2ForCausalLM": _deepseek,
    "DeepseekV3ForCausalLM": _deepseek,
    "GptOssForCausalLM": _gpt_oss,
}


def from_hf_config(cfg: dict[str, Any], name: str = "hf-model") -> ModelSpec:
    """Translate a Hugging Face config dict; raises :class:`SpecError` for unsupported architectures."""
    archs = cfg.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else cfg.get("model_type", "<none>")
    builders = {
        "LlamaForCausalLM": lambda c: _llama_like(c, "none"),
        "MistralForCausalLM": lambda c: _llama_like(c, "none"),
        "Qwen2ForCausalLM": lambda c: _llama_like(c, "qkv"),
        "GPT2LMHeadModel": _gpt2,
        "GPTNeoXForCausalLM": _neox,
        **MOE_BUILDERS,
    }
    if not isinstance(arch, str) or arch not in builders:
        raise SpecError(f"model: unsupported architecture {arch!r} (allowed: {', '.join(SUPPORTED)})")
    fields = builders[arch](cfg)
    try:
        return ModelSpec.model_validate({"name": name, **fields})
    except ValidationError as e:
        raise SpecError(format_validation_error(e, ModelSpec, prefix="model.")) from e
