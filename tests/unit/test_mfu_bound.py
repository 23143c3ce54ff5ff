"""No layout predicts an MFU above the GPU profile's largest GEMM efficiency (hypothesis, 500 examples across
GPUs, precisions, stacks, sequence 512-131072 and tp/pp/cp/dp/zero): model FLOPs count the causal attention
core (see :mod:`autotune.costmodel.flops`), so no kernel's work is counted twice."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from autotune.catalog import get_gpu, get_model, get_stack, stack_names
from autotune.config import derive
from autotune.costmodel.layout import layout_scalars
from autotune.costmodel.time import step_time
from autotune.errors import InfeasibleConfig
from autotune.spec import ModelSpec, TrainingSpec

MODELS = [get_model("llama3-8b"), get_model("gpt3-1.7b"),
          ModelSpec(name="mpt-1b", layers=24, hidden=2048, heads=16, vocab=50368, activation="gelu",
                    tied_embeddings=True, norm="layernorm", bias="all", position_embedding="rope")]
GPUS = ["a100-40gb", "a100-80gb", "h100-sxm", "h200", "b200", "mi300x"]


@settings(max_examples=500, deadline=None)
@given(model=st.sampled_from(MODELS), gpu=st.sampled_from(GPUS), stack=st.sampled_from(stack_names()),
       precision=st.sampled_from(["bf16", "fp16", "fp8", "fp32"]), seq=st.sampled_from([512, 2048, 8192, 32768,
                                                                                        131072]),
       tp=st.sampled_from([1, 2, 4, 8]), pp=st.sampled_from([1, 2, 4]), cp=st.sampled_from([1, 2, 4, 8]),
       zero=st.integers(0, 3), mb=st.sampled_from([1, 2, 4]), nodes=st.sampled_from([1, 2, 16]),
       recompute=st.sampled_from(["none", "selective", "full"]), flash=st.booleans())
def test_mfu_never_exceeds_the_largest_gemm_efficiency(model, gpu, stack, precision, seq, tp, pp, cp, zero, mb,
                                                       nodes, recompute, flash) -> None:
    t = TrainingSpec(seq_len=seq, global_batch=64 * nodes, precision=precision, stack=stack,
                     flash_attention=flash)
    try:
        cfg = derive(model, t, 8 * nodes, tp=tp, pp=pp, cp=cp, zero=zero, micro_batch=mb, recompute=recompute)
    except InfeasibleConfig:
        assume(False)
        raise
    g = get_gpu(gpu)
    out = step_time(model, t, g, 8, layout_scalars(cfg), stack=get_stack(stack))
    assert 0.0 < out["mfu"] <= g.gemm_eff_max
    assert out["mfu"] <= out["hfu"]
