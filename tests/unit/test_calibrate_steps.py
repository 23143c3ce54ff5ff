"""The training-step stage of ``autotune calibrate``: the tensor-parallel host cost in the time model
(hand-counted), the calibration layouts, and the fit recovering known host costs from step times."""

from __future__ import annotations

import pytest

from autotune.calibration.refit import predict
from autotune.calibration.steps import STEP_FIELDS, fit_steps, step_layouts, step_training
from autotune.catalog import get_gpu, get_model


def test_tp_layer_overhead_adds_per_layer_per_micro_batch_only_with_tp() -> None:
    model, training = get_model("tiny"), step_training("cpu", 4)  # 4 layers, 64 tokens, global batch 8
    gpu = get_gpu("cpu")
    costly = gpu.model_copy(update={"tp_layer_overhead_us": 10_000.0})
    tp2, dp4 = (step_layouts(model, training, 4, quick=True)[i] for i in (2, 0))
    assert (tp2.tp, tp2.dp, tp2.grad_accum) == (2, 2, 4) and dp4.tp == 1
    # tp2 x dp2, micro-batch 1: 4 micro-batches x 4 layers x 10 ms (forward + backward) = 0.16 s more.
    delta = predict(model, training, costly, 4, [tp2, dp4]) - predict(model, training, gpu, 4, [tp2, dp4])
    assert delta[0] == pytest.approx(0.16, rel=1e-9)
    assert delta[1] == 0.0


def test_calibration_layouts_cover_each_fitted_cost() -> None:
    model = get_model("tiny")
    quick = step_layouts(model, step_training("cpu", 4), 4, quick=True)
    assert [(c.tp, c.pp, c.dp, c.zero) for c in quick] == [(1, 1, 4, 0), (1, 2, 2, 0), (2, 1, 2, 0), (1, 1, 4, 3),
                                                           (2, 2, 1, 0)]
    full = step_layouts(model, step_training("cpu", 4), 4, quick=False)
    assert len(full) == 6 and any(c.recompute == "full" for c in full)
    assert all(c.world == 1 and c.tp == 1 for c in step_layouts(model, step_training("cpu", 1), 1, quick=False))


def test_fit_recovers_host_costs_from_a_zero_start() -> None:
    """Step times from known host costs; the base profile has the microbenchmarks' 2 ms per layer, 1 ms
    latency and no tensor-parallel cost (a zero start that one least-squares start does not leave)."""
    model, training = get_model("tiny"), step_training("cpu", 4)
    truth = {"layer_overhead_us": 7000.0, "intra_node_latency_us": 2200.0, "tp_layer_overhead_us": 16000.0}
    gpu = get_gpu("cpu")
    configs = step_layouts(model, training, 4, quick=False)
    measured = predict(model, training, gpu.model_copy(update=truth), 4, configs)
    base = gpu.model_copy(update={"layer_overhead_us": 2000.0, "intra_node_latency_us": 1000.0,
                                  "tp_layer_overhead_us": 0.0})
    fitted, report = fit_steps(base, model, training, 4, configs, list(measured))
    for name in STEP_FIELDS:
        assert getattr(fitted, name) == pytest.approx(truth[name], rel=0.03), name
    assert report["after"]["median_abs_rel_error"] < 0.01 < report["before"]["median_abs_rel_error"]
    assert [r["measured_s"] for r in report["layouts"]] == pytest.approx(list(measured))
