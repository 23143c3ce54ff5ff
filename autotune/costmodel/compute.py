"""Compute time of one layer's forward and backward for one micro-batch on one rank.

Linear GEMMs run at the dtype's dense peak times an efficiency curve in the two GEMM sizes that a layout
changes, the width h/tp and the local tokens b·s/cp:

    eff = gemm_eff_max / (1 + gemm_k_dim / (h/tp) + gemm_k_tokens / (b·s/cp)),   eff <= 0.85,

plus a fixed ``gemm_latency_us`` per GEMM (4 per layer forward: fused QKV, projection, fc1, fc2), so
time = FLOPs / (eff · peak) + latency. On an H100 SXM (torch 2.11 cuBLAS, 20 bf16 shapes of width
512–8192 and 512–16384 tokens, ``benchmarks/gpu_check.py``) this form fits the measured fraction of
peak with an rms error of 0.014 (e_max 0.80, k_dim 102, k_tokens 0, latency 24.5 µs). Backward runs two
GEMMs (data and weight gradients) per forward GEMM at the same efficiency.

Attention core. With a fused kernel (FlashAttention-2/-3, cuDNN, CK: the first of the stack's
``attention`` list the GPU profile describes) the core runs at that kernel's own fraction of the bf16
peak, eff(s, d) = e · s/(s + k_seq) · [d/(d + k_d)] / [128/(128 + k_d)], separately for forward and
backward (GPUSpec.attention, from the FlashAttention-2/-3 papers' benchmarks). Causal masking skips the
tiles above the diagonal, so the kernel does half the s² work; its backward runs five matmuls to the
forward's two (recomputing the probabilities), 2.5× the forward FLOPs (Dao 2023, §3.2). A fused kernel the
GPU profile does not describe (CPU ranks: PyTorch's own flash kernel) skips the causal half at the GEMM
curve, backward 2×. Without a fused kernel (``flash_attention: false``) the core is two batched GEMMs over
the full s×s scores at the GEMM curve, the causal mask applied to the materialised scores (no work saved).

fp8 (Transformer Engine, torchao float8; the stack must support it): linear GEMMs — forward, data and
weight gradients — run at the fp8 peak on their own curve (``fp8_gemm_eff_max``, ``fp8_gemm_k_dim``: fp8
GEMMs need wider shapes to saturate), the attention core, the output layer and every element-wise kernel
stay bf16, and every GEMM input (activations and weights in forward, output gradients in backward) is
quantised first: ``StackSpec.fp8_cast_bytes`` HBM bytes per element (read bf16, write fp8 and its
transpose, amax). So the speed-up over bf16 is well below 2× and grows with GEMM size.

Precision: fp32 training runs its GEMMs on TF32 tensor cores (PyTorch's and Megatron-LM's default,
``torch.backends.cuda.matmul.allow_tf32``), so it uses the 'tf32' peak.

Element-wise work (norms, activation function, bias-dropout-residual, rotary, casts) is memory-bound:
GPUSpec.elementwise_bytes_per_token_hidden · h bytes per token per layer in forward for eager PyTorch
(bf16; fp32 doubles it), times the stack's ``elementwise_factor`` (kernel fusion), at hbm_gbps; backward
moves twice as much. Without sequence parallelism the norms and the bias-dropout-residual blocks
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

Host time: ``GPUSpec.layer_overhead_us`` (+ ``tp_layer_overhead_us`` when tp > 1) per layer per
micro-batch, forward + backward, is added (on CPU ranks the issuing thread does the work itself;
`autotune calibrate` fits it). ``StackSpec.layer_host_us`` is the host time to issue a layer's kernels on
a GPU, which run asynchronously: a layer takes at least that long (:func:`layer_step_time`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autotune.costmodel.flops import attention_core_flops, block_linear_flops, logit_flops
from autotune.costmodel.layout import Layout
from autotune.spec import AttentionKernel, GPUSpec, ModelSpec, StackSpec, TrainingSpec

#: Linear GEMMs in one layer's forward (fused QKV, attention projection, fc1 (+gate), fc2).
GEMMS_PER_LAYER = 4
#: Of those, the attention block's (fused QKV, projection): an MoE layer without shared experts has no other.
ATTENTION_GEMMS = 2
#: FlashAttention's backward FLOPs over its forward's: five matmuls to two (Dao 2023, FlashAttention-2, §3.2).
FLASH_BWD_RATIO = 2.5

__all__ = ["GEMMS_PER_LAYER", "ATTENTION_GEMMS", "FLASH_BWD_RATIO", "sustained_peaks", "gemm_efficiency",
           "fp8_gemm_efficiency", "attention_kernel", "attention_efficiency", "gemm_precision", "peak_flops",
           "activation_dtype_bytes", "replicated_share", "fp8_active",
           "layer_forward_times", "layer_backward_times", "layer_step_time", "logits_forward_time"]


def gemm_efficiency(gpu: GPUSpec, width: Any, tokens: Any) -> Any:
    """Achieved fraction of dense peak for GEMMs of inner width ``width`` over ``tokens`` rows."""
    return gpu.gemm_eff_max / (1.0 + gpu.gemm_k_dim / width + gpu.gemm_k_tokens / tokens)


def fp8_gemm_efficiency(gpu: GPUSpec, width: Any, tokens: Any) -> Any:
    """Achieved fraction of the fp8 peak for fp8 GEMMs (the bf16 curve's constants where the profile has none)."""
    e = gpu.fp8_gemm_eff_max if gpu.fp8_gemm_eff_max is not None else gpu.gemm_eff_max
    k = gpu.fp8_gemm_k_dim if gpu.fp8_gemm_k_dim is not None else gpu.gemm_k_dim
    return e / (1.0 + k / width + gpu.gemm_k_tokens / tokens)


def attention_kernel(gpu: GPUSpec, stack: StackSpec, training: TrainingSpec) -> AttentionKernel | None:
    """The fused attention kernel that runs: the stack's first the GPU profile describes (None: unfused)."""
    if not training.flash_attention:
        return None
    return next((gpu.attention[k] for k in stack.attention if k in gpu.attention), None)


def attention_efficiency(kernel: AttentionKernel, seq_len: Any, head_dim: float, factor: float = 1.0
                         ) -> tuple[Any, Any]:
    """(forward, backward) fraction of the bf16 peak of a fused attention kernel over ``seq_len`` keys, times
    the stack's ``attention_factor``."""
    shape = factor * seq_len / (seq_len + kernel.k_seq) * (head_dim / (head_dim + kernel.k_head_dim)) / (
        128.0 / (128.0 + kernel.k_head_dim))
    return np.minimum(kernel.fwd * shape, 1.0), np.minimum(kernel.bwd * shape, 1.0)


def fp8_active(gpu: GPUSpec, stack: StackSpec, training: TrainingSpec) -> bool:
    """Whether the linear layers run in fp8: fp8 training on a stack and GPU that have it."""
    return training.precision == "fp8" and stack.fp8 and "fp8" in gpu.peak_tflops


def gemm_precision(gpu: GPUSpec, stack: StackSpec, training: TrainingSpec) -> str:
    """The dtype the linear GEMMs are modelled in, whose peak MFU divides by: fp8 only where
    :func:`fp8_active`, else bf16 for fp8 training; TF32 for fp32 training (see :func:`peak_flops`)."""
    if fp8_active(gpu, stack, training):
        return "fp8"
    return {"fp32": "tf32", "fp8": "bf16"}.get(training.precision, training.precision)


def peak_flops(gpu: GPUSpec, precision: str) -> tuple[float, float]:
    """(linear-layer, attention-core) dense peaks in FLOP/s for the training precision."""
    if precision == "fp32":
        return gpu.peak("tf32") * 1e12, gpu.peak("tf32") * 1e12
    if precision == "fp8":
        return gpu.peak("fp8") * 1e12, gpu.peak("bf16") * 1e12
    return gpu.peak(precision) * 1e12, gpu.peak(precision) * 1e12


def sustained_peaks(gpu: GPUSpec, peaks: tuple[float, float]) -> tuple[float, float]:
    """Peaks scaled to what the tensor cores sustain in training (GPUSpec.sustained_fraction)."""
    return peaks[0] * gpu.sustained_fraction, peaks[1] * gpu.sustained_fraction


def activation_dtype_bytes(precision: str) -> float:
    """Bytes of one activation element: 4 in fp32, 2 otherwise (fp8 keeps bf16 activations)."""
    return 4.0 if precision == "fp32" else 2.0


def _extra_elements(model: ModelSpec) -> tuple[float, float]:
    """Elements read + written per token beyond a two-norm layer: (outside, inside) the tensor-parallel region."""
    outside = 2.0 * model.hidden * (model.norms_per_layer - 2)
    inside = 2.0 * (model.q_dim + model.kv_dim) if model.qk_norm else 0.0
    return outside, inside


def _elementwise_elements(model: ModelSpec, ffn: int) -> tuple[float, float]:
    """Elements read + written per token by a block's element-wise kernels with an MLP of inner width ``ffn``:
    (outside, inside) the tensor-parallel region."""
    h = model.hidden
    extra_out, extra_in = _extra_elements(model)
    outside = 4 * h + 2 * (3 * h + (0.5 * h if model.dropout else 0.0)) + extra_out
    inside = (3 if model.mlp_matrices == 3 else 2) * ffn + extra_in
    return outside, inside


def replicated_share(model: ModelSpec, ffn: int | None = None) -> float:
    """Share of element-wise traffic outside the tensor-parallel region (norms, dropout, residual), for a block
    whose MLP has inner width ``ffn`` (default ffn_hidden)."""
    outside, inside = _elementwise_elements(model, model.ffn if ffn is None else ffn)
    return outside / (outside + inside)


def _fp8_cast_elements(model: ModelSpec, tp: Any, tokens: Any, ffn: int | None = None) -> tuple[Any, Any]:
    """(forward, backward) elements quantised to fp8 per layer per micro-batch on one rank: the four GEMMs'
    inputs and weights in forward, their output gradients in backward (``ffn``: the block's MLP width, default
    ffn_hidden; 0 leaves the attention GEMMs)."""
    h, q, kv = model.hidden, model.q_dim, model.kv_dim
    f = model.ffn if ffn is None else ffn
    mlp_in = h if f else 0
    mlp_out = (model.mlp_matrices - 1) * f
    other_mlp = 0 if ffn is None else model.mlp_params(f) - model.mlp_params(model.ffn)
    weights = (model.layer_params() + other_mlp - model.replicated_layer_params()) / tp
    fwd = tokens * (h + q / tp + mlp_in + f / tp) + weights
    bwd = tokens * ((q + 2 * kv) / tp + mlp_in + mlp_out / tp + h)
    return fwd, bwd


def layer_forward_times(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, L: Layout,
                        stack: StackSpec | None = None, mlp_width: int | None = None) -> dict[str, Any]:
    """Seconds of one layer's forward for one micro-batch on one rank, split into ``linear`` (linear GEMMs),
    ``core`` (attention core), ``elementwise``, ``softmax`` (score-matrix traffic, zero with a fused
    kernel), ``cast`` (fp8 quantisation) and ``overhead`` (a third of ``layer_overhead_us``: like the FLOPs,
    the host-side work of backward is twice forward's). ``stack`` None: plain eager PyTorch.

    ``mlp_width``: the block's tensor-parallel MLP width instead of ffn_hidden (an MoE layer's shared experts,
    0 without; :mod:`autotune.costmodel.moe_time` adds its routed part). Its element-wise bytes scale
    with the elements its kernels touch, and a block without an MLP issues the attention GEMMs only."""
    from autotune.catalog import resolve_stack

    stack = resolve_stack(stack)
    tp, s = L["tp"], training.seq_len
    tokens = L["micro_batch"] * s / L["cp"]
    lin_peak, core_peak = sustained_peaks(gpu, peak_flops(gpu, training.precision))
    fp8 = fp8_active(gpu, stack, training)
    if training.precision == "fp8" and not fp8:
        lin_peak = core_peak
    eff = gemm_efficiency(gpu, model.hidden / tp, tokens)
    lin_eff = fp8_gemm_efficiency(gpu, model.hidden / tp, tokens) if fp8 else eff
    gemms = GEMMS_PER_LAYER if mlp_width is None or mlp_width > 0 else ATTENTION_GEMMS
    latency = gemms * gpu.gemm_latency_us * 1e-6
    linear = tokens * block_linear_flops(model, mlp_width) / tp / (lin_peak * lin_eff) + latency
    kernel = attention_kernel(gpu, stack, training)
    dense_core = tokens * attention_core_flops(model, s) / tp
    causal = model.attention_keys(s, causal=True) / model.attention_keys(s) if training.flash_attention else 1.0
    if kernel is None:
        core = causal * dense_core / (core_peak * eff)
    else:
        fwd_eff, _ = attention_efficiency(kernel, s, model.head_dim, stack.attention_factor)
        core = causal * dense_core / (core_peak * fwd_eff)
    share = replicated_share(model, mlp_width)
    scale = np.where(L["sequence_parallel"] > 0, 1.0 / tp, share + (1.0 - share) / tp)
    dtype = activation_dtype_bytes(training.precision)
    hbm = gpu.hbm_gbps * 1e9
    per_token = gpu.elementwise_bytes_per_token_hidden * model.hidden + 2.0 * sum(_extra_elements(model))
    if mlp_width is not None:
        per_token = per_token * sum(_elementwise_elements(model, mlp_width)) / sum(
            _elementwise_elements(model, model.ffn))
    elementwise = tokens * per_token * stack.elementwise_factor * scale * dtype / 2.0 / hbm
    per_score = 0.0 if training.flash_attention else (9.0 if model.dropout else 4.0) * dtype / 2.0
    softmax = tokens * per_score * model.heads * s / tp / hbm
    cast = _fp8_cast_elements(model, tp, tokens, mlp_width)[0] * stack.fp8_cast_bytes / hbm if fp8 else 0.0
    overhead = (gpu.layer_overhead_us + np.where(tp > 1, gpu.tp_layer_overhead_us, 0.0)) * 1e-6 / 3.0
    return {"linear": linear, "core": core, "elementwise": elementwise, "softmax": softmax, "cast": cast,
            "overhead": overhead}


def layer_backward_times(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, L: Layout, stack: StackSpec,
                         fwd: dict[str, Any], mlp_width: int | None = None) -> dict[str, Any]:
    """Seconds of one layer's backward, same keys as ``fwd``: GEMMs, element-wise traffic and host work twice
    the forward's; a fused attention core 2.5× the forward FLOPs at the kernel's backward efficiency; fp8
    casts of the output gradients."""
    s = training.seq_len
    kernel = attention_kernel(gpu, stack, training)
    if kernel is None:
        core = 2.0 * fwd["core"]
    else:
        fwd_eff, bwd_eff = attention_efficiency(kernel, s, model.head_dim, stack.attention_factor)
        core = FLASH_BWD_RATIO * fwd["core"] * fwd_eff / bwd_eff
    cast = 0.0
    if fp8_active(gpu, stack, training):
        tokens = L["micro_batch"] * s / L["cp"]
        cast = _fp8_cast_elements(model, L["tp"], tokens, mlp_width)[1] * stack.fp8_cast_bytes / (gpu.hbm_gbps * 1e9)
    return {"linear": 2.0 * fwd["linear"], "core": core, "elementwise": 2.0 * fwd["elementwise"],
            "softmax": 2.0 * fwd["softmax"], "cast": cast, "overhead": 2.0 * fwd["overhead"]}


def layer_step_time(stack: StackSpec, gpu_seconds: Any) -> Any:
    """A layer's forward + backward time per micro-batch: its GPU work, or the host time to issue its
    kernels when that is longer (the GPU runs ahead of the host only while the host keeps up)."""
    return np.maximum(gpu_seconds, stack.layer_host_us * 1e-6)


def logits_forward_time(model: ModelSpec, training: TrainingSpec, gpu: GPUSpec, L: Layout) -> Any:
    """Seconds of the output layer's forward (vocab-parallel GEMM, bf16 peak under fp8) per micro-batch."""
    tokens = L["micro_batch"] * training.seq_len / L["cp"]
    _, core_peak = sustained_peaks(gpu, peak_flops(gpu, training.precision))
    eff = gemm_efficiency(gpu, float(model.hidden), tokens)
    return tokens * logit_flops(model) / L["tp"] / (core_peak * eff)
