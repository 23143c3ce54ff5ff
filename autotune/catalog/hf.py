"""Import a Hugging Face ``config.json`` into a :class:`ModelSpec`, without the transformers package.

Supported ``architectures``: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (q/k/v biases),
GPT2LMHeadModel (n_embd, n_layer, n_head, n_inner; tied, GELU 4h, learned positions) and
GPTNeoXForCausalLM (parallel attention; biases; rotary); Mistral's ``sliding_window`` (4096 in v0.1, null
from v0.2) windows every layer. The RoPE base is ``rope_theta`` (Llama, Mistral,
Qwen2; ``rotary_emb_base`` for GPT-NeoX), 10000 when absent (the transformers default for all four).
Architectures of :data:`DENSE_BUILDERS` (shapes and defaults from transformers v4.51.0,
``src/transformers/models/<name>/configuration_<name>.py`` and ``modeling_<name>.py``):

* NemotronForCausalLM (Nemotron-4, Minitron): ``NemotronMLP`` is up_proj → relu2 (relu(x)²) → down_proj, no
  gate; ``NemotronLayerNorm1P`` is a LayerNorm with weight and bias (it normalises with weight + 1: same
  parameters and cost); partial rotary (``partial_rotary_factor`` 0.5) rotates half of each head (no
  parameters); ``head_dim`` decoupled; biases from ``attention_bias`` (q, k, v, o) and ``mlp_bias``.
* Gemma2ForCausalLM / Gemma3ForCausalLM (text model): gate/up/down MLP with tanh-GELU (GeGLU), ``head_dim``
  decoupled, four RMSNorms per block (input, post_attention, pre_feedforward, post_feedforward), tied
  embeddings scaled by sqrt(h) and soft-capped logits (neither changes parameters or cost); sliding-window
  layers: Gemma 2 alternates (``layer_idx % 2 == 0`` windowed), Gemma 3 has one full layer in
  ``sliding_window_pattern`` (6); Gemma 3 adds per-head q/k RMSNorm. ``layer_types`` (newer config files)
  gives the same pattern explicitly.
* Qwen3ForCausalLM (dense): Llama with per-head q/k RMSNorm ("unlike olmo, only on the head dim") and
  decoupled ``head_dim``.
* Olmo2ForCausalLM: no input norm; ``post_attention_layernorm`` and ``post_feedforward_layernorm`` on the
  sub-layer outputs (x + norm(f(x))); q/k RMSNorm over the whole projections (heads·d and kv_heads·d).
* Phi3ForCausalLM: fused ``qkv_proj`` (h × (heads + 2·kv_heads)·d) and ``gate_up_proj`` (h × 2f), the same
  parameters as separate matrices; ``sliding_window`` on every layer (Phi-3-mini-4k: 2047).

Mixture-of-experts models: MixtralForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM, DeepseekV2ForCausalLM,
DeepseekV3ForCausalLM (multi-head latent attention; the multi-token-prediction layers are not part of the model)
and GptOssForCausalLM (see :data:`MOE_BUILDERS`). Anything else is refused by name rather than counted wrongly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from autotune.errors import SpecError
from autotune.spec import ModelSpec, format_validation_error

__all__ = ["from_hf_config", "SUPPORTED", "BUILDERS", "DENSE_BUILDERS", "MOE_BUILDERS"]



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


def _rope_theta(cfg: dict[str, Any]) -> Any:
    """``rope_theta``, or ``rope_parameters.rope_theta`` (transformers >= 4.57 files); 10000 when absent."""
    nested = cfg.get("rope_parameters")
    if isinstance(nested, dict) and "rope_theta" in nested:
        return nested["rope_theta"]
    return cfg.get("rope_theta", 10000.0)


def _no_bias(cfg: dict[str, Any], arch: str, *keys: str) -> str:
    """``"none"``; refuses a bias flag these architectures put on layers ModelSpec.bias cannot name."""
    for key in keys:
        if cfg.get(key):
            raise SpecError(f"model: {arch} with {key}=true is not supported (its biases span layers that "
                            f"ModelSpec.bias none|qkv|all cannot express)")
    return "none"


def _window_every(cfg: dict[str, Any], default: Any) -> Any:
    """Every how many layers one attends to all keys: from ``layer_types`` when the file has it, else the
    architecture's fixed pattern ``default``; a pattern that is not "one full layer every k" is refused."""
    types = cfg.get("layer_types")
    if types is None:
        return default
    kinds = ("full_attention", "sliding_attention")
    if not isinstance(types, list) or not types or any(t not in kinds for t in types):
        raise SpecError(f"model: config.json field 'layer_types' must be a list of {' or '.join(kinds)}")
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    if not full:
        return None
    k = full[0] + 1
    if full != list(range(k - 1, len(types), k)):
        raise SpecError(f"model: layer_types {types} is not one full_attention layer every k layers"
                        " (the only mixed pattern modelled)")
    return k


def _dense(cfg: dict[str, Any], arch: str, **fields: Any) -> dict[str, Any]:
    """The fields the newer dense architectures share (Llama names in config.json, decoupled head_dim)."""
    return dict(
        layers=_req(cfg, "num_hidden_layers"), hidden=_req(cfg, "hidden_size"),
        heads=_req(cfg, "num_attention_heads"),
        kv_heads=cfg.get("num_key_value_heads") or cfg.get("num_attention_heads"),
        head_dim=cfg.get("head_dim"), ffn_hidden=_req(cfg, "intermediate_size"), vocab=_req(cfg, "vocab_size"),
        norm="rmsnorm", bias=_no_bias(cfg, arch, "attention_bias"), position_embedding="rope",
        rope_theta=_rope_theta(cfg), max_seq_len=cfg.get("max_position_embeddings", 4096),
    ) | fields


def _nemotron(cfg: dict[str, Any]) -> dict[str, Any]:
    both = bool(cfg.get("attention_bias")) and bool(cfg.get("mlp_bias"))
    fields = _dense(cfg, "NemotronForCausalLM", activation="relu2", norm="layernorm",
                    tied_embeddings=bool(cfg.get("tie_word_embeddings", False)))
    return fields | {"bias": "all" if both else _no_bias(cfg, "NemotronForCausalLM", "attention_bias", "mlp_bias")}


def _gemma(cfg: dict[str, Any], arch: str, every: Any, qk_norm: bool) -> dict[str, Any]:
    window = cfg.get("sliding_window")
    return _dense(cfg, arch, activation="geglu", tied_embeddings=bool(cfg.get("tie_word_embeddings", True)),
                  norm_placement="sandwich", qk_norm=qk_norm, sliding_window=window,
                  full_attention_every=_window_every(cfg, every) if window else None)


def _qwen3(cfg: dict[str, Any]) -> dict[str, Any]:
    if cfg.get("use_sliding_window"):
        raise SpecError("model: Qwen3ForCausalLM with use_sliding_window=true is not supported (windows on the "
                        "layers from max_window_layers on are not modelled)")
    return _dense(cfg, "Qwen3ForCausalLM", activation="swiglu", qk_norm=True,
                  tied_embeddings=bool(cfg.get("tie_word_embeddings", False)))


def _olmo2(cfg: dict[str, Any]) -> dict[str, Any]:
    return _dense(cfg, "Olmo2ForCausalLM", activation="swiglu", qk_norm=True, qk_norm_scope="projection",
                  norm_placement="post", tied_embeddings=bool(cfg.get("tie_word_embeddings", False)))


def _phi3(cfg: dict[str, Any]) -> dict[str, Any]:
    drop = any(cfg.get(k) for k in ("resid_pdrop", "embd_pdrop", "attention_dropout"))
    return _dense(cfg, "Phi3ForCausalLM", activation="swiglu", sliding_window=cfg.get("sliding_window"),
                  tied_embeddings=bool(cfg.get("tie_word_embeddings", False)), dropout=drop)


#: Builders of the dense architectures beyond Llama/GPT (issue 16 item 6); the MoE ones go in their own table.
DENSE_BUILDERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "NemotronForCausalLM": _nemotron,
    "Gemma2ForCausalLM": lambda c: _gemma(c, "Gemma2ForCausalLM", every=2, qk_norm=False),
    "Gemma3ForCausalLM": lambda c: _gemma(c, "Gemma3ForCausalLM", every=c.get("sliding_window_pattern", 6),
                                          qk_norm=True),
    "Qwen3ForCausalLM": _qwen3,
    "Olmo2ForCausalLM": _olmo2,
    "Phi3ForCausalLM": _phi3,
}


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
    num_experts_per_tok (``experts_per_token`` in OpenAI's own config.json); layers alternate a
    ``sliding_window`` (128) with full attention, sliding first (``layer_types``)."""
    top_k = cfg.get("num_experts_per_tok") or _req(cfg, "experts_per_token")
    fields = _llama_like(cfg, "all" if cfg.get("attention_bias", True) else "none")
    window = dict(sliding_window=cfg["sliding_window"], full_attention_every=_window_every(cfg, 2)) if cfg.get(
        "sliding_window") else {}
    return _head_dim(cfg, fields) | window | dict(experts=_req(cfg, "num_local_experts"), experts_per_token=top_k)


#: Builders of the mixture-of-experts architectures.
MOE_BUILDERS = {
    "MixtralForCausalLM": _mixtral,
    "Qwen2MoeForCausalLM": _qwen2_moe,
    "Qwen3MoeForCausalLM": _qwen3_moe,
    "DeepseekV2ForCausalLM": _deepseek,
    "DeepseekV3ForCausalLM": _deepseek,
    "GptOssForCausalLM": _gpt_oss,
}

#: config.json ``architectures`` name -> ModelSpec fields.
BUILDERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "LlamaForCausalLM": lambda c: _llama_like(c, "none"),
    "MistralForCausalLM": lambda c: _llama_like(c, "none") | {"sliding_window": c.get("sliding_window")},
    "Qwen2ForCausalLM": lambda c: _llama_like(c, "qkv"),
    "GPT2LMHeadModel": _gpt2,
    "GPTNeoXForCausalLM": _neox,
} | DENSE_BUILDERS | MOE_BUILDERS
SUPPORTED: tuple[str, ...] = tuple(BUILDERS)


def from_hf_config(cfg: dict[str, Any], name: str = "hf-model") -> ModelSpec:
    """Translate a Hugging Face config dict; raises :class:`SpecError` for unsupported architectures."""
    archs = cfg.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else cfg.get("model_type", "<none>")
    if not isinstance(arch, str) or arch not in BUILDERS:
        raise SpecError(f"model: unsupported architecture {arch!r} (allowed: {', '.join(SUPPORTED)})")
    fields = BUILDERS[arch](cfg)
    try:
        return ModelSpec.model_validate({"name": name, **fields})
    except ValidationError as e:
        raise SpecError(format_validation_error(e, ModelSpec, prefix="model.")) from e
