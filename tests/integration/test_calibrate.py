"""End to end on this machine: ``autotune calibrate --quick`` (microbenchmarks on a Ray worker, 4 gloo
ranks, then training steps of 4 calibration layouts), 8 reference layouts of the tiny model measured
fresh with ``workers.measure``, and the calibrated analytic model ranks them (Kendall τ >= 0.6);
refitting to those step times lowers the error. The figures are those ``benchmarks/fidelity_cpu.py``
prints, run as the script it is (its ``--json`` output), so the test imports nothing from benchmarks/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fidelity_cpu.py"


def test_calibrated_model_ranks_measured_layouts(tmp_path) -> None:
    cmd = [sys.executable, str(SCRIPT), "--layouts", "8", "--quick", "--storage", f"sqlite:///{tmp_path / 'cal.db'}",
           "--cache", str(tmp_path / "measured.json"), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3000, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = "\n" + proc.stdout  # calibrate's own summary lines come first; the figures are the last object
    out = json.loads(text[text.rindex("\n{\n") + 1:])
    assert out["layouts"] >= 8
    assert out["profile"] == "cpu@1" and out["profile_fields"]["layer_overhead_us"] > 0
    assert out["calibrated"]["kendall_tau"] >= 0.6, out
    assert out["refit_in_sample"]["median_abs_rel_error"] < out["calibrated"]["median_abs_rel_error"]
