"""Memory model against Rajbhandari et al. (ZeRO) and Korthikanti et al. (activations), by hand."""

from __future__ import annotations

import pytest

from autotune.config import derive
from autotune.costmodel.layout import layout_scalars
from autotune.costmodel.memory import (
    GIB,
    activation_bytes,
    activation_bytes_per_layer,
    memory_breakdown,
    model_state_bytes,
    stage_params,
)
from autotune.spec import TrainingSpec

LOW = TrainingSpec(seq_len=2048, global_batch=64, grad_buffers="low")


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_zero_stages_match_rajbhandari(n: int) -> None:
    psi = 7.5e9
    expect = {0: 16 * psi, 1: 4 * psi + 12 * psi / n, 2: 2 * psi + 14 * psi / n, 3: 16 * psi / n}
    for stage, total in expect.items():
        assert sum(model_state_bytes(psi, stage, n, LOW)) == pytest.approx(total)


def _layout(model, training, gpus, **kw):
    return layout_scalars(derive(model, training, gpus, **kw))


def test_korthikanti_no_flash(gpt_small) -> None:
    # s·b·h·(34 + 5·a·s/h) with s=2048, b=1, h=1024, a=16: 5·16·2048/1024 = 160.
    t = TrainingSpec(seq_len=2048, global_batch=64, flash_attention=False)
    sbh = 2048 * 1 * 1024
    stored, checkpoint = activation_bytes_per_layer(gpt_small, t, _layout(gpt_small, t, 1))
    assert stored == pytest.approx(sbh * (34 + 160))
    assert checkpoint == pytest.approx(2 * sbh)
    # tp=2 without SP: sbh·(10 + 24/t + 5as/(ht)).
    stored, _ = activation_bytes_per_layer(gpt_small, t, _layout(gpt_small, t, 2, tp=2))
    assert stored == pytest.approx(sbh * (10 + 12 + 80))
    # tp=2 with SP: sbh/t·(34 + 5as/h); selective: 34·sbh/t; full: 2·sbh/t.
    stored, checkpoint = activation_bytes_per_layer(gpt_small, t, _layout(gpt_small, t, 2, tp=2,
                                                                           sequence_parallel=True))
    assert stored == pytest.approx(sbh / 2 * (34 + 160))
    assert checkpoint == pytest.approx(sbh)
    stored, _ = activation_bytes_per_layer(gpt_small, t, _layout(gpt_small, t, 2, tp=2, sequence_parallel=True,
                                                                  recompute="selective"))
    assert stored == pytest.approx(34 * sbh / 2)


def test_llama_gqa_swiglu_terms(llama8b) -> None:
    # Llama-3-8B, no dropout: 4h (norms) + 2h (qkv in) + 2h (Q) + 4·1024 (K,V) + 2h (proj in)
    # + 2h (fc1 in) + 6f (SwiGLU) = 12h + h + 21h = 34h bytes/token; flash adds 4a (fp32 lse).
    t = TrainingSpec(seq_len=8192, global_batch=64)
    stored, _ = activation_bytes_per_layer(llama8b, t, _layout(llama8b, t, 1))
    h = 4096
    assert stored == pytest.approx(8192 * (34 * h + 4 * 32))
    # tp=8 with SP: the 12h of norms/inputs/Q/projection and 6f divide by 8; kv_heads=8 = tp leaves one
    # KV head per rank: K,V = 2·2·128 bytes/token.
    stored, _ = activation_bytes_per_layer(llama8b, t, _layout(llama8b, t, 8, tp=8, sequence_parallel=True))
    assert stored == pytest.approx(8192 * ((12 * h + 6 * 14336) / 8 + 4 * 128 + 4 * 32 / 8))


def test_pipeline_in_flight(gpt_small) -> None:
    # 1F1B keeps min(p, m) micro-batches on stage 0, L/p layers each; interleaving multiplies by
    # 1 + (p-1)/(p·v) of p micro-batches.
    t = TrainingSpec(seq_len=2048, global_batch=64, flash_attention=False)
    sbh = 2048 * 1024
    per_layer = sbh * (34 + 160)
    emb_mask = sbh  # 1-byte embedding-dropout mask per micro-batch in flight
    for gpus, ga, expect_in_flight in [(4, 64, 4), (4 * 32, 2, 2)]:
        L = _layout(gpt_small, t, gpus, pp=4)
        assert L["grad_accum"] == ga
        first, _ = activation_bytes(gpt_small, t, L)
        assert first == pytest.approx(expect_in_flight * (2 * per_layer + emb_mask))
    L = _layout(gpt_small, t, 4, pp=4, vpp=2)
    first, _ = activation_bytes(gpt_small, t, L)
    assert first == pytest.approx(4 * (1 + 3 / 8) * (2 * per_layer + emb_mask))


def test_full_recompute_keeps_inputs_plus_one_layer(gpt_small) -> None:
    # The re-run layer (backward) and the logits (fp32 4sV + the bf16 2sV alive while the loss makes its
    # fp32 copy) are never live together: the stage keeps the larger, here the logits
    # (6·2048·51200 = 629 MB > sbh·194 = 407 MB).
    t = TrainingSpec(seq_len=2048, global_batch=64, flash_attention=False)
    sbh = 2048 * 1024
    logits = (4 + 2) * 2048 * 51200
    assert logits > sbh * (34 + 160)
    L = _layout(gpt_small, t, 1, recompute="full")
    first, _ = activation_bytes(gpt_small, t, L)
    assert first == pytest.approx(8 * 2 * sbh + sbh + logits)
    L = _layout(gpt_small, t, 1, recompute="full", recompute_layers=3)
    first, _ = activation_bytes(gpt_small, t, L)
    assert first == pytest.approx(3 * 2 * sbh + 5 * sbh * (34 + 160) + sbh + logits)


def test_stage_params_place_embeddings(gpt_small) -> None:
    h, v = 1024, 51200
    layer = 12 * h * h + 13 * h
    first, last = stage_params(gpt_small, 1, 2)
    assert first == pytest.approx(4 * layer + v * h + 2048 * h)
    # tied + pp > 1: the last stage keeps its own copy of the word embeddings, plus the final norm.
    assert last == pytest.approx(4 * layer + v * h + 2 * h)


def test_breakdown_sums_and_verdict(llama8b, h100, training_8k) -> None:
    L = _layout(llama8b, training_8k, 8, tp=2, zero=1)
    mem = memory_breakdown(llama8b, training_8k, h100, L)
    parts = sum(float(mem[k]) for k in ("weights", "gradients", "optimizer", "activations", "other"))
    assert float(mem["total"]) == pytest.approx(parts)
    # weights: bf16 of (layers/tp + norms) + embeddings/tp + untied head/tp + final norm.
    n = 32 * ((8.030261248e9 - 2 * 128256 * 4096 - 4096) / 32 - 2 * 4096) / 2 + 32 * 2 * 4096
    psi = n + 2 * 128256 * 4096 / 2 + 4096
    assert float(mem["weights"]) * GIB == pytest.approx(2 * psi)
    assert float(mem["optimizer"]) * GIB == pytest.approx(12 * psi / 4)
    assert bool(mem["fits"]) == (float(mem["total"]) <= 79.6 * 0.95)


def test_zero3_adds_gather_buffers_but_shards_states(llama8b, h100, training_8k) -> None:
    m2 = memory_breakdown(llama8b, training_8k, h100, _layout(llama8b, training_8k, 8, zero=2))
    m3 = memory_breakdown(llama8b, training_8k, h100, _layout(llama8b, training_8k, 8, zero=3))
    assert float(m3["weights"]) == pytest.approx(float(m2["weights"]) / 8)
    assert float(m3["total"]) < float(m2["total"])


def test_gpipe_keeps_every_micro_batch(gpt_small) -> None:
    t = TrainingSpec(seq_len=2048, global_batch=64, flash_attention=False)
    one = activation_bytes(gpt_small, t, _layout(gpt_small, t, 4, pp=4))[0]
    gpipe = activation_bytes(gpt_small, t, _layout(gpt_small, t, 4, pp=4, pp_schedule="gpipe"))[0]
    assert gpipe == pytest.approx(one * 64 / 4)


def test_gpipe_last_stage_keeps_every_micro_batch_and_its_logits(gpt_small) -> None:
    # 1F1B's last stage holds one micro-batch; GPipe's holds all m = 64, each with its fp32 logits 4sV.
    t = TrainingSpec(seq_len=2048, global_batch=64, flash_attention=False)
    stored, _ = activation_bytes_per_layer(gpt_small, t, _layout(gpt_small, t, 4, pp=4))
    one = activation_bytes(gpt_small, t, _layout(gpt_small, t, 4, pp=4))[1]
    gpipe = activation_bytes(gpt_small, t, _layout(gpt_small, t, 4, pp=4, pp_schedule="gpipe"))[1]
    assert gpipe - one == pytest.approx(63 * (2 * stored + 4 * 2048 * 51200))
