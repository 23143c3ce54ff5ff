"""Each term of the step-time model on hand-worked cases (round-number GPU, latencies ~0)."""

from __future__ import annotations

import pytest

from autotune.catalog import get_gpu, get_model
from autotune.config import derive
from autotune.costmodel.compute import gemm_efficiency, peak_flops
from autotune.costmodel.flops import iteration_flops, layer_linear_flops
from autotune.costmodel.layout import layout_scalars
from autotune.costmodel.time import step_time
from autotune.spec import GPUSpec, TrainingSpec

TOY = GPUSpec(name="toy", memory_gib=80, peak_tflops={"fp32": 25, "tf32": 50, "bf16": 100, "fp16": 100, "fp8": 200},
              hbm_gbps=1000, intra_node_gbps=100, inter_node_gbps=10, intra_node_latency_us=1e-9,
              inter_node_latency_us=1e-9, nvlink_bus_eff=1.0, net_bus_eff=1.0)
FAST = TOY.model_copy(update={"peak_tflops": {k: 1e9 for k in TOY.peak_tflops}, "hbm_gbps": 1e12})
INTRA, INTER = 100e9, 10e9
# gpt_small: h=1024, l=8, V=51200, 2048 learned positions: N = hV + 2048h + l(12h² + 13h) + 2h.
PSI = 1024 * 51200 + 2048 * 1024 + 8 * (12 * 1024**2 + 13 * 1024) + 2 * 1024


def _L(model, training, gpus, **kw):
    return layout_scalars(derive(model, training, gpus, **kw))


@pytest.mark.parametrize(("world", "layout", "seconds"), [
    # tp=8: 8 layers x 8 micro-batches x 16·b·s·h·(t−1)/t bytes over NVLink
    (8, dict(tp=8), 8 * 8 * 16 * 2048 * 1024 * 7 / 8 / INTRA),
    # dp=8, ZeRO-0, not overlapped: ring all-reduce of the fp32 gradients, 2·(d−1)/d·4Ψ bytes
    (8, dict(zero=0, overlap_grad_reduce=False), 2 * 7 / 8 * 4 * PSI / INTRA),
    # pp=2, m=8: 2·(m + p − 1) sends of b·s·h bf16 activations
    (2, dict(pp=2), 2 * 9 * 2048 * 1024 * 2 / INTRA),
])
def test_step_time_is_the_communication_when_compute_is_free(gpt_small, world: int, layout: dict,
                                                              seconds: float) -> None:
    t = TrainingSpec(seq_len=2048, global_batch=8)
    out = step_time(gpt_small, t, FAST, 8, _L(gpt_small, t, world, **layout))
    assert out["step_time_s"] == pytest.approx(seconds, rel=1e-4)
    assert all(isinstance(v, float) for v in out.values())


@pytest.mark.parametrize(("vpp", "expect"), [(1, 3 / 8), (2, 3 / 16)])
def test_bubble_fraction(gpt_small, vpp: int, expect: float) -> None:
    t = TrainingSpec(seq_len=2048, global_batch=8)
    out = step_time(gpt_small, t, TOY, 8, _L(gpt_small, t, 4, pp=4, vpp=vpp))  # m = 8
    busy = out["compute"] + out["recompute"] + out["tp_comm"] + out["cp_comm"]
    assert out["pp_bubble"] / busy == pytest.approx(expect)


def test_tp_volume_is_narayanan_8bsh_elements(gpt_small) -> None:
    # 8·b·s·h·(t−1)/t elements = 16·b·s·h·(t−1)/t bf16 bytes per layer per micro-batch, 8 layers, m = 8.
    t = TrainingSpec(seq_len=2048, global_batch=8)
    per_layer = 16 * 1 * 2048 * 1024 * 7 / 8
    out = step_time(gpt_small, t, TOY, 8, _L(gpt_small, t, 8, tp=8))
    assert out["tp_comm"] == pytest.approx(8 * 8 * per_layer / INTRA)
    full = step_time(gpt_small, t, TOY, 8, _L(gpt_small, t, 8, tp=8, recompute="full"))
    assert full["tp_comm"] == pytest.approx(8 * 8 * per_layer * 6 / 4 / INTRA)  # forward collectives redone
    sp = step_time(gpt_small, t, TOY, 8, _L(gpt_small, t, 8, tp=8, sequence_parallel=True))
    assert sp["tp_comm"] == pytest.approx(out["tp_comm"])


def test_tp_switches_to_inter_node_beyond_a_node(gpt_small) -> None:
    t = TrainingSpec(seq_len=2048, global_batch=8)
    L = _L(gpt_small, t, 16, tp=16)
    inside = step_time(gpt_small, t, TOY, 16, L)["tp_comm"]
    across = step_time(gpt_small, t, TOY, 8, L)["tp_comm"]
    # 16 ranks on 2 nodes, 8 per node: 8 rings in parallel, one per NIC: 8 x 10 GB/s = 80 GB/s bus bandwidth
    assert across / inside == pytest.approx(INTRA / (8 * INTER))
    assert step_time(gpt_small, t, TOY, 8, _L(gpt_small, t, 8, tp=8))["tp_comm"] < across


def test_placement_order_moves_dp_inside_the_node(gpt_small) -> None:
    t = TrainingSpec(seq_len=2048, global_batch=32)
    L = _L(gpt_small, t, 16, tp=2, overlap_grad_reduce=False)  # dp = 8
    default = step_time(gpt_small, t, TOY, 8, L)["dp_comm_exposed"]
    dp_inner = step_time(gpt_small, t, TOY, 8, L, order="dp-tp-cp-pp")["dp_comm_exposed"]
    # default: the dp group (stride 2) spans both nodes with 4 members on each -> 4 NICs x 10 GB/s = 40 GB/s
    assert default / dp_inner == pytest.approx(INTRA / (4 * INTER), rel=1e-3)
    with pytest.raises(ValueError, match="order"):
        step_time(gpt_small, t, TOY, 8, L, order="tp-dp-pp")


@pytest.mark.parametrize(("zero", "grad_accum", "volume"), [
    (0, 1, 2 * 7 / 8 * 4 * PSI),            # all-reduce of fp32 gradients
    (1, 1, 7 / 8 * (4 + 2) * PSI),          # reduce-scatter fp32 grads + all-gather bf16 params
    (2, 1, 7 / 8 * (4 + 2) * PSI),
    (3, 4, 4 * 7 / 8 * (2 + 2 + 4) * PSI),  # per micro-batch: gather fwd, gather bwd, reduce-scatter
])
def test_dp_and_zero_volumes(gpt_small, zero: int, grad_accum: int, volume: float) -> None:
    t = TrainingSpec(seq_len=2048, global_batch=8 * grad_accum)
    L = _L(gpt_small, t, 8, zero=zero, overlap_grad_reduce=False, overlap_param_gather=False)
    assert L["grad_accum"] == grad_accum
    assert step_time(gpt_small, t, TOY, 8, L)["dp_comm_exposed"] == pytest.approx(volume / INTRA)


def test_hsdp_adds_a_replica_all_reduce_of_the_shard(gpt_small) -> None:
    t = TrainingSpec(seq_len=2048, global_batch=8)
    L = _L(gpt_small, t, 8, zero=3, dp_shard=4, overlap_grad_reduce=False, overlap_param_gather=False)
    expect = 3 / 4 * 8 * PSI + 2 * 1 / 2 * 4 * PSI / 4
    assert step_time(gpt_small, t, TOY, 8, L)["dp_comm_exposed"] == pytest.approx(expect / INTRA)


@pytest.mark.parametrize("zero", [0, 1, 2])
def test_grad_accumulation_reduces_once_per_step(gpt_small, zero: int) -> None:
    comm = []
    for gbs in (8, 64):
        t = TrainingSpec(seq_len=2048, global_batch=gbs)
        L = _L(gpt_small, t, 8, zero=zero, overlap_grad_reduce=False, overlap_param_gather=False)
        comm.append(step_time(gpt_small, t, TOY, 8, L)["dp_comm_exposed"])
    assert comm[0] == pytest.approx(comm[1])


def test_overlap_hides_all_but_the_last_bucket() -> None:
    model, t = get_model("gpt3-7.5b"), TrainingSpec(seq_len=2048, global_batch=64)
    base = dict(zero=0, micro_batch=8, overlap_grad_reduce=False)
    hidden = step_time(model, t, TOY, 8, _L(model, t, 8, **(base | {"overlap_grad_reduce": True})))
    exposed = step_time(model, t, TOY, 8, _L(model, t, 8, **base))
    assert hidden["dp_comm_exposed"] < exposed["dp_comm_exposed"]
    assert hidden["dp_comm_exposed"] >= exposed["dp_comm_exposed"] * 40e6 / model.param_count() * 0.999


def test_cp_ring_exposed_only_beyond_attention(gpt_small) -> None:
    t = TrainingSpec(seq_len=2048, global_batch=4)
    L = _L(gpt_small, t, 2, cp=2)  # m = 4, one ring step of K and V: 2·(2048/2)·1024 bf16 elements
    ring = 2 * 1024 * 1024 * 2 / INTER
    assert step_time(gpt_small, t, FAST, 1, L)["cp_comm"] == pytest.approx(4 * 8 * 3 * ring, rel=1e-4)
    assert step_time(gpt_small, t, TOY.model_copy(update={"intra_node_gbps": 1e9}), 8, L)["cp_comm"] == 0.0


def test_pipeline_p2p(gpt_small) -> None:
    t = TrainingSpec(seq_len=2048, global_batch=4)
    msg = 2048 * 1024 * 2 / INTER  # b·s·h bf16 bytes over the inter-node link
    out = step_time(gpt_small, t, TOY, 1, _L(gpt_small, t, 2, pp=2))  # m = 4: 2·(m + p − 1) sends
    assert out["pp_p2p"] == pytest.approx(2 * 5 * msg)
    out = step_time(gpt_small, t, TOY, 1, _L(gpt_small, t, 4, pp=2, tp=2, sequence_parallel=True))
    assert out["pp_p2p"] == pytest.approx(2 * 5 * msg / 2)


def test_optimizer_reads_and_writes_its_states(gpt_small) -> None:
    # Adam, bf16, fp32 main grads: read+write 12 B of states, read 4 B grad, write 2 B weight = 30 B/param.
    t = TrainingSpec(seq_len=2048, global_batch=8)
    assert step_time(gpt_small, t, TOY, 8, _L(gpt_small, t, 8))["optimizer"] == pytest.approx(30 * PSI / 1e12)
    sharded = step_time(gpt_small, t, TOY, 8, _L(gpt_small, t, 8, zero=1))["optimizer"]
    assert sharded == pytest.approx(30 * PSI / 8 / 1e12)


def test_flops_match_narayanan_formulas() -> None:
    model, B, s = get_model("gpt3-1.7b"), 512, 2048
    n, h, V = model.layers, model.hidden, model.vocab
    t = TrainingSpec(seq_len=s, global_batch=B)
    none = _L(model, t, 32)
    mf, hf = iteration_flops(model, t, none)
    # Narayanan's 72·B·s·l·h²·(1 + s/6h + V/12lh) with the causal core (2sh per token, not 4sh): s/12h.
    assert mf == pytest.approx(72 * B * s * n * h**2 * (1 + s / (12 * h) + V / (12 * n * h)))
    assert hf == mf
    _, hf = iteration_flops(model, t, _L(model, t, 32, recompute="full"))
    assert hf == pytest.approx(96 * B * s * n * h**2 * (1 + s / (12 * h) + V / (16 * n * h)))
    _, hf = iteration_flops(model, t, _L(model, t, 32, recompute="selective"))
    assert hf - mf == pytest.approx(B * s * n * 2 * s * h)
    _, hf = iteration_flops(model, t, _L(model, t, 32, pp=2, recompute="full", recompute_layers=6))
    assert hf - mf == pytest.approx(0.5 * B * s * n * (24 * h * h + 2 * s * h))


def test_swiglu_gqa_linear_flops() -> None:
    # Llama-3-8B: QKV 2h(h + 2·1024), projection 2h², SwiGLU 3 matrices 6hf; h=4096, f=14336.
    assert layer_linear_flops(get_model("llama3-8b")) == 2 * 4096 * 6144 + 2 * 4096**2 + 6 * 4096 * 14336


def test_precisions() -> None:
    h100, model = get_gpu("h100-sxm"), get_model("llama3-8b")
    assert peak_flops(h100, "fp32") == (494.7e12, 494.7e12)  # TF32 tensor cores
    assert peak_flops(h100, "fp8") == (1978.9e12, 989.4e12)  # attention core stays bf16
    times = {}
    for p in ("bf16", "fp8"):
        t = TrainingSpec(seq_len=8192, global_batch=8, precision=p, stack="megatron-te")
        times[p] = step_time(model, t, h100, 8, _L(model, t, 8, tp=1))["compute"]
    assert 1.0 < times["bf16"] / times["fp8"] < 2.0
    eager = {p: TrainingSpec(seq_len=8192, global_batch=8, precision=p, stack="eager") for p in ("bf16", "fp8")}
    eager_t = {p: step_time(model, t, h100, 8, _L(model, t, 8))["compute"] for p, t in eager.items()}
    assert eager_t["fp8"] == pytest.approx(eager_t["bf16"])  # a stack without fp8 runs the GEMMs in bf16


def test_gemm_efficiency_curve() -> None:
    gpu = get_gpu("a100-80gb")
    assert gemm_efficiency(gpu, 1e30, 1e30) == pytest.approx(gpu.gemm_eff_max)
    assert gemm_efficiency(gpu, gpu.gemm_k_dim, 1e30) == pytest.approx(gpu.gemm_eff_max / 2)
    assert gemm_efficiency(gpu, 512, 256) < gemm_efficiency(gpu, 4096, 8192) <= 0.85
