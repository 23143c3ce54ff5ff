"""MoE time terms against hand-worked numbers: the all-to-all at ep 8 inside a node vs ep 64 across 8 nodes,
token copies per local expert, the grouped expert GEMMs, expert gradients over edp, the a2a overlap floor,
and the busiest middle stage of DeepSeek-V3's uneven 61-layer split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.catalog import get_gpu, get_model, resolve_stack
from autotune.config import derive
from autotune.costmodel.layout import layout_scalars
from autotune.costmodel.moe import busiest_stage_moe_layers
from autotune.costmodel.moe_time import a2a_time, etp_time, moe_forward_times, rows_per_expert
from autotune.costmodel.time import MOE_DETAIL, expert_grad_comm, step_time
from autotune.spec import GPUSpec, ModelSpec, TrainingSpec

#: Round-number GPU: 100 TFLOP/s bf16, 1000 GB/s HBM, NVLink 100 GB/s, NIC 10 GB/s per GPU, no latencies,
#: line-rate collectives, GEMM curve 0.8 / (1 + 192/width + 96/rows), no launch latency.
TOY = GPUSpec(name="toy", memory_gib=80, peak_tflops={"fp32": 25, "tf32": 50, "bf16": 100, "fp16": 100, "fp8": 200},
              hbm_gbps=1000, intra_node_gbps=100, inter_node_gbps=10, intra_node_latency_us=1e-9,
              inter_node_latency_us=1e-9, nvlink_bus_eff=1.0, net_bus_eff=1.0)
T = TrainingSpec(seq_len=1024, global_batch=64)
#: Two MoE layers of 64 experts (width 512, SwiGLU), top-2, h 1024, dropless (imbalance 1.25).
MOE = ModelSpec(name="toy-moe", layers=2, hidden=1024, heads=8, ffn_hidden=4096, vocab=1000, activation="swiglu",
                norm="rmsnorm", experts=64, experts_per_token=2, expert_ffn_hidden=512)
#: Busiest rank's dispatched bytes per all-to-all: 1.25 · k 2 · 1024 tokens · h 1024 · 2 bytes.
M = 1.25 * 2 * 1024 * 1024 * 2


def _L(gpus: int, model: ModelSpec = MOE, training: TrainingSpec = T, **kw):
    return layout_scalars(derive(model, training, gpus, **kw))


def test_a2a_ep8_inside_a_node_vs_ep64_across_8_nodes() -> None:
    # ep 8 on one node: 7/8 of M to the 7 peers over NVLink, 5,242,880 · 7/8 / 100e9 = 45.875 us.
    assert a2a_time(MOE, T, TOY, 8, _L(8, ep=8), "tp-cp-dp-pp") == pytest.approx(7 / 8 * M / 100e9)
    # ep 64 over 8 nodes, 8 members each: 7/64 of M over NVLink (5.7 us) and 56/64 over the rank's own
    # 10 GB/s NIC: 458.752 us, the slower of the two.
    across = a2a_time(MOE, T, TOY, 8, _L(64, ep=64), "tp-cp-dp-pp")
    assert across == pytest.approx(56 / 64 * M / 10e9) == pytest.approx(458.752e-6)


def test_tokens_per_local_expert() -> None:
    # 1.25 · 2 · 1024 = 2560 copies on the busiest rank; E/ep local experts share them.
    assert rows_per_expert(MOE, T, _L(8, ep=8)) == pytest.approx(2560 * 8 / 64) == 320
    assert rows_per_expert(MOE, T, _L(64, ep=64)) == 2560
    # etp 2: both ranks of an expert see all 2 · 2560 copies of their pair, at width 256.
    assert rows_per_expert(MOE, T, _L(16, ep=8, etp=2)) == 640


def test_grouped_gemm_one_latency_per_group() -> None:
    # ep 8: 2560 copies · 2·3·1024·512 FLOPs = 8,053,063,680 at 0.8/(1 + 192/512 + 96/320) = 0.47761 of
    # 100 TFLOP/s = 168.61 us, plus two grouped launches (fc1, fc2) of 10 us each, not 2 per local expert.
    gpu = TOY.model_copy(update={"gemm_latency_us": 10.0})
    t = moe_forward_times(MOE, T, gpu, _L(8, ep=8), resolve_stack(None))
    flops = 2560 * 2 * 3 * 1024 * 512
    assert t["experts"] == pytest.approx(flops / (100e12 * 0.8 / (1 + 192 / 512 + 96 / 320)) + 2 * 10e-6)
    # Router: 1024 tokens · 2·1024·64 FLOPs at 0.8/(1 + 192/64 + 96/1024) of peak, one launch.
    assert t["router"] == pytest.approx(1024 * 2 * 1024 * 64 / (100e12 * 0.8 / (1 + 3 + 96 / 1024)) + 10e-6)


def test_etp_all_gathers_the_dispatched_copies() -> None:
    # etp 2 inside a node: each rank ends with 2 · 2560 copies of h = 1024 bf16: (2−1)/2 · 10,485,760 B / 100 GB/s.
    assert etp_time(MOE, T, TOY, 8, _L(16, ep=8, etp=2), "tp-cp-dp-pp") == pytest.approx(0.5 * 2 * M / 100e9)
    assert etp_time(MOE, T, TOY, 8, _L(8, ep=8), "tp-cp-dp-pp") == 0.0


def test_expert_gradients_reduce_over_edp() -> None:
    # 16 GPUs, ep 4: edp = 4 ranks {r, r+4, r+8, r+12}, two on each of 2 nodes, so the ring crosses nodes on
    # 2 rails: 2 · 10 GB/s. Ψ_e = 2 layers · 16 experts · 3·1024·512 = 50,331,648; zero 0 all-reduces the fp32
    # gradients: 2·3/4 · 4Ψ_e / 20e9 = 15.0995 ms.
    rs, ar, ag = expert_grad_comm(MOE, T, TOY, 8, _L(16, ep=4), "tp-cp-dp-pp")
    assert (rs, ag) == (0.0, 0.0)
    assert ar == pytest.approx(2 * 3 / 4 * 4 * 50_331_648 / 20e9)
    # ZeRO-1 shards them over the 4 edp ranks: reduce-scatter 3/4 · 4Ψ_e, all-gather 3/4 · 2Ψ_e, same links.
    rs, ar, ag = expert_grad_comm(MOE, T, TOY, 8, _L(16, ep=4, zero=1), "tp-cp-dp-pp")
    assert (rs, ar, ag) == pytest.approx((3 / 4 * 4 * 50_331_648 / 20e9, 0.0, 3 / 4 * 2 * 50_331_648 / 20e9))


def test_a2a_counts_forward_backward_and_recompute() -> None:
    # Per MoE layer per micro-batch: dispatch + combine in forward and in backward, 4 all-to-alls; 2 layers,
    # m = 64 / 8 = 8 micro-batches. Full recompute runs the forward pair again: 6.
    out = step_time(MOE, T, TOY, 8, _L(8, ep=8))
    one = 7 / 8 * M / 100e9
    assert out["moe_a2a"] == pytest.approx(4 * 2 * 8 * one) == pytest.approx(out["ep_comm"])
    full = step_time(MOE, T, TOY, 8, _L(8, ep=8, recompute="full"))
    assert full["ep_comm"] == pytest.approx(6 * 2 * 8 * one)


def test_overlap_leaves_one_micro_batch_exposed_when_compute_covers_it() -> None:
    # A slow GPU (1 TFLOP/s) hides the 45.9 us all-to-alls behind the other micro-batch's layer; the first
    # forward and the last backward have no partner: 1/m of them stays exposed, m = 8.
    slow = TOY.model_copy(update={"peak_tflops": {k: 1.0 for k in TOY.peak_tflops}})
    on = step_time(MOE, T, slow, 8, _L(8, ep=8, moe_a2a_overlap=True))
    assert on["ep_comm"] == pytest.approx(on["moe_a2a"] / 8)
    assert on["moe_ep_hidden"] == pytest.approx(on["moe_a2a"] * 7 / 8)


def test_dense_models_have_no_moe_terms(gpt_small) -> None:
    out = step_time(gpt_small, T, TOY, 8, layout_scalars(derive(gpt_small, T, 8)))
    assert out["ep_comm"] == 0.0 and not any(k.startswith("moe_") for k in out)


def test_deepseek_v3_busiest_middle_stage() -> None:
    # 61 layers on pp 16 split 2, 4 × 14, 3 (embedding and loss counted as layers); the first 3 are dense, so
    # stage 1 (layers 2-5) holds 3 MoE layers and stage 14 (layers 54-57) 4, the most of any middle stage.
    ds = get_model("deepseek-v3")
    t = TrainingSpec(seq_len=4096, global_batch=15360)
    L = layout_scalars(derive(ds, t, 2048, pp=16, ep=64, zero=1))
    assert (L["pp_first_layers"], L["pp_last_layers"]) == (2, 3)
    assert busiest_stage_moe_layers(ds, L) == (0, 4, 3)


@settings(max_examples=60, deadline=None)
@given(ep=st.sampled_from([1, 2, 4, 8, 16, 32, 64]), nodes=st.sampled_from([1, 2, 8]),
       mb=st.sampled_from([1, 2]), overlap=st.booleans(), gpu=st.sampled_from(["h100-sxm", "h800", "a100-80gb"]))
def test_a2a_physical_limits(ep: int, nodes: int, mb: int, overlap: bool, gpu: str) -> None:
    """The all-to-all never beats the bytes leaving a node over its NICs, overlap never lengthens a step, and the
    breakdown still sums to the step."""
    g, t = get_gpu(gpu), TrainingSpec(seq_len=1024, global_batch=256)
    gpus = 8 * nodes
    if ep > gpus:
        return
    kw = dict(ep=ep, micro_batch=mb, moe_a2a_overlap=overlap and ep > 1)
    L = _L(gpus, training=t, **kw)
    one = a2a_time(MOE, t, g, 8, L, "tp-cp-dp-pp")
    off_node = (ep - min(ep, 8)) / ep * M * mb
    assert one >= off_node / (g.inter_node_gbps * 1e9) - 1e-12
    out = step_time(MOE, t, g, 8, L)
    base = step_time(MOE, t, g, 8, _L(gpus, training=t, **(kw | {"moe_a2a_overlap": False})))
    assert out["step_time_s"] <= base["step_time_s"] * (1 + 1e-12)
    assert out["ep_comm"] >= out["moe_a2a"] / L["grad_accum"] * (1 - 1e-12) or not kw["moe_a2a_overlap"]
    parts = ("compute", "recompute", "tp_comm", "cp_comm", "ep_comm", "pp_bubble", "pp_p2p", "dp_comm_exposed",
             "optimizer")
    assert sum(out[k] for k in parts) == pytest.approx(out["step_time_s"])
    assert set(MOE_DETAIL) <= {k[4:] for k in out if k.startswith("moe_")}


def test_reproduce_command_carries_the_overlap_flag(cli) -> None:
    """``best``'s reproduce command sets --moe-a2a-overlap, and running it gives that layout and its lower
    ep_comm back (the flag hides all but 1/m of the all-to-all when compute covers it)."""
    import json
    import shlex

    from autotune.results.reproduce import estimate_command

    spec = {"name": "moe", "model": "mixtral-8x7b", "cluster": {"gpu": "h100-sxm", "nodes": 8, "reliability": "off"},
            "training": {"seq_len": 4096, "global_batch": 512, "stack": "megatron-te"}}
    layout = {"pp": 4, "vpp": 4, "ep": 4, "zero": 1, "moe_a2a_overlap": True}
    args = shlex.split(estimate_command(spec, layout))
    assert "--moe-a2a-overlap" in args
    outs = []
    for extra in ([], ["--no-moe-a2a-overlap"]):
        code, out, err = cli(args[1:] + extra + ["--json"])
        assert code == 0, err
        outs.append(json.loads(out))
    on, off = outs
    assert on["config"]["moe_a2a_overlap"] and not off["config"]["moe_a2a_overlap"]
    assert on["time_breakdown_s"]["ep_comm"] < off["time_breakdown_s"]["ep_comm"] == off["moe_time_s"]["a2a"]


def test_exporters_write_or_refuse_the_overlap() -> None:
    """Megatron-LM core_v0.19.0 gets --overlap-moe-expert-parallel-comm (with the vpp its pipeline needs);
    torchtitan refuses it by name."""
    from autotune.errors import InfeasibleConfig
    from autotune.export import get_exporter
    from autotune.spec import ClusterSpec

    mixtral = get_model("mixtral-8x7b")
    t = TrainingSpec(seq_len=4096, global_batch=512)
    cluster = ClusterSpec(gpu="h100-sxm", nodes=8)
    cfg = derive(mixtral, t, 64, pp=4, vpp=4, ep=4, zero=1, moe_a2a_overlap=True)
    script = get_exporter("megatron").render(mixtral, t, cluster, cfg)
    assert "--overlap-moe-expert-parallel-comm" in script and "--expert-model-parallel-size 4" in script
    plain = derive(mixtral, t, 64, pp=4, vpp=4, ep=4, zero=1)
    assert "--overlap-moe-expert-parallel-comm" not in get_exporter("megatron").render(mixtral, t, cluster, plain)
    with pytest.raises(InfeasibleConfig, match="^torchtitan: moe_a2a_overlap=True is not supported"):
        get_exporter("torchtitan").render(mixtral, t, cluster, derive(mixtral, t, 64, pp=4, ep=4, zero=2,
                                                                      moe_a2a_overlap=True))
