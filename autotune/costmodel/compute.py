"""Compute time of one layer's forward pass for one micro-batch on one rank.

GEMMs run at the dtype's dense peak times an efficiency curve in the two GEMM sizes that a layout
changes, the width h/tp and the local tokens b·s/cp:

    eff = gemm_eff_max / (1 + gemm_k_dim / (h/tp) + gemm_k_tokens / (b·s/cp)),   eff <= 0.85,

plus a fixed ``gemm_latency_us`` per GEMM (4 per layer forward: fused QKV, projection, fc1, fc2), so
time = FLOPs / (eff · peak) + latency. On an H100 SXM (torch 2.11 cuBLAS, 20 bf16 shapes of width
512–8192 and 512–16384 tokens, ``benchmarks/gpu_check.py``) this form fits the measured fraction of
peak with an rms error of 0.014 (e_max 0.80, k_dim 102, k_tokens 0, latency 24.5 µs), where the
latency-free form could not do better than 0.11: small GEMMs lose most to the fixed cost.

Large bf16 GEMMs reach 75–82 % of dense peak in cuBLAS on A100/H100 (NVIDIA Megatron-LM and
Transformer Engine performance notes), and small ones fall off as in Narayanan et al. 2021, Fig. 7
(throughput against micro-batch size) and Fig. 13 (against tensor-parallel width); the constants live
in GPUSpec / catalog/gpus.yaml.

Precision: fp32 training runs its GEMMs on TF32 tensor cores (PyTorch's and Megatron-LM's default,
``torch.backends.cuda.matmul.allow_tf32``), so it uses the 'tf32' peak; bf16/fp16 use their own
peaks. fp8 (Transformer Engine) runs the linear layers at the fp8 peak but keeps the attention core,
the output layer and every element-wise kernel in bf16, so its speed-up over bf16 is below 2x.

Element-wise work (norms, activation function, bias-dropout-residual, rotary, casts) is memory-bound:
GPUSpec.elementwise_bytes_per_token_hidden · h bytes per token per layer in forward (bf16; fp32
doubles it), at hbm_gbps. Without sequence parallelism the norms and the bias-dropout-residual blocks
run replicated on every tensor-parallel rank (Korthikanti et al. 2022, §4.2.2); only the activation
function is sharded. Their share is counted from the tensors each touches (elements read + written):
two norms 4h, two bias-dropout-adds 2·(3h + h/2 mask), activation 2f (GELU, squared ReLU) or 3f (SwiGLU,
GeGLU). Shapes beyond that add to ``elementwise_bytes_per_token_hidden · h`` (fitted on two-norm models)
the elements they read and write: 2h per extra hidden-width norm (Gemma's sandwich has four) and
2·(q_dim + kv_dim) for q/k norms, the latter inside the tensor-parallel region. Without
FlashAttention the fused scale-mask-softmax (read 2 + write 2 bytes) and attention dropout (read 2 +
write 2 + mask 1) add 9 bytes per score (4 without dropout), a·s scores per token; with FlashAttention
the scores never leave on-chip memory and causal masking skips the tiles above the diagonal: half the
core, or outside the band of a sliding window (``ModelSpec.attention_keys(s, causal=True)``).

Host overhead: ``GPUSpec.layer_overhead_us`` per layer per micro-batch (forward + backward) is the
fixed cost of issuing a layer's operators (Python, dispatcher, autograd), plus
``GPUSpec.tp_layer_overhead_us`` when tp > 1 (the tensor-parallel modules' own dispatch). GPU kernels are
queued asynchronously ahead of the device, so datasheet profiles leave both 0; on CPU ranks, where each
operator runs in the issuing thread, a small model spends most of its step there (``autotune calibrate``
fits them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autotune.costmodel.flops import attention_core_flops, layer_linear_flops, logit_flops
from autotune.costmodel.layout import Layout
from autotune.spec import GPUSpec, ModelSpec, TrainingSpec

#: Linear GEMMs in one layer's forward (fused QKV, attention projection, fc1 (+gate), fc2).
GEMMS_PER_LAYER = 4

__all__ = ["GEMMS_PER_LAYER", "gemm_efficiency", "peak_flops", "activation_dtype_bytes", "replicated_share",
           "layer_forward_times", "logits_forward_time"]


def gemm_efficiency(gpu: GPUSpec, width: Any, tokens: Any) -> Any:
    """Achieved fraction of dense peak for GEMMs of inner width ``width`` over ``tokens`` rows."""
    return gpu.gemm_eff_max / (1.0 + gpu.gemm_k_dim / width + gpu.gemm_k_tokens / tokens)


def peak_flops(gpu: GPUSpec, precision: str) -> tuple[float, float]:
    """(linear-layer, attention-core) dense peaks in FLOP/s for the training precision."""
    if precision == "fp32":
        return gpu.peak("tf32") * 1e12, gpu.peak("tf32") * 1e12
    if precision == "fp8":
        return gpu.peak("fp8") * 1e12, gpu.peak("bf16") * 1e12
    return gpu.peak(precision) * 1e12, gpu.peak(precision) * 1e12


def activation_dtype_bytes(precision: str) -> float:
    """Bytes of one activation element: 4 in fp32, 2 otherwise (fp8 keeps bf16 activations)."""
    return 4.0 if precision == "fp32" else 2.0


def _extra_elements(model: ModelSpec) -> tuple[float, float]:
    """Elements read + written per token beyond a two-norm layer: (outside, inside) the tensor-parallel region."""
    outside = 2.0 * model.hidden * (model.norms_per_layer - 2)
    inside = 2.0 * (model.q_dim + model.kv_dim) if model.qk_norm else 0.0
    return outside, inside


def replicated_share(model: ModelSpec) -> float:
    """Share of element-wise traffic outside the tensor-parallel region (norms, dropout, residual)."""
    h, f = model.hidden, model.ffn
    extra_out, extra_in = _extra_elements(model)
    outside = 4 * h + 2 * (3 * h + (0.5 * h if model.dropout else 0.0)) + extra_out
    inside = (3 if model.mlp_matrices == 3 else 2) * f + extra_in
    return outside / (outside + inside)


def layer_forward_times(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, L: Layout) -> dict[str, Any]:
    """Seconds of one layer's forward for one micro-batch on one rank, split into
    ``linear`` (linear GEMMs), ``core`` (attention-core GEMMs), ``elementwise``, ``softmax``
    (score-matrix traffic, zero with FlashAttention) and ``overhead`` (a third of
    ``layer_overhead_us``: like the FLOPs, the host-side work of backward is twice forward's)."""
    tp, s = L["tp"], training.seq_len
    tokens = L["micro_batch"] * s / L["cp"]
    eff = gemm_efficiency(gpu, model.hidden / tp, tokens)
    lin_peak, core_peak = peak_flops(gpu, training.precision)
    keys = model.attention_keys(s, causal=True) if training.flash_attention else s  # unfused: every s x s score
    causal = keys / model.attention_keys(s)
    latency = GEMMS_PER_LAYER * gpu.gemm_latency_us * 1e-6
    linear = tokens * layer_linear_flops(model) / tp / (lin_peak * eff) + latency
    core = causal * tokens * attention_core_flops(model, s) / tp / (core_peak * eff)
    share = replicated_share(model)
    scale = np.where(L["sequence_parallel"] > 0, 1.0 / tp, share + (1.0 - share) / tp)
    dtype = activation_dtype_bytes(training.precision)
    hbm = gpu.hbm_gbps * 1e9
    per_token = gpu.elementwise_bytes_per_token_hidden * model.hidden + 2.0 * sum(_extra_elements(model))
    elementwise = tokens * per_token * scale * dtype / 2.0 / hbm
    per_score = 0.0 if training.flash_attention else (9.0 if model.dropout else 4.0) * dtype / 2.0
    softmax = tokens * per_score * model.heads * s / tp / hbm
    overhead = (gpu.layer_overhead_us + np.where(tp > 1, gpu.tp_layer_overhead_us, 0.0)) * 1e-6 / 3.0
    return {"linear": linear, "core": core, "elementwise": elementwise, "softmax": softmax, "overhead": overhead}


def logits_forward_time(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, L: Layout) -> Any:
    """Seconds of the output layer's forward (vocab-parallel GEMM, bf16 peak under fp8) per micro-batch."""
    tokens = L["micro_batch"] * training.seq_len / L["cp"]
    _, core_peak = peak_flops(gpu, training.precision)
    eff = gemm_efficiency(gpu, float(model.hidden), tokens)
    return tokens * logit_flops(model) / L["tp"] / (core_peak * eff)
