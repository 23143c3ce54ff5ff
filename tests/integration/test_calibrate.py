"""End to end on this machine: ``autotune calibrate --quick`` (microbenchmarks on a Ray worker, 4 gloo
ranks, then training steps of 4 calibration layouts), 8 reference layouts of the tiny model measured
fresh with ``workers.measure``, and the calibrated analytic model ranks them (Kendall τ >= 0.6);
refitting to those step times lowers the error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

pytestmark = pytest.mark.slow


def test_calibrated_model_ranks_measured_layouts(tmp_path) -> None:
    from fidelity_cpu import run

    out = run(8, True, f"sqlite:///{tmp_path / 'cal.db'}", tmp_path / "measured.json")
    assert out["layouts"] >= 8
    assert out["profile"] == "cpu@1" and out["profile_fields"]["layer_overhead_us"] > 0
    assert out["calibrated"]["kendall_tau"] >= 0.6, out
    assert out["refit_in_sample"]["median_abs_rel_error"] < out["calibrated"]["median_abs_rel_error"]
