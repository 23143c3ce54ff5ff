"""The study spec: what to train (model), where (cluster), how much (training) and how to search.

A spec is a YAML or TOML file validated with pydantic. Unknown keys are rejected, and every error
names the field path and the allowed values (see :func:`format_validation_error`).
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autotune.errors import SpecError

__all__ = [
    "ModelSpec",
    "GPUSpec",
    "AttentionKernel",
    "StackSpec",
    "ATTENTION_KERNELS",
    "ClusterSpec",
    "ReliabilitySpec",
    "TrainingSpec",
    "SearchSpec",
    "StudySpec",
    "Precision",
    "Sampler",
    "SAMPLERS",
    "Fidelity",
    "FIDELITIES",
    "NAME_PATTERN",
    "load_spec",
    "parse_spec",
    "read_mapping",
    "format_validation_error",
]

Precision = Literal["fp32", "bf16", "fp16", "fp8"]
Sampler = Literal["auto", "tpe", "gp", "random", "nsga2", "grid", "thompson"]
#: Sampler names; ``auto`` enumerates an analytic study and runs ``tpe`` at the expensive fidelities.
SAMPLERS: tuple[str, ...] = get_args(Sampler)
Fidelity = Literal["analytic", "dryrun", "measure"]
#: Evaluation fidelities, cheapest (least trustworthy) first.
FIDELITIES: tuple[str, ...] = get_args(Fidelity)
#: Study and profile names: letters, digits, ``._-`` (they appear in file names).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(_Frozen):
    """Shape of a dense decoder-only transformer."""

    name: str = Field("custom", description="Display name.")
    layers: PosInt = Field(description="Number of transformer blocks L.")
    hidden: PosInt = Field(description="Model width h.")
    heads: PosInt = Field(description="Attention (query) heads a.")
    kv_heads: PosInt | None = Field(None, description="Key/value heads (GQA); default = heads (MHA).")
    ffn_hidden: PosInt | None = Field(None, description="MLP inner width f; default 4h.")
    vocab: PosInt = Field(description="Vocabulary size V.")
    activation: Literal["gelu", "swiglu", "geglu", "relu2"] = Field(
        "gelu", description="MLP: 2-matrix GELU, 3-matrix SwiGLU (silu gate), 3-matrix GeGLU (tanh-GELU gate, "
        "Gemma) or 2-matrix squared ReLU (relu(x)², Nemotron-4).")
    tied_embeddings: bool = Field(False, description="Output layer shares the input embedding matrix.")
    norm: Literal["layernorm", "rmsnorm"] = Field("layernorm", description="LayerNorm (2h) or RMSNorm (h).")
    bias: Literal["none", "qkv", "all"] = Field("none", description="Which linear layers carry biases.")
    position_embedding: Literal["learned", "rope"] = Field("rope", description="Learned table or RoPE.")
    rope_theta: PosFloat = Field(
        10000.0, description="RoPE base (theta) of the rotary frequencies; 10000 is the RoFormer value and"
        " Megatron-LM's default (Llama 3 uses 500000). Ignored with learned positions.")
    max_seq_len: PosInt = Field(2048, description="Positions of a learned table; longest trained sequence.")
    dropout: bool = Field(False, description="Dropout layers present (stores 1-byte masks).")
    # Shapes beyond Llama/GPT (Gemma 2/3, Qwen3, OLMo 2, Phi-3, Nemotron-4; issue 16 item 6).
    head_dim: PosInt | None = Field(
        None, description="Width d of one attention head; default h / heads. Gemma, Qwen3 and Minitron decouple "
        "it: queries project h -> heads·d, keys and values h -> kv_heads·d, the output heads·d -> h.")
    qk_norm: bool = Field(False, description="RMSNorm on queries and keys before RoPE (Qwen3, Gemma 3, OLMo 2).")
    qk_norm_scope: Literal["head", "projection"] = Field(
        "head", description="qk_norm over each head's d channels, one weight of d shared by the heads (Qwen3, "
        "Gemma 3: 2d parameters), or over the whole q and k projections (OLMo 2: heads·d + kv_heads·d).")
    norm_placement: Literal["pre", "post", "sandwich"] = Field(
        "pre", description="A block's norms: pre x + f(norm(x)) (Llama, GPT; 2 per layer), post x + norm(f(x)) "
        "(OLMo 2; 2 per layer) or sandwich x + norm(f(norm(x))) (Gemma 2/3; 4 per layer).")
    sliding_window: PosInt | None = Field(
        None, description="Keys a windowed layer attends to (the query's own and the w-1 before it); None = full "
        "causal attention in every layer.")
    full_attention_every: PosInt | None = Field(
        None, description="With sliding_window: every k-th layer (layers k-1, 2k-1, ... counted from 0) attends to "
        "all keys (Gemma 2: 2, Gemma 3: 6); None = every layer is windowed (Mistral 7B v0.1, Phi-3).")
    # Mixture of experts (Megatron-LM core_v0.19.0 --num-experts ...) and multi-head latent attention (DeepSeek-V2).
    experts: Annotated[int, Field(ge=0)] = Field(0, description="Routed experts per MoE layer; 0 = dense model.")
    experts_per_token: Annotated[int, Field(ge=0)] = Field(
        0, description="Routed experts each token goes to (top-k of a token-choice router); > 0 with experts.")
    expert_ffn_hidden: PosInt | None = Field(
        None, description="Inner width of one routed expert's MLP; default ffn_hidden (--moe-ffn-hidden-size).")
    shared_experts: Annotated[int, Field(ge=0)] = Field(
        0, description="Shared experts every token goes through besides its routed ones (DeepSeekMoE).")
    shared_expert_ffn_hidden: PosInt | None = Field(
        None, description="Inner width of one shared expert; default expert_ffn_hidden.")
    first_dense_layers: Annotated[int, Field(ge=0)] = Field(
        0, description="Leading layers with a dense MLP of width ffn_hidden (DeepSeek-V3 first_k_dense_replace).")
    moe_every: PosInt = Field(1, description="Every k-th layer after the dense ones is MoE, the others dense.")
    capacity_factor: PosFloat | None = Field(
        None, description="Expert capacity as a multiple of the balanced tokens per expert (tokens beyond it are "
        "dropped, GShard); None = dropless (Megatron-LM's default, --moe-expert-capacity-factor unset).")
    router: Literal["token_choice"] = Field("token_choice", description="Router kind: top-k token choice.")
    q_lora_rank: PosInt | None = Field(None, description="MLA: rank of the query down-projection; None = full q.")
    kv_lora_rank: PosInt | None = Field(None, description="MLA: rank of the compressed key/value latent; setting it "
                                        "selects multi-head latent attention.")
    qk_rope_head_dim: PosInt | None = Field(None, description="MLA: rotary part of each query/key head.")
    qk_nope_head_dim: PosInt | None = Field(None, description="MLA: non-rotary part of each query/key head.")
    v_head_dim: PosInt | None = Field(None, description="MLA: width of each value head.")

    @model_validator(mode="after")
    def _check_moe(self) -> ModelSpec:
        if (self.experts > 0) != (self.experts_per_token > 0):
            raise ValueError(f"experts={self.experts} and experts_per_token={self.experts_per_token}: "
                             "set both (a mixture of experts) or neither (dense)")
        if self.experts_per_token > self.experts:
            raise ValueError(f"experts_per_token={self.experts_per_token} exceeds experts={self.experts}")
        if self.experts and self.moe_layers == 0:
            raise ValueError(f"first_dense_layers={self.first_dense_layers} and moe_every={self.moe_every} leave"
                             f" no MoE layer among layers={self.layers}")
        mla = ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
        unset = [k for k in mla if getattr(self, k) is None]
        if self.kv_lora_rank is not None and unset:
            raise ValueError(f"multi-head latent attention (kv_lora_rank={self.kv_lora_rank}) needs {', '.join(unset)}")
        if self.kv_lora_rank is None and (set_ := [k for k in (*mla, "q_lora_rank") if getattr(self, k)]):
            raise ValueError(f"{', '.join(set_)} need kv_lora_rank (multi-head latent attention)")
        return self

    @property
    def is_moe(self) -> bool:
        """True for a mixture-of-experts model (experts > 0)."""
        return self.experts > 0

    @property
    def is_mla(self) -> bool:
        """True for multi-head latent attention (kv_lora_rank set)."""
        return self.kv_lora_rank is not None

    @property
    def moe_layers(self) -> int:
        """MoE layers: layers first_dense_layers, first_dense_layers + moe_every, ... (0 for a dense model)."""
        if not self.is_moe or self.layers <= self.first_dense_layers:
            return 0
        return (self.layers - self.first_dense_layers - 1) // self.moe_every + 1

    def is_moe_layer(self, i: int) -> bool:
        """True when layer ``i`` (from 0) is an MoE layer: after ``first_dense_layers``, every ``moe_every``-th
        (the layers :attr:`moe_layers` counts)."""
        return self.is_moe and i >= self.first_dense_layers and (i - self.first_dense_layers) % self.moe_every == 0

    @property
    def expert_ffn(self) -> int:
        """Inner width of one routed expert."""
        return self.expert_ffn_hidden or self.ffn

    @property
    def shared_expert_ffn(self) -> int:
        """Inner width of one shared expert."""
        return self.shared_expert_ffn_hidden or self.expert_ffn

    def _norm(self, width: int) -> int:
        return 2 * width if self.norm == "layernorm" else width

    def mla_params(self) -> int:
        """Parameters of one multi-head latent attention block (DeepSeek-V2, Liu et al. 2024, §2.1).

        Query: h×q_lora + norm(q_lora) + q_lora×a·(nope + rope), or h×a·(nope + rope) without a q rank; key/value:
        h×(kv_lora + rope) (the latent plus the shared rotary key) + norm(kv_lora) + kv_lora×a·(nope + v); output
        a·v×h. Shapes of transformers' DeepseekV3Attention (q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj).
        """
        h, a, qk = self.hidden, self.heads, (self.qk_nope_head_dim or 0) + (self.qk_rope_head_dim or 0)
        kvl, v = self.kv_lora_rank or 0, self.v_head_dim or 0
        ql = self.q_lora_rank
        q = h * a * qk if ql is None else h * ql + self._norm(ql) + ql * a * qk
        kv = h * (kvl + (self.qk_rope_head_dim or 0)) + self._norm(kvl) + kvl * a * ((self.qk_nope_head_dim or 0) + v)
        return q + kv + a * v * h

    def mlp_params(self, width: int) -> int:
        """One MLP (a dense layer's or one expert's) of inner width ``width``, biases included with bias='all'."""
        gated = self.mlp_matrices == 3
        bias = ((2 * width if gated else width) + self.hidden) if self.bias == "all" else 0
        return (3 if gated else 2) * self.hidden * width + bias

    def router_params(self) -> int:
        """The router's linear layer h×experts (plus a bias with bias='all', GPT-OSS)."""
        return self.hidden * self.experts + (self.experts if self.bias == "all" else 0)

    def moe_layer_params(self, active: bool = False) -> int:
        """One MoE block: the dense block with its MLP replaced by router + routed experts + shared experts.

        ``active``: only the experts_per_token routed experts one token runs through.
        """
        routed = self.experts_per_token if active else self.experts
        moe = self.router_params() + (routed * self.mlp_params(self.expert_ffn)
                                      + self.shared_experts * self.mlp_params(self.shared_expert_ffn))
        return self.layer_params() - self.mlp_params(self.ffn) + moe

    def active_param_count(self, input_embedding: bool = True) -> int:
        """Parameters one token runs through: all but the routed experts it is not sent to (= param_count()
        for a dense model). ``input_embedding=False`` leaves out the embedding table, of which a token reads
        one row (OpenAI's gpt-oss model card counts active parameters that way; Mistral, Qwen and DeepSeek count
        the table)."""
        dense = self.layers - self.moe_layers
        body = dense * self.layer_params() + self.moe_layers * self.moe_layer_params(active=True)
        return (self.embedding_params() if input_embedding else 0) + body + self.head_params()

    @model_validator(mode="after")
    def _check_shape(self) -> ModelSpec:
        if self.head_dim is None:
            if self.hidden % self.heads:
                raise ValueError(f"hidden={self.hidden} is not divisible by heads={self.heads} (give head_dim)")
            object.__setattr__(self, "head_dim", self.hidden // self.heads)  # frozen: fill the default once
        if self.heads % self.n_kv_heads:
            raise ValueError(f"heads={self.heads} is not divisible by kv_heads={self.n_kv_heads}")
        if self.full_attention_every is not None and self.sliding_window is None:
            raise ValueError("full_attention_every needs sliding_window")
        return self

    @property
    def q_dim(self) -> int:
        """Query (and attention-output) width, heads·d."""
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Key (and value) width, kv_heads·d."""
        return self.n_kv_heads * self.head_dim

    @property
    def mlp_matrices(self) -> int:
        """h×f matrices of the MLP: 3 for the gated SwiGLU/GeGLU (gate, up, down), 2 for GELU/squared ReLU."""
        return 3 if self.activation in ("swiglu", "geglu") else 2

    @property
    def norms_per_layer(self) -> int:
        """Hidden-width norms of one block: 4 with sandwich norms (Gemma 2/3), 2 otherwise."""
        return 4 if self.norm_placement == "sandwich" else 2

    def qk_norm_params(self) -> int:
        """Weights of one layer's q/k norms: 2d per head-wise norm pair, heads·d + kv_heads·d over projections."""
        if not self.qk_norm:
            return 0
        return 2 * self.head_dim if self.qk_norm_scope == "head" else self.q_dim + self.kv_dim

    def replicated_layer_params(self) -> int:
        """Parameters of one block that tensor parallelism replicates: the hidden-width norms and head-wise
        q/k norms (OLMo 2's projection-wide q/k norms are sharded with their projections)."""
        qk = self.qk_norm_params() if self.qk_norm_scope == "head" else 0
        return self.norms_per_layer * self.norm_params() + qk

    def is_windowed(self, layer: int) -> bool:
        """Whether block ``layer`` (0-based) uses sliding-window attention (transformers' Gemma2/Gemma3
        convention: layer i attends to all keys when (i + 1) is a multiple of ``full_attention_every``)."""
        if self.sliding_window is None:
            return False
        return self.full_attention_every is None or (layer + 1) % self.full_attention_every != 0

    def attention_keys(self, seq_len: int, causal: bool = False) -> float:
        """Keys per query of the attention core, averaged over the layers.

        Without ``causal``, Narayanan et al.'s convention: every query scores all s keys of a full layer and
        min(s, w) of a windowed one. With ``causal``, the keys a causal (FlashAttention) kernel visits, the
        area of the mask per query: s/2 for a full layer, and for a window w < s the band s·w − w²/2 per s
        queries, w − w²/(2s) (s/2 when s <= w).
        """
        s = float(seq_len)
        full, windowed = (s / 2, s / 2) if causal else (s, s)
        if self.sliding_window is not None:
            w = float(self.sliding_window)
            windowed = (w - w * w / (2 * s) if s > w else s / 2) if causal else min(s, w)
        n_windowed = sum(self.is_windowed(i) for i in range(self.layers))
        return (n_windowed * windowed + (self.layers - n_windowed) * full) / self.layers

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads (equals ``heads`` for multi-head attention)."""
        return self.kv_heads or self.heads

    @property
    def ffn(self) -> int:
        """MLP inner width."""
        return self.ffn_hidden or 4 * self.hidden

    def norm_params(self) -> int:
        """Parameters of one normalisation layer (LayerNorm has a bias, RMSNorm has not)."""
        return 2 * self.hidden if self.norm == "layernorm" else self.hidden

    def layer_params(self) -> int:
        """Parameters of one transformer block.

        GPT (MHA, f = 4h, biases, LayerNorm) gives 12h² + 13h, the per-layer term of seed 002's
        N = h·v + L(12h² + 13h) + 2h. In general: q and o are h×heads·d, k and v h×kv_heads·d, the MLP
        ``mlp_matrices`` h×f, plus ``norms_per_layer`` norms and the q/k norms.
        """
        h, f, qd, kvd = self.hidden, self.ffn, self.q_dim, self.kv_dim
        attn = self.mla_params() if self.is_mla else 2 * h * qd + 2 * h * kvd
        mlp = self.mlp_matrices * h * f
        bias = 0
        if self.bias in ("qkv", "all"):
            bias += qd + 2 * kvd
        if self.bias == "all":
            bias += h + (self.mlp_matrices - 1) * f + h
        return attn + mlp + bias + self.norms_per_layer * self.norm_params() + self.qk_norm_params()

    def embedding_params(self) -> int:
        """Input embedding (and a learned position table) parameters."""
        pos = self.max_seq_len * self.hidden if self.position_embedding == "learned" else 0
        return self.vocab * self.hidden + pos

    def head_params(self) -> int:
        """Final norm plus the output projection when it is not tied to the embedding."""
        return self.norm_params() + (0 if self.tied_embeddings else self.vocab * self.hidden)

    def param_count(self) -> int:
        """Total parameters N (each tied matrix counted once); MoE layers count every expert."""
        dense = self.layers - self.moe_layers
        body = dense * self.layer_params() + self.moe_layers * self.moe_layer_params()
        return self.embedding_params() + body + self.head_params()


AttentionKernelName = Literal["flash2", "flash3", "cudnn", "ck"]
#: Fused attention kernels a GPU profile may describe (FlashAttention-2/-3, cuDNN fused attention, ROCm CK).
ATTENTION_KERNELS: tuple[str, ...] = get_args(AttentionKernelName)


class AttentionKernel(_Frozen):
    """Throughput of one fused attention kernel on one GPU, as fractions of the bf16 dense peak.

    eff(s, d) = e · s / (s + k_seq) · d / (d + k_head_dim) for s keys (the sequence of one call) and head
    dim d, FLOPs counted causally (half the score matrix); see :mod:`autotune.costmodel.compute`.
    """

    fwd: Annotated[float, Field(gt=0, le=1)] = Field(description="Forward: fraction of bf16 peak at long s.")
    bwd: Annotated[float, Field(gt=0, le=1)] = Field(description="Backward: fraction of bf16 peak at long s.")
    k_seq: Annotated[float, Field(ge=0)] = Field(description="Sequence length at which efficiency halves.")
    k_head_dim: Annotated[float, Field(ge=0)] = Field(16.0, description="Head dim term: d / (d + k_head_dim).")
    source: str = Field("", description="Where the figures come from.")


class GPUSpec(_Frozen):
    """One accelerator: peaks, memory, bandwidths and the GEMM efficiency curve."""

    name: str = Field(description="Catalog name.")
    memory_gib: PosFloat = Field(description="Device memory, GiB.")
    peak_tflops: dict[Literal["fp32", "tf32", "bf16", "fp16", "fp8"], PosFloat] = Field(
        description="Dense peak TFLOP/s per dtype (vendor datasheet)."
    )
    hbm_gbps: PosFloat = Field(description="Memory bandwidth, GB/s.")
    intra_node_gbps: PosFloat = Field(description="Per-GPU, per-direction bandwidth inside a node, GB/s.")
    inter_node_gbps: PosFloat = Field(description="Per-GPU, per-direction bandwidth between nodes, GB/s.")
    nvlink_bus_eff: Annotated[float, Field(gt=0, le=1)] = Field(
        0.80, description="Achieved fraction of intra_node_gbps in NCCL collectives (nccl-tests busbw; 1 when the "
        "figure is itself measured).")
    net_bus_eff: Annotated[float, Field(gt=0, le=1)] = Field(
        0.92, description="Achieved fraction of the NICs' line rate in multi-node NCCL collectives (nccl-tests).")
    intra_node_latency_us: PosFloat = Field(8.0, description="Collective latency per ring step inside a node.")
    inter_node_latency_us: PosFloat = Field(20.0, description="Collective latency per ring step across nodes.")
    gemm_eff_max: Annotated[float, Field(gt=0, le=0.85)] = Field(
        0.80, description="Largest achievable fraction of dense peak for big GEMMs (<= 0.85)."
    )
    gemm_k_dim: Annotated[float, Field(ge=0)] = Field(
        192.0, description="GEMM width at which efficiency halves from the width term (hidden/tp)."
    )
    gemm_k_tokens: Annotated[float, Field(ge=0)] = Field(
        96.0, description="Token count at which efficiency halves from the token term (mbs*seq/cp)."
    )
    gemm_latency_us: Annotated[float, Field(ge=0)] = Field(
        0.0, description="Fixed cost per GEMM (launch, tile ramp-up), microseconds; small GEMMs feel it most."
    )
    elementwise_bytes_per_token_hidden: Annotated[float, Field(ge=0)] = Field(
        60.0,
        description=(
            "HBM bytes moved by non-GEMM kernels (norms, activations, softmax, residual, dropout) per"
            " token per hidden unit per layer in forward; backward moves twice as much."
        ),
    )
    layer_overhead_us: Annotated[float, Field(ge=0)] = Field(
        0.0,
        description=(
            "Host-side fixed cost per layer per micro-batch, forward + backward (operator dispatch, autograd"
            " bookkeeping), microseconds. 0 for GPU profiles (kernels are queued ahead of the device); it"
            " dominates a small model on CPU ranks. Fitted by `autotune calibrate`."
        ),
    )
    tp_layer_overhead_us: Annotated[float, Field(ge=0)] = Field(
        0.0,
        description=(
            "Extra host-side cost per layer per micro-batch, forward + backward, when tp > 1 (the tensor-"
            "parallel modules' own dispatch: DTensor sharding propagation and redistribution, microseconds)."
            " 0 for GPU profiles; fitted by `autotune calibrate` from tensor-parallel training steps."
        ),
    )
    sustained_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="Tensor-core throughput in sustained training relative to the GEMM and attention "
        "benchmarks the curves come from (power-limited clocks under a full load, concurrent NCCL kernels).")
    attention: dict[AttentionKernelName, AttentionKernel] = Field(
        default_factory=dict, description="Fused attention kernels measured on this GPU (none: the attention "
        "core runs at the GEMM curve).")
    fp8_gemm_eff_max: Annotated[float, Field(gt=0, le=0.85)] | None = Field(
        None, description="Largest fraction of the fp8 peak big fp8 GEMMs reach (None: gemm_eff_max).")
    fp8_gemm_k_dim: Annotated[float, Field(ge=0)] | None = Field(
        None, description="fp8 GEMM width at which efficiency halves (None: gemm_k_dim).")
    overhead_gib: Annotated[float, Field(ge=0)] = Field(
        1.5, description="CUDA context, communicator buffers and workspace per rank, GiB."
    )
    usable_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        0.95, description="Fraction of memory usable before allocator fragmentation bites."
    )

    def peak(self, dtype: str) -> float:
        """Dense peak TFLOP/s for ``dtype``; fp8 falls back to bf16 where the GPU has none."""
        if dtype == "fp8" and "fp8" not in self.peak_tflops:
            dtype = "bf16"
        return self.peak_tflops[dtype]


class StackSpec(_Frozen):
    """A training software stack: how fast the same layout runs on Megatron-LM + Transformer Engine, torchtitan,
    llm-foundry, DeepSpeed... (catalog ``stacks.yaml``; every figure documented there with its source)."""

    name: str = Field(description="Catalog name.")
    framework: str = Field(description="The framework whose capability table and exporter the stack uses.")
    attention: list[AttentionKernelName] = Field(
        default_factory=list, description="Fused attention kernels in order of preference; the first the GPU "
        "profile describes runs (none: the GEMM curve, as an unfused or math-backend attention).")
    attention_factor: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="Fraction of the attention kernel's benchmark throughput the stack's integration reaches "
        "(1: the kernel as benchmarked).")
    elementwise_factor: Annotated[float, Field(gt=0, le=2)] = Field(
        1.0, description="Element-wise HBM traffic relative to eager PyTorch (kernel fusion lowers it).")
    layer_host_us: Annotated[float, Field(ge=0)] = Field(
        0.0, description="Host time to issue one layer's kernels per micro-batch, forward + backward, us; a layer "
        "takes at least this long (the GPU waits for the host when its kernels are shorter).")
    fp8: bool = Field(False, description="Runs linear layers in fp8 (Transformer Engine / torchao float8).")
    fp8_cast_bytes: Annotated[float, Field(ge=0)] = Field(
        4.0, description="HBM bytes per GEMM-input element to quantise to fp8 (read bf16, write fp8 + its "
        "transpose); forward inputs and backward output gradients.")
    selective_recompute: Literal["attention_core", "op_level"] = Field(
        "attention_core", description="What recompute=selective re-runs: Megatron's attention core, or "
        "torchtitan's op-level SAC (keeps matmul outputs, recomputes the element-wise ops).")
    fsdp_prefetch: Annotated[int, Field(ge=0)] = Field(
        1, description="Layers whose ZeRO-3 parameter all-gather is issued ahead of compute (the unsharded "
        "buffers held besides the current layer's).")
    comm_compute_slowdown: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0, description="Fraction by which compute slows while an overlapped collective runs (NCCL kernels "
        "occupy SMs and HBM bandwidth).")
    source: str = Field("", description="Where the figures come from.")


#: Llama 3 herd paper (Dubey et al. 2024, §3.3.4, Table 5): 419 unexpected interruptions in 54 days on 16,384 H100s.
LLAMA3_FAILURES_PER_GPU_DAY = 419 / (54 * 16384)


class ReliabilitySpec(_Frozen):
    """Failures, restarts and checkpoints of a real cluster (``autotune.costmodel.reliability`` uses them)."""

    failures_per_gpu_day: PosFloat = Field(
        LLAMA3_FAILURES_PER_GPU_DAY, description="Job-stopping failures per GPU per day (a node's failure counts "
        "once per GPU it holds); default 419 / (54 x 16,384) = 4.74e-4, the Llama 3 405B run's unexpected "
        "interruptions (Dubey et al. 2024, §3.3.4), 78 % of them hardware.")
    restart_min: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        10.0, description="Minutes from a failure to training again, checkpoint reload excluded: detect the hang "
        "or error, drain, reschedule onto spare nodes, start the processes and build the NCCL communicators. "
        "Default 10 (FlashRecovery, Zhang et al. 2025, reports 150 s on 4,800 devices as the optimised case).")
    checkpoint_write_gbps_per_node: PosFloat = Field(
        5.0, description="Checkpoint write bandwidth of one node to the storage system, GB/s (default 5: about "
        "a 100 Gb/s front-end NIC at 40 %).")
    checkpoint_read_gbps_per_node: PosFloat = Field(5.0, description="Checkpoint read bandwidth per node, GB/s.")
    storage_write_gbps: PosFloat = Field(
        2000.0, description="Aggregate write bandwidth of the storage system, GB/s; default 2,000 = the 2 TB/s "
        "sustained throughput of Meta's Tectonic cluster for Llama 3 (Dubey et al. 2024, §3.3.1; 7 TB/s peak).")
    storage_read_gbps: PosFloat = Field(2000.0, description="Aggregate read bandwidth of the storage system, GB/s.")
    async_checkpoint: bool = Field(
        False, description="Asynchronous checkpointing (Megatron-LM --async-save, torch DCP async_save): training "
        "stalls only while a rank copies its shard to host memory; the write to storage runs in the background.")
    snapshot_gbps: PosFloat = Field(
        20.0, description="Device-to-host copy bandwidth per GPU for an asynchronous snapshot, GB/s (default 20: "
        "pinned copies over PCIe Gen5 x16 reach 40-50 GB/s, shared with other traffic).")
    checkpoint_interval_min: PosFloat | None = Field(
        None, description="Fixed minutes of training between checkpoints; default: the Young/Daly interval "
        "sqrt(2 x checkpoint stall x job MTBF).")


class ClusterSpec(_Frozen):
    """The machines: GPU kind, GPUs per node, nodes (a list of node counts asks for a Pareto study)."""

    gpu: str = Field(description="GPU catalog name or path to a GPU YAML file.")
    gpus_per_node: PosInt = Field(8, description="GPUs per node (NVLink domain).")
    nics_per_node: PosInt | None = Field(None, description="Network adapters per node, each of the GPU profile's "
                                         "inter_node_gbps (default: one per GPU, as DGX/HGX nodes have).")
    nodes: PosInt | list[PosInt] = Field(1, description="Node count, or several for a Pareto study.")
    price_per_gpu_hour: PosFloat | None = Field(None, description="Cost of one GPU-hour (any currency).")
    profile: str | None = Field(None, description="Stored calibrated profile NAME or NAME@V (`autotune calibrate`) "
                                "in the study's database, scoring instead of gpu's catalog figures; `submit "
                                "--profile` pins it here as NAME@V so `resume` scores with the same version.")
    reliability: ReliabilitySpec | Literal["off"] = Field(
        ReliabilitySpec(), description="Failure and checkpoint figures for the expected time to train (defaults: "
        "the Llama 3 405B run), or off: the ideal figures (steps x step time) only.")

    @model_validator(mode="before")
    @classmethod
    def _reliability_switch(cls, data: Any) -> Any:
        """``reliability: off`` (YAML reads it as false) or ``on`` (the defaults); anything else that is not a
        mapping is refused with the allowed values."""
        value = data.get("reliability") if isinstance(data, dict) else None
        if isinstance(value, bool) or value == "on":
            data = dict(data) | {"reliability": {} if value in (True, "on") else "off"}
        elif value is not None and not isinstance(value, dict | ReliabilitySpec) and value != "off":
            raise ValueError(f"reliability must be off, on or a mapping of {', '.join(ReliabilitySpec.model_fields)}"
                             f" (got {value!r})")
        return data

    @property
    def reliability_on(self) -> bool:
        """Whether the estimates include failures, checkpoints and restarts."""
        return self.reliability != "off"

    @property
    def node_counts(self) -> list[int]:
        """Node counts as a list."""
        return self.nodes if isinstance(self.nodes, list) else [self.nodes]

    @property
    def gpus(self) -> int:
        """Total GPUs (first node count)."""
        return self.gpus_per_node * self.node_counts[0]


class TrainingSpec(_Frozen):
    """The training target: sequence length, global batch, precision and dataset size."""

    seq_len: PosInt = Field(description="Tokens per sequence s.")
    global_batch: PosInt | list[PosInt] = Field(
        description="Sequences per optimizer step (GBS), or several: one study answers each batch size.")
    precision: Precision = Field("bf16", description="Compute precision.")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="Adam keeps 2 fp32 states per parameter.")
    grad_buffers: Literal["fp32", "low", "both"] = Field(
        "fp32",
        description=(
            "Gradient storage in mixed precision: fp32 main grads (Megatron, 4 B/param), low = param dtype"
            " (DeepSpeed, ZeRO paper, 2 B/param), both (2 + 4 B/param, the 20 B/param of seed 002)."
        ),
    )
    flash_attention: bool = Field(True, description="Fused attention: no s x s score matrices stored.")
    stack: str | StackSpec | None = Field(
        None, description="Training stack profile: a catalog stacks.yaml name, a YAML path, or a stored stack profile "
        "NAME or NAME@V (`autotune calibrate --from-study STUDY --stack NAME`) in the study's database (`submit` pins "
        "NAME@V); default: the search space's framework's stack (megatron-te for estimates). A resolved study holds "
        "the StackSpec itself.")
    tokens: PosFloat | None = Field(None, description="Dataset size in tokens.")
    samples: PosInt | None = Field(None, description="Dataset size in sequences (with epochs).")
    epochs: PosFloat = Field(1.0, description="Passes over `samples`.")

    @model_validator(mode="after")
    def _one_size(self) -> TrainingSpec:
        if self.tokens is not None and self.samples is not None:
            raise ValueError("give either tokens or samples (+ epochs), not both")
        return self

    @field_validator("global_batch")
    @classmethod
    def _batch_list(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("a list of global batch sizes must be non-empty without repeats")
        return value

    @property
    def batch_sizes(self) -> list[int]:
        """Global batch sizes as a list (one element unless the spec lists several)."""
        return list(self.global_batch) if isinstance(self.global_batch, list) else [self.global_batch]

    def at_batch(self, global_batch: int) -> TrainingSpec:
        """This target with one global batch size (what the cost model and layouts take)."""
        return self if self.global_batch == global_batch else self.model_copy(update={"global_batch": global_batch})

    def total_samples(self) -> float | None:
        """Sequences processed in the whole run (seed 001: epochs × samples), or None if unknown."""
        if self.tokens is not None:
            return self.tokens / self.seq_len
        if self.samples is not None:
            return self.samples * self.epochs
        return None

    def total_steps(self) -> float | None:
        """Optimizer steps in the whole run, or None when no dataset size is given."""
        n = self.total_samples()
        return None if n is None else math.ceil(n / self.global_batch)


class SearchSpec(_Frozen):
    """How to search: space, sampler, budget, evaluator."""

    space: str = Field("megatron", description="Space name (megatron|deepspeed|fsdp) or a YAML path.")
    sampler: Sampler = Field(
        "auto", description="auto: an analytic study scores the whole space in one vectorised pass, dryrun and "
        "measure studies run tpe; or an Optuna sampler (thompson: Bayesian linear models over the enumerated "
        "space), which an analytic study then runs trial by trial (for benchmarking samplers).")
    n_trials: PosInt = Field(200, description="Trial budget.")
    evaluator: Fidelity = Field("analytic", description="Fidelity.")
    fidelities: list[Fidelity] | None = Field(
        None, description="Multi-fidelity pipeline, cheapest first."
    )
    top_k: PosInt = Field(5, description="Layouts promoted to each higher fidelity.")
    workers: PosInt = Field(2, description="Parallel Ray evaluations.")
    timeout_s: PosFloat | None = Field(None, description="Wall-clock budget for the study.")
    seed: Annotated[int, Field(ge=0, lt=2**32)] | None = Field(None, description="Sampler seed (0 <= seed < 2**32).")

    @model_validator(mode="after")
    def _fidelity_order(self) -> SearchSpec:
        order = FIDELITIES
        if self.fidelities is not None:
            ranks = [order.index(f) for f in self.fidelities]
            if not self.fidelities or self.fidelities[0] != "analytic" or ranks != sorted(set(ranks)):
                raise ValueError(f"fidelities must start with analytic and rise through {', '.join(order)} "
                                 f"without repeats (got {self.fidelities})")
        return self

    @property
    def final_evaluator(self) -> str:
        """The fidelity the Optuna trials run at: the last of ``fidelities``, else ``evaluator``."""
        return self.fidelities[-1] if self.fidelities else self.evaluator


class StudySpec(_Frozen):
    """A whole study: model + cluster + training + search + objective."""

    name: str = Field(pattern=NAME_PATTERN, description="Study name.")
    model: str | ModelSpec = Field(description="Preset name, model YAML path, HF config.json path, or inline.")
    cluster: ClusterSpec
    training: TrainingSpec
    search: SearchSpec = SearchSpec()
    objective: Literal["throughput", "time_to_train", "pareto"] = Field("throughput", description="Goal.")


def _allowed(model: type[BaseModel] | None) -> str:
    return ", ".join(model.model_fields) if model else ""


def _field_model(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the last element of ``loc``."""
    current: Any = root
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)]
        current = next((a for a in candidates if issubclass(a, BaseModel)), None)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_validation_error(err: ValidationError, root: type[BaseModel], prefix: str = "") -> str:
    """One line naming the first failing field path, the problem, the allowed values and the input."""
    errors = err.errors()
    e = errors[0]
    if isinstance(e.get("input"), list):  # a union with a list branch: report the list branch's error
        e = next((x for x in errors if any(isinstance(p, str) and p.startswith("list[") for p in x["loc"])), e)
    tags = {"ModelSpec", "ReliabilitySpec", "str", "int", "float", "bool"}
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in tags
                                                                    or p.startswith("constrained-"))))
    path = prefix + ".".join(str(p) for p in loc) if loc else prefix.rstrip(".") or "spec"
    msg = e["msg"].replace("Value error, ", "")
    if e["type"] == "extra_forbidden":
        owner = _field_model(root, loc)
        msg = f"unknown field (allowed: {_allowed(owner)})"
    elif e["type"] == "missing":
        msg = "required field is missing"
    shown = e.get("input")
    got = "" if e["type"] in ("missing",) or isinstance(shown, dict) else f" (got {shown!r})"
    return f"{path}: {msg}{got}"


def read_mapping(path: str | Path, what: str = "spec") -> dict[str, Any]:
    """Read a YAML (safe_load) or TOML file that must hold a mapping."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{what}: file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
        data = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpecError(f"{what}: {p} is not valid {'TOML' if p.suffix == '.toml' else 'YAML'}: {first}") from e
    if not isinstance(data, dict):
        raise SpecError(f"{what}: {p} must hold a mapping of fields, got {type(data).__name__}")
    return data


def parse_spec(data: dict[str, Any]) -> StudySpec:
    """Validate a mapping as a :class:`StudySpec`; raises :class:`SpecError` naming the field."""
    try:
        return StudySpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, StudySpec)) from e


def load_spec(path: str | Path) -> StudySpec:
    """Load and validate a spec file (YAML or TOML)."""
    return parse_spec(read_mapping(path))
