"""Stack profile refit (:mod:`autotune.calibration.stack_refit`) and ``autotune calibrate --from-study --stack``
on bad input: the fit recovers hand-chosen stack values from rows generated with them, starting from the
catalog's; refusals are one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autotune.calibration.stack_refit import STACK_FIELDS, default_fields, fit_stack, predict_rows, rms_log_error
from autotune.catalog import get_gpu, get_model, get_stack
from autotune.config import derive
from autotune.errors import SpecError
from autotune.spec import ModelSpec, TrainingSpec
from autotune.store.profiles import ProfileStore
from autotune.store.storage import EvaluationRecord, Storage

#: A Llama-style 8-layer model, hidden 1024: small enough that tensor-parallel layers at sequence 1024 are
#: shorter than 700 µs of host time (host-bound), large enough that sequence 16384 is attention-bound.
MODEL = ModelSpec(name="m", layers=8, hidden=1024, heads=8, vocab=32000, activation="swiglu", tied_embeddings=False,
                  norm="rmsnorm", bias="none", position_embedding="rope", dropout=False)
#: H100 with a tenth of its HBM bandwidth (335 GB/s), so element-wise traffic is 20-50 % of a layer and its
#: factor is determined by the step times as well as the other two.
GPU = get_gpu("h100-sxm").model_copy(update={"hbm_gbps": 335.0})
LAYOUTS = ({}, {"tp": 2}, {"tp": 4, "sequence_parallel": True}, {"tp": 8, "sequence_parallel": True}, {"pp": 2},
           {"micro_batch": 2})


def _rows(seqs=(1024, 4096, 16384)) -> tuple[list[TrainingSpec], list]:
    trainings, configs = [], []
    for s in seqs:
        t = TrainingSpec(seq_len=s, global_batch=16)
        for kw in LAYOUTS:
            trainings.append(t)
            configs.append(derive(MODEL, t, 8, **kw))
    return trainings, configs


def test_fit_recovers_hand_chosen_stack_values() -> None:
    """Rows "measured" on megatron-te with layer_host_us 700 (not 80), elementwise_factor 0.8 (not 0.5) and
    attention_factor 0.6 (not 1.0); the fit starts from the catalog megatron-te and finds all three within 1 %."""
    trainings, configs = _rows()
    base = get_stack("megatron-te")
    truth = base.model_copy(update={"layer_host_us": 700.0, "elementwise_factor": 0.8, "attention_factor": 0.6})
    measured = predict_rows(MODEL, GPU, 8, trainings, configs, truth)
    assert default_fields(trainings, GPU, base) == ["layer_host_us", "elementwise_factor", "attention_factor"]
    fitted, report = fit_stack(MODEL, GPU, 8, trainings, configs, measured, base)
    assert fitted.layer_host_us == pytest.approx(700.0, rel=0.01)
    assert fitted.elementwise_factor == pytest.approx(0.8, rel=0.01)
    assert fitted.attention_factor == pytest.approx(0.6, rel=0.01)
    assert (fitted.fp8_cast_bytes, fitted.comm_compute_slowdown) == (base.fp8_cast_bytes, base.comm_compute_slowdown)
    assert report["after"]["rms_log_error"] < 0.005 < 0.1 < report["before"]["rms_log_error"]
    assert report["fields"]["layer_host_us"] == {"before": 80.0, "after": fitted.layer_host_us}


def test_a_zero_host_time_is_fitted_from_host_bound_rows() -> None:
    """The eager stack has layer_host_us 0 (no gradient below the layers' GPU time): rows measured with 2,000 µs
    per layer are fitted from the extra starts, to within 1 %."""
    trainings, configs = _rows(seqs=(1024,))
    base = get_stack("eager")
    measured = predict_rows(MODEL, GPU, 8, trainings, configs, base.model_copy(update={"layer_host_us": 2000.0}))
    fitted, report = fit_stack(MODEL, GPU, 8, trainings, configs, measured, base, ["layer_host_us"])
    assert fitted.layer_host_us == pytest.approx(2000.0, rel=0.01)
    assert report["after"]["rms_log_error"] < 1e-3


def test_rms_never_rises_on_noisy_rows() -> None:
    """Measured times off by hand-chosen factors 0.7-1.6: the least-squares fit can only lower the rms."""
    trainings, configs = _rows(seqs=(2048,))
    base = get_stack("megatron-te")
    noise = np.array([1.6, 0.7, 1.0, 1.3, 0.9, 1.1])
    measured = predict_rows(MODEL, GPU, 8, trainings, configs, base) * noise
    _, report = fit_stack(MODEL, GPU, 8, trainings, configs, measured, base)
    assert report["after"]["rms_log_error"] <= report["before"]["rms_log_error"]
    # before: the base predicts measured / noise; log(noise)^2 = 0.2209, 0.1272, 0, 0.0688, 0.0111, 0.0091,
    # mean 0.4371 / 6 = 0.07286, rms 0.2699
    assert report["before"]["rms_log_error"] == pytest.approx(0.2699, abs=1e-4)


def test_default_fields_add_attention_only_where_it_is_determined() -> None:
    one_seq, _ = _rows(seqs=(4096,))
    assert default_fields(one_seq, GPU, get_stack("megatron-te")) == ["layer_host_us", "elementwise_factor"]
    many, _ = _rows()
    assert default_fields(many, get_gpu("cpu"), get_stack("eager")) == ["layer_host_us", "elementwise_factor"]
    unfused = [t.model_copy(update={"flash_attention": False}) for t in many]
    assert "attention_factor" not in default_fields(unfused, GPU, get_stack("megatron-te"))


def test_fit_refusals() -> None:
    trainings, configs = _rows(seqs=(1024,))
    base, measured = get_stack("eager"), np.ones(6)
    with pytest.raises(SpecError, match=r"fields: 'fp8' not fittable stack fields \(allowed: attention_factor, "
                                        r"elementwise_factor, layer_host_us, fp8_cast_bytes, comm_compute_slowdown\)"):
        fit_stack(MODEL, GPU, 8, trainings, configs, measured, base, ["fp8"])
    with pytest.raises(SpecError, match="listed twice"):
        fit_stack(MODEL, GPU, 8, trainings, configs, measured, base, ["layer_host_us", "layer_host_us"])
    with pytest.raises(SpecError, match="2 measured rows cannot determine 3 fields"):
        fit_stack(MODEL, GPU, 8, trainings[:2], configs[:2], measured[:2], base,
                  ["layer_host_us", "elementwise_factor", "comm_compute_slowdown"])
    assert set(STACK_FIELDS) == {"attention_factor", "elementwise_factor", "layer_host_us", "fp8_cast_bytes",
                                 "comm_compute_slowdown"}
    assert STACK_FIELDS["attention_factor"][1] == 1 and STACK_FIELDS["elementwise_factor"][1] == 2


def test_rms_log_error_by_hand() -> None:
    # log(2) and log(1/2): rms = log 2 = 0.6931
    assert rms_log_error([2.0, 1.0], [1.0, 2.0]) == pytest.approx(np.log(2.0))


# --- the CLI ------------------------------------------------------------------------------------------------

TINY_SPEC = {"name": "few", "model": "tiny", "cluster": {"gpu": "cpu", "gpus_per_node": 2, "nodes": 1},
             "training": {"seq_len": 64, "global_batch": 4, "precision": "fp32"},
             "search": {"space": "cpu", "evaluator": "measure"}}


@pytest.fixture
def one_measured(tmp_path) -> str:
    """A study with one measured trial (0.5 s a step, dp 2) and one analytic row, written straight to the DB."""
    url = f"sqlite:///{tmp_path / 'few.db'}"
    store = Storage(url)
    store.add_study("few", TINY_SPEC, "test", "test")
    t = TrainingSpec(seq_len=64, global_batch=4, precision="fp32")
    layout = derive(get_model("tiny"), t, 2).to_dict() | {"nodes": 1}
    store.add_evaluations([
        EvaluationRecord(study="few", trial=0, fidelity="measure", layout=layout, metrics={"step_time_s": 0.5},
                         status="ok", value=1.0),
        EvaluationRecord(study="few", trial=1, fidelity="analytic", layout=layout, metrics={"step_time_s": 0.1},
                         status="ok", value=1.0)])
    store.close()
    return url


def _one_line_error(code: int, err: str, text: str) -> None:
    assert code == 2 and text in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("args, text", [
    (["--from-study", "nope", "--stack", "s"], "from-study: no study named 'nope'"),
    (["--stack", "s"], "stack: needs --from-study STUDY"),
    (["--fields", "layer_host_us"], "fields: needs --from-study STUDY"),
    (["--from-study", "few", "--stack", "s", "--name", "x"], "name: names a GPU profile"),
    (["--from-study", "few", "--stack", "s", "--fields", "fp8,layer_host_us"],
     "fields: 'fp8' not fittable stack fields (allowed: attention_factor, elementwise_factor, layer_host_us, "
     "fp8_cast_bytes, comm_compute_slowdown)"),
    (["--from-study", "few", "--fields", "elementwise_factor"],
     "fields: 'elementwise_factor' not fittable GPU profile fields (allowed: gemm_eff_max"),
    (["--from-study", "few", "--stack", "s"],
     "from-study: study 'few' has 1 measured trials (fidelity measure with a step time); fitting 2 stack fields "
     "(layer_host_us, elementwise_factor) needs at least 2"),
    (["--from-study", "few", "--stack", "bad name"], "stack: 'bad name' is not NAME or NAME@VERSION"),
])
def test_calibrate_stack_bad_input(one_measured, cli, args, text) -> None:
    code, _, err = cli(["calibrate", *args, "--storage", one_measured])
    _one_line_error(code, err, text)


def test_calibrate_stack_one_field_from_one_trial(one_measured, cli) -> None:
    """One measured trial determines one field: the host time per layer. The eager stack predicts far below
    0.5 s for the tiny model at 4 sequences of 64 tokens, so the fitted floor makes the step take 0.5 s."""
    code, out, err = cli(["calibrate", "--from-study", "few", "--stack", "slow", "--fields", "layer_host_us",
                          "--storage", one_measured, "--json"])
    assert code == 0, err
    rep = json.loads(out)
    assert rep["ref"] == "slow@1" and rep["source"]["rows"] == 1 and rep["source"]["trials"] == [0]
    assert rep["source"]["after"]["rms_log_error"] < 1e-3 < rep["source"]["before"]["rms_log_error"]
    # tiny: 4 layers, dp 2 -> 2 sequences a rank at micro-batch 1 = 2 micro-batches: 8 host-bound layer passes
    # carry (almost) all of the 0.5 s
    assert 0.5 / 8 * 0.9 < rep["fields"]["layer_host_us"] * 1e-6 < 0.5 / 8
    code, _, err = cli(["calibrate", "--from-study", "few", "--stack", "slow", "--fields", "layer_host_us",
                        "--storage", one_measured])
    assert code == 0, err
    assert [p["ref"] for p in ProfileStore(Storage(one_measured)).list()] == ["slow@1", "slow@2"]
