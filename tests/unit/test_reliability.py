"""Failures, checkpoints and goodput (autotune.costmodel.reliability) against hand-worked numbers."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.config import derive
from autotune.costmodel import estimate
from autotune.costmodel.layout import layout_arrays
from autotune.costmodel.reliability import (
    checkpoint_bytes,
    daly_goodput,
    reliability_arrays,
    with_expected,
    young_daly_interval_s,
)
from autotune.errors import SpecError
from autotune.search.objectives import objective_for
from autotune.spec import ClusterSpec, GPUSpec, ModelSpec, ReliabilitySpec, TrainingSpec, parse_spec

# GPT-style, untied: layer = 12h² + 2·2h (two LayerNorms) = 12·1024² + 4,096 = 12,587,008;
# embedding = output = 32,000·1024 = 32,768,000; final norm 2,048.
# N = 32,768,000 + 4·12,587,008 + 32,768,000 + 2,048 = 115,886,080.
MODEL = ModelSpec(name="gpt-116m", layers=4, hidden=1024, heads=16, vocab=32000)
N = 115_886_080
TRAIN = TrainingSpec(seq_len=1024, global_batch=1024, tokens=1e9)
GPU = GPUSpec(name="g", memory_gib=80, peak_tflops={"bf16": 1000.0}, hbm_gbps=3000, intra_node_gbps=300,
              inter_node_gbps=50)


def _layout(gpus: int = 8, **kw):
    return layout_arrays([derive(MODEL, TRAIN, gpus, **kw)])


def test_the_model_has_the_hand_counted_parameters() -> None:
    assert MODEL.param_count() == N


@pytest.mark.parametrize(("kw", "rank_bytes"), [
    # bf16 + Adam: a checkpoint holds 2 B weights + 12 B optimizer states per parameter (no gradients).
    ({"zero": 0}, 14 * N),                      # replicated: every byte on dp rank 0
    ({"zero": 1}, 2 * N + 12 * N // 8),         # ZeRO-1 over 8: 2Ψ + 12Ψ/8 = 3.5Ψ = 405,601,280
    ({"zero": 2}, 2 * N + 12 * N // 8),         # gradients are not saved: as ZeRO-1
    ({"zero": 3}, 14 * N // 8),                 # ZeRO-3: 14Ψ/8 = 202,800,640
    # pp 2, ZeRO-0: last stage = 2 layers + final norm + output = 25,174,016 + 2,048 + 32,768,000 = 57,944,064
    # (first stage: 25,174,016 + 32,768,000 = 57,942,016); 14 B each.
    ({"pp": 2}, 14 * 57_944_064),
])
def test_checkpoint_bytes_per_rank_follow_the_sharding(kw, rank_bytes) -> None:
    rank, total = checkpoint_bytes(MODEL, TRAIN, _layout(**kw))
    assert rank[0] == pytest.approx(rank_bytes, rel=1e-12)
    assert total == 14 * N  # the unique bytes do not depend on the layout


def test_young_daly_interval_by_hand() -> None:
    # sqrt(2 · 50 s · 10,000 s) = sqrt(1,000,000) = 1,000 s
    assert young_daly_interval_s(50.0, 10_000.0) == pytest.approx(1000.0)
    # Llama 3 defaults on 16,384 GPUs: M = 86,400 / (419/54) = 11,135.08 s; C = 60 s -> sqrt(1,336,210) = 1,155.9 s
    assert young_daly_interval_s(60.0, 86400 * 54 / 419) == pytest.approx(1155.94, abs=0.01)


def test_goodput_worked_on_paper() -> None:
    # τ = 1,000 s, C = 50 s, R = 600 s, M = 10,000 s: e^(R/M) = e^0.06 = 1.0618365, e^((τ+C)/M) − 1 = e^0.105 − 1
    # = 0.1107106; goodput = 1,000 / (10,000 · 1.0618365 · 0.1107106) = 1,000 / 1,175.56 = 0.850654.
    # (First order: 1 − 50/1,000 − (525 + 600)/10,000 = 0.8375.)
    assert daly_goodput(1000.0, 50.0, 600.0, 10_000.0) == pytest.approx(0.850654, abs=1e-6)


def test_reliability_block_worked_by_hand() -> None:
    rel = ReliabilitySpec(failures_per_gpu_day=1.0, restart_min=1.0, checkpoint_write_gbps_per_node=1.0,
                          checkpoint_read_gbps_per_node=1.0, storage_write_gbps=2000, storage_read_gbps=2000)
    out = reliability_arrays(MODEL, TRAIN, rel, 8, _layout(zero=3))
    # 8 GPUs x 1 failure/day: Λ = 8/day, M = 3 h = 10,800 s.
    assert out["job_failures_per_day"][0] == 8.0 and out["mtbf_hours"][0] == pytest.approx(3.0)
    # ZeRO-3 over 8: 202,800,640 B per rank; the one node writes all 8 ranks = 1,622,405,120 B at 1 GB/s.
    assert out["checkpoint_write_s"][0] == pytest.approx(1.62240512)
    assert out["checkpoint_read_s"][0] == pytest.approx(1.62240512)
    # τ = sqrt(2 · 1.62240512 · 10,800) = sqrt(35,043.95) = 187.2003 s = 3.12000 min
    assert out["checkpoint_interval_min"][0] == pytest.approx(3.120005, abs=1e-6)
    # R = 60 s restart + 1.6224 s reload = 61.6224 s; goodput = 187.2003 / (10,800 · e^0.0057058 ·
    # (e^0.0174836 − 1)) = 187.2003 / (10,800 · 1.0057221 · 0.0176373) = 187.2003 / 191.5726 = 0.977175
    assert out["goodput"][0] == pytest.approx(0.977175, abs=1e-6)
    # lost per failure: (187.2003 + 1.6224)/2 + 61.6224 = 156.0338 s = 2.60056 min
    assert out["lost_per_failure_min"][0] == pytest.approx(2.600564, abs=1e-5)


def test_async_checkpoint_stalls_for_the_snapshot_only() -> None:
    rel = ReliabilitySpec(failures_per_gpu_day=1.0, restart_min=1.0, checkpoint_write_gbps_per_node=1.0,
                          checkpoint_read_gbps_per_node=1.0, async_checkpoint=True, snapshot_gbps=20.0)
    out = reliability_arrays(MODEL, TRAIN, rel, 8, _layout(zero=3))
    # snapshot: 202,800,640 B / 20 GB/s = 0.0101400 s; τ = sqrt(2 · 0.01014 · 10,800) = 14.799 s (>= write 1.62 s)
    assert out["checkpoint_stall_s"][0] == pytest.approx(0.010140032)
    assert out["checkpoint_interval_min"][0] * 60 == pytest.approx(math.sqrt(2 * 0.010140032 * 10800))
    # a fixed interval below the background write waits for it: 1 s -> 1.6224 s
    fixed = reliability_arrays(MODEL, TRAIN, rel.model_copy(update={"checkpoint_interval_min": 1 / 60}), 8,
                               _layout(zero=3))
    assert fixed["checkpoint_interval_min"][0] * 60 == pytest.approx(1.62240512)


def test_expected_figures_divide_the_ideal_ones_by_goodput() -> None:
    est = {"reliability": {"goodput": 0.8, "mtbf_hours": 3.0}}
    got = with_expected({"training_days": 10.0, "gpu_hours": 1920.0, "goodput": 0.1}, est, 2.0)
    # 10 / 0.8 = 12.5 days; 1,920 / 0.8 = 2,400 GPU-h at 2/GPU-h = 4,800; 12.5 · 24 / 3 = 100 failures
    assert got == {"training_days": 10.0, "gpu_hours": 1920.0, "reliability": est["reliability"], "goodput": 0.8,
                   "expected_training_days": 12.5, "expected_gpu_hours": 2400.0, "expected_failures": 100.0,
                   "expected_cost": 4800.0}
    assert with_expected({"training_days": 10.0, "goodput": 0.5, "reliability": {}}, {}, None) == \
        {"training_days": 10.0}


def test_reliability_off_gives_exactly_the_ideal_figures() -> None:
    cfg = derive(MODEL, TRAIN, 8, zero=1)
    on = estimate(MODEL, TRAIN, GPU, ClusterSpec(gpu="g", gpus_per_node=8, price_per_gpu_hour=2.0), cfg)
    off = estimate(MODEL, TRAIN, GPU, ClusterSpec(gpu="g", gpus_per_node=8, price_per_gpu_hour=2.0,
                                                  reliability="off"), cfg)
    steps = math.ceil(1e9 / 1024 / 1024)  # 954 steps
    assert off["training_steps"] == steps
    assert off["training_days"] == pytest.approx(steps * off["step_time_s"] / 86400, rel=1e-12)
    assert "reliability" not in off and "expected_training_days" not in off and "goodput" not in off
    added = {"reliability", "goodput", "expected_training_days", "expected_gpu_hours", "expected_failures",
             "expected_cost"}
    assert set(on) - set(off) == added
    assert {k: v for k, v in on.items() if k not in added} == off
    assert on["expected_training_days"] == pytest.approx(on["training_days"] / on["goodput"])


def _spec(cluster: dict, objective: str = "time_to_train"):
    return parse_spec({"name": "r", "model": "llama3-8b", "objective": objective, "cluster": cluster,
                       "training": {"seq_len": 4096, "global_batch": 256, "tokens": 1e9}})


def test_objectives_read_expected_or_ideal_days() -> None:
    assert objective_for(_spec({"gpu": "h100-sxm"})).keys == ("expected_training_days",)
    assert objective_for(_spec({"gpu": "h100-sxm", "reliability": False})).keys == ("training_days",)
    priced = {"gpu": "h100-sxm", "price_per_gpu_hour": 2.0}
    assert objective_for(_spec(priced, "pareto")).keys == ("expected_training_days", "expected_cost")
    assert objective_for(_spec(priced | {"reliability": "off"}, "pareto")).keys == ("training_days", "cost")
    assert objective_for(_spec({"gpu": "h100-sxm"}, "pareto")).keys == ("expected_training_days", "gpus")


@pytest.mark.parametrize(("value", "message"), [
    ({"mtbf": 3}, "cluster.reliability.mtbf: unknown field (allowed: failures_per_gpu_day, restart_min,"),
    ({"restart_min": -1}, "cluster.reliability.restart_min: Input should be greater than or equal to 0 (got -1)"),
    ({"storage_write_gbps": 0}, "cluster.reliability.storage_write_gbps: Input should be greater than 0 (got 0)"),
    ("sometimes", "cluster: reliability must be off, on or a mapping of failures_per_gpu_day, restart_min,"),
])
def test_bad_reliability_is_one_line_naming_the_field(value, message) -> None:
    with pytest.raises(SpecError) as info:
        _spec({"gpu": "h100-sxm", "reliability": value})
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_yaml_on_and_off_switch_reliability() -> None:
    assert _spec({"gpu": "h100-sxm", "reliability": False}).cluster.reliability == "off"
    assert _spec({"gpu": "h100-sxm", "reliability": "on"}).cluster.reliability == ReliabilitySpec()
    # default: the Llama 3 405B run's rate, 419 / (54 · 16,384) = 4.7359e-4 per GPU-day
    assert ReliabilitySpec().failures_per_gpu_day == pytest.approx(4.7359e-4, rel=1e-4)


_rates = st.floats(1e-6, 1e-1)
_gbps = st.floats(0.1, 1e4)


@settings(max_examples=60, deadline=None)
@given(rate=_rates, dp=st.sampled_from([1, 2, 4, 8]), more=st.sampled_from([2, 4, 16]), zero=st.integers(0, 3))
def test_more_gpus_never_lower_the_job_failure_rate(rate, dp, more, zero) -> None:
    rel = ReliabilitySpec(failures_per_gpu_day=rate)
    small = reliability_arrays(MODEL, TRAIN, rel, 8, _layout(dp, zero=zero))
    big = reliability_arrays(MODEL, TRAIN, rel, 8, _layout(dp * more, zero=zero))
    assert big["job_failures_per_day"][0] >= small["job_failures_per_day"][0]
    assert big["mtbf_hours"][0] <= small["mtbf_hours"][0]


@settings(max_examples=150, deadline=None)
@given(rate=_rates, restart=st.floats(0, 120), w=_gbps, r=_gbps, agg=_gbps, faster=st.floats(1.0, 100.0),
       asynchronous=st.booleans(), fixed=st.one_of(st.none(), st.floats(0.1, 600)), zero=st.integers(0, 3),
       pp=st.sampled_from([1, 2]))
def test_faster_storage_never_lowers_goodput_and_goodput_is_a_fraction(rate, restart, w, r, agg, faster,
                                                                       asynchronous, fixed, zero, pp) -> None:
    if asynchronous and fixed is not None:
        fixed = None  # a fixed asynchronous interval is stretched to the write time: only the optimum is monotone
    base = ReliabilitySpec(failures_per_gpu_day=rate, restart_min=restart, checkpoint_write_gbps_per_node=w,
                           checkpoint_read_gbps_per_node=r, storage_write_gbps=agg, storage_read_gbps=agg,
                           async_checkpoint=asynchronous, checkpoint_interval_min=fixed)
    quick = base.model_copy(update={"checkpoint_write_gbps_per_node": w * faster,
                                    "checkpoint_read_gbps_per_node": r * faster,
                                    "storage_write_gbps": agg * faster, "storage_read_gbps": agg * faster})
    L = _layout(8, pp=pp, zero=zero)
    slow_g = reliability_arrays(MODEL, TRAIN, base, 8, L)["goodput"][0]
    fast_g = reliability_arrays(MODEL, TRAIN, quick, 8, L)["goodput"][0]
    assert 0.0 < slow_g <= 1.0 and 0.0 < fast_g <= 1.0
    assert fast_g >= slow_g * (1 - 1e-12)


def test_interval_is_at_least_one_step() -> None:
    rel = ReliabilitySpec(failures_per_gpu_day=1.0, checkpoint_write_gbps_per_node=1.0)
    # Young/Daly gives 187.2 s (above); a 600 s step cannot checkpoint more often than every 600 s = 10 min
    out = reliability_arrays(MODEL, TRAIN, rel, 8, _layout(zero=3), step_s=600.0)
    assert out["checkpoint_interval_min"][0] == pytest.approx(10.0)


def test_report_plots_ideal_and_expected_fronts_over_cluster_sizes(monkeypatch) -> None:
    from autotune.results import report
    from autotune.store.storage import EvaluationRecord

    figs = {}
    monkeypatch.setattr(report, "_fig", lambda fig, div_id, height=380: figs.setdefault(div_id, fig) and "")

    def row(trial, gpus, ideal, expected):
        return EvaluationRecord(study="s", trial=trial, fidelity="analytic", layout={"name": f"L{trial}"},
                                status="ok", metrics={"gpus": gpus, "tokens_per_s": 1.0, "memory_gib": {"total": 1.0},
                                                      "training_days": ideal, "expected_training_days": expected})

    # 64 GPUs: #0 is fastest ideally (10 d) but #1 once failures count (12 d < 14 d); 128 GPUs: #2 on both.
    report._pareto([row(0, 64, 10.0, 14.0), row(1, 64, 11.0, 12.0), row(2, 128, 6.0, 8.0)])
    fronts = {t.name: (list(t.x), list(t.y)) for t in figs["fig-pareto-gpus"].data if "front" in t.name}
    assert fronts == {"ideal (no failures): Pareto front": ([64, 128], [10.0, 6.0]),
                      "expected with failures: Pareto front": ([64, 128], [12.0, 8.0])}


_ARGS = ["estimate", "--model", "llama3-8b", "--gpu", "h100-sxm", "--gpus", "64", "--seq-len", "8192",
         "--global-batch", "512", "--tokens", "1e12", "--zero", "1", "--json"]


def test_estimate_reliability_flags(cli) -> None:
    code, out, _ = cli(_ARGS + ["--failures-per-gpu-day", "0.01", "--restart-min", "5", "--async-checkpoint"])
    assert code == 0
    d = json.loads(out)
    # 64 GPUs x 0.01 = 0.64 failures/day: MTBF 24 / 0.64 = 37.5 h; ZeRO-1 keeps bf16 weights whole on dp rank 0
    assert d["reliability"]["job_failures_per_day"] == pytest.approx(0.64)
    assert d["reliability"]["mtbf_hours"] == pytest.approx(37.5)
    assert d["expected_training_days"] == pytest.approx(d["training_days"] / d["goodput"])
    code, out, _ = cli(_ARGS + ["--no-reliability"])
    assert code == 0 and "reliability" not in json.loads(out) and "expected_training_days" not in json.loads(out)


@pytest.mark.parametrize(("extra", "message"), [
    (["--restart-min", "-1"], "--restart-min: Input should be greater than or equal to 0"),
    (["--no-reliability", "--snapshot-gbps", "9"], "--no-reliability: cannot be combined with --snapshot-gbps"),
])
def test_estimate_bad_reliability_flag_exits_2_naming_it(cli, extra, message) -> None:
    code, _, err = cli(_ARGS + extra)
    assert code == 2 and message in err and "Traceback" not in err


def test_study_rows_take_the_study_clusters_reliability() -> None:
    from autotune.study.plan import plan_study
    from autotune.study.run_options import RunOptions
    from autotune.study.trial_outcome import TrialOutcomes

    spec = _spec({"gpu": "h100-sxm", "nodes": 8, "reliability": {"failures_per_gpu_day": 0.01}})
    outcomes = TrialOutcomes(plan_study(spec), RunOptions(n_trials=1))
    cluster, training = spec.cluster, spec.training
    cfg = derive(outcomes.problem.model, training, cluster.gpus, tp=8, zero=1)
    off = cluster.model_copy(update={"reliability": "off"})
    assert outcomes._cache_key(cfg, cluster, training) != outcomes._cache_key(cfg, off, training)
    # a measured result (its own step time; a worker's default reliability block) gets the study's block:
    # 64 GPUs x 0.01 = 0.64 failures/day, MTBF 37.5 h; expected days = measured days / goodput
    measured = {"step_time_s": 3.0, "training_days": 20.0, "gpu_hours": 30720.0, "reliability": {"goodput": 0.5}}
    got = outcomes.with_time(cfg, cluster, measured)
    assert got["reliability"]["mtbf_hours"] == pytest.approx(37.5) and got["step_time_s"] == 3.0
    assert got["expected_training_days"] == pytest.approx(20.0 / got["goodput"]) and 0.9 < got["goodput"] < 1.0
    assert "reliability" not in outcomes.with_time(cfg, off, measured)


@pytest.mark.parametrize("reliability", [{"restart_min": 3.5, "async_checkpoint": True, "snapshot_gbps": 7.0,
                                          "checkpoint_interval_min": 12.0}, "off"])
def test_the_reproduce_command_gives_the_same_expected_figures(cli, reliability) -> None:
    import shlex

    from autotune.results.reproduce import estimate_command
    from autotune.study.resolve import resolve

    data = {"name": "r", "model": "llama3-8b", "cluster": {"gpu": "h100-sxm", "nodes": 4, "reliability": reliability},
            "training": {"seq_len": 4096, "global_batch": 256, "tokens": 1e11}}
    spec = parse_spec(data)
    p = resolve(spec)
    cfg = derive(p.model, p.training, p.gpus, tp=2, zero=1)
    want = estimate(p.model, p.training, p.gpu, p.cluster, cfg)
    code, out, _ = cli(shlex.split(estimate_command(data, cfg.to_dict() | {"nodes": 4}))[1:] + ["--json"])
    got = json.loads(out)
    assert code == 0 and got.get("reliability") == want.get("reliability")
    assert got.get("expected_training_days") == want.get("expected_training_days")
