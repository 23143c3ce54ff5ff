"""A stack profile refit from a real measured study: the tiny model on 2 gloo ranks (Ray, CPU), four measured
trials of the ``cpu`` space (eager stack, catalog ``cpu`` GPU profile), then ``autotune calibrate --from-study
--stack``; the refit lowers the rms log error of the analytic step times against the measured ones, and a spec
naming the stored ``NAME@V`` (``estimate --stack``, ``submit`` with ``training.stack: NAME``) scores with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from autotune.calibration.refit import config_of, measured_rows
from autotune.calibration.stack_refit import predict_rows, rms_log_error
from autotune.catalog import get_gpu, get_model, get_stack
from autotune.spec import TrainingSpec, parse_spec
from autotune.store.profiles import load_stack_profile
from autotune.store.storage import Storage
from autotune.study.driver import Driver, RunOptions

pytestmark = pytest.mark.slow

STUDY = "measured-stack"
SPEC = {"name": STUDY, "model": "tiny", "cluster": {"gpu": "cpu", "gpus_per_node": 2, "nodes": 1},
        "training": {"seq_len": 64, "global_batch": 4, "precision": "fp32"},
        "search": {"space": "cpu", "sampler": "random", "n_trials": 4, "evaluator": "measure", "workers": 1,
                   "seed": 3}}
TRAIN = TrainingSpec(seq_len=64, global_batch=4, precision="fp32")


@pytest.fixture(scope="module")
def measured_db(tmp_path_factory, ray_local) -> str:
    """The study's DB: four measured trials (2 timed steps after 1 warm-up each)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('stack') / 'm.db'}"
    store = Storage(url)
    options = RunOptions(n_trials=4, sampler="random", evaluator="measure", workers=1, seed=3,
                         evaluator_options={"steps": 2, "warmup_steps": 1, "step_timeout_s": 60})
    driver = Driver(parse_spec(SPEC), store, options)
    driver.run(driver.open(create=True))
    store.close()
    return url


def test_refit_lowers_the_error_and_a_spec_scores_with_it(measured_db, cli, tmp_path) -> None:
    rows = measured_rows(Storage(measured_db).evaluations(STUDY))
    assert len(rows) >= 2, [r.status for r in Storage(measured_db).evaluations(STUDY)]
    code, out, err = cli(["calibrate", "--from-study", STUDY, "--stack", "cpu-eager", "--storage", measured_db,
                          "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["ref"] == "cpu-eager@1" and report["profile_kind"] == "stack"
    src = report["source"]
    assert src["stack"] == "eager" and src["gpu"] == "cpu" and src["rows"] == len(rows)
    assert set(src["fields"]) == {"layer_host_us", "elementwise_factor"}  # one sequence length: no attention
    assert src["after"]["rms_log_error"] < src["before"]["rms_log_error"]

    # the stored profile predicts the measured rows with the rms error the fit reported
    stack = load_stack_profile("cpu-eager@1", measured_db)
    model, gpu = get_model("tiny"), get_gpu("cpu")
    configs = [config_of(model, TRAIN, 2, r.layout) for r in rows]
    meas = np.array([r.metrics["step_time_s"] for r in rows])
    pred = predict_rows(model, gpu, 2, [TRAIN] * len(rows), configs, stack)
    assert rms_log_error(pred, meas) == pytest.approx(src["after"]["rms_log_error"], rel=1e-9)
    eager = predict_rows(model, gpu, 2, [TRAIN] * len(rows), configs, get_stack("eager"))
    assert rms_log_error(eager, meas) == pytest.approx(src["before"]["rms_log_error"], rel=1e-9)

    # estimate --stack NAME@V --storage URL scores the first measured layout with the refit stack
    lay = configs[0]
    args = ["estimate", "--model", "tiny", "--gpu", "cpu", "--gpus", "2", "--gpus-per-node", "2", "--seq-len", "64",
            "--global-batch", "4", "--precision", "fp32", "--tp", str(lay.tp), "--pp", str(lay.pp), "--zero",
            str(lay.zero), "--micro-batch", str(lay.micro_batch), "--recompute", lay.recompute, "--vpp", str(lay.vpp),
            "--pp-schedule", lay.pp_schedule] + (["--sp"] if lay.sequence_parallel else [])
    code, out, err = cli(args + ["--stack", "cpu-eager@1", "--storage", measured_db, "--json"])
    assert code == 0, err
    est = json.loads(out)
    assert est["stack"] == "cpu-eager@1" and est["step_time_s"] == pytest.approx(pred[0], rel=1e-9)

    # a study naming the stack profile is pinned to NAME@V and scores with it
    spec = dict(SPEC, name="uses-refit", training=dict(SPEC["training"], stack="cpu-eager"),
                search={"space": "cpu"})
    path = tmp_path / "uses.yaml"
    path.write_text(yaml.safe_dump(spec))
    code, out, err = cli(["submit", str(path), "--storage", measured_db, "--quiet", "--json"])
    assert code == 0, err
    assert Storage(measured_db).study_spec("uses-refit")["training"]["stack"] == "cpu-eager@1"
    best = json.loads(out)
    assert best["stack"] == "cpu-eager@1"
    cfg = config_of(model, TRAIN, 2, best["config"])
    refit_s = predict_rows(model, gpu, 2, [TRAIN], [cfg], stack)[0]
    assert best["metrics"]["step_time_s"] == pytest.approx(refit_s, rel=1e-9)
    assert refit_s != pytest.approx(predict_rows(model, gpu, 2, [TRAIN], [cfg], get_stack("eager"))[0], rel=1e-6)
