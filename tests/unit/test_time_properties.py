"""Properties of the time and memory models (hypothesis) and scalar/vectorised agreement."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from autotune.catalog import get_gpu, get_model
from autotune.config import derive
from autotune.costmodel.layout import layout_arrays, layout_scalars
from autotune.costmodel.memory import memory_breakdown
from autotune.costmodel.time import step_time
from autotune.errors import InfeasibleConfig
from autotune.spec import ModelSpec, TrainingSpec

GPT = ModelSpec(name="gpt-16l", layers=16, hidden=2048, heads=16, vocab=51200, activation="gelu",
                tied_embeddings=True, norm="layernorm", bias="all", position_embedding="learned", dropout=True)
MODELS = [GPT, get_model("llama3-8b")]
GPU = get_gpu("h100-sxm")

layout_kw = st.fixed_dictionaries({
    "tp": st.sampled_from([1, 2, 4, 8]),
    "pp": st.sampled_from([1, 2, 4]),
    "cp": st.sampled_from([1, 2]),
    "vpp": st.sampled_from([1, 2]),
    "zero": st.integers(0, 3),
    "micro_batch": st.sampled_from([1, 2, 4]),
    "recompute": st.sampled_from(["none", "selective", "full"]),
    "sequence_parallel": st.booleans(),
    "tp_comm_overlap": st.booleans(),
    "overlap_grad_reduce": st.booleans(),
    "overlap_param_gather": st.booleans(),
})


def _derive(model, training, gpus, kw):
    try:
        return derive(model, training, gpus, **kw)
    except InfeasibleConfig:
        assume(False)
        raise


@settings(max_examples=150, deadline=None)
@given(model=st.sampled_from(MODELS), kw=layout_kw, gpus=st.sampled_from([8, 16, 64]),
       field=st.sampled_from(["intra_node_gbps", "inter_node_gbps", "hbm_gbps"]),
       factor=st.floats(1.0, 100.0), accum=st.sampled_from([1, 4]))
def test_more_bandwidth_never_slows_a_step(model, kw, gpus, field, factor, accum) -> None:
    t = TrainingSpec(seq_len=4096, global_batch=64 * accum)
    L = layout_scalars(_derive(model, t, gpus, kw))
    faster = GPU.model_copy(update={field: getattr(GPU, field) * factor})
    base = step_time(model, t, GPU, 8, L)["step_time_s"]
    assert step_time(model, t, faster, 8, L)["step_time_s"] <= base * (1 + 1e-12)


@settings(max_examples=150, deadline=None)
@given(model=st.sampled_from(MODELS), kw=layout_kw, gpus=st.sampled_from([8, 16, 64]),
       m1=st.integers(1, 16), extra=st.integers(1, 64))
def test_more_micro_batches_never_grow_the_bubble_fraction(model, kw, gpus, m1, extra) -> None:
    fractions = []
    for m in (m1, m1 + extra):
        probe = _derive(model, TrainingSpec(seq_len=4096, global_batch=4096), gpus, kw)
        t = TrainingSpec(seq_len=4096, global_batch=kw["micro_batch"] * probe.dp * m)
        out = step_time(model, t, GPU, 8, layout_scalars(_derive(model, t, gpus, kw)))
        fractions.append(out["pp_bubble"] / out["step_time_s"])
    assert fractions[1] <= fractions[0] * (1 + 1e-12)


@settings(max_examples=150, deadline=None)
@given(model=st.sampled_from(MODELS), kw=layout_kw, gpus=st.sampled_from([16, 64, 128]))
def test_zero3_never_uses_more_memory_than_zero2(model, kw, gpus) -> None:
    """Stage 3 saves 2Ψ(1 − 1/N) bytes of weights and adds a two-layer gather buffer (4 bytes per layer
    parameter), so it wins whenever it shards (N ≥ 2) a stage of at least 4 layers."""
    t = TrainingSpec(seq_len=4096, global_batch=1024)
    assume(model.layers // kw["pp"] >= 4)
    two = _derive(model, t, gpus, kw | {"zero": 2})
    assume(two.dp_shard >= 2)
    three = _derive(model, t, gpus, kw | {"zero": 3})
    m2 = memory_breakdown(model, t, GPU, layout_scalars(two))["total"]
    m3 = memory_breakdown(model, t, GPU, layout_scalars(three))["total"]
    assert m3 <= m2


def _random_configs(model, training, gpus, n, rng):
    out = []
    while len(out) < n:
        kw = {"tp": rng.choice([1, 2, 4, 8]), "pp": rng.choice([1, 2, 4]), "cp": rng.choice([1, 2]),
              "vpp": rng.choice([1, 2]), "zero": rng.randint(0, 3), "micro_batch": rng.choice([1, 2, 4]),
              "recompute": rng.choice(["none", "selective", "full"]), "sequence_parallel": rng.random() < 0.5,
              "tp_comm_overlap": rng.random() < 0.5, "overlap_grad_reduce": rng.random() < 0.5,
              "overlap_param_gather": rng.random() < 0.5}
        if kw["recompute"] == "full" and rng.random() < 0.3:
            kw["recompute_layers"] = 1
        try:
            out.append(derive(model, training, gpus, **kw))
        except InfeasibleConfig:
            continue
    return out


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize(("gpus", "precision"), [(16, "bf16"), (64, "fp8"), (32, "fp32")])
def test_vectorised_matches_scalar(model, gpus, precision) -> None:
    t = TrainingSpec(seq_len=4096, global_batch=256, precision=precision, flash_attention=precision != "fp32")
    configs = _random_configs(model, t, gpus, 60, random.Random(gpus))
    arrays = layout_arrays(configs)
    vec_time = step_time(model, t, GPU, 8, arrays)
    vec_mem = memory_breakdown(model, t, GPU, arrays)
    for i, cfg in enumerate(configs):
        L = layout_scalars(cfg)
        for key, value in step_time(model, t, GPU, 8, L).items():
            assert vec_time[key][i] == pytest.approx(value, rel=1e-9), key
        for key, value in memory_breakdown(model, t, GPU, L).items():
            vec = np.broadcast_to(vec_mem[key], (len(configs),))[i]
            assert float(vec) == pytest.approx(float(value), rel=1e-9), key
