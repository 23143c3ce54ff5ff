"""The control plane imports no torch at import time (workers import it lazily)."""

from __future__ import annotations

import subprocess
import sys


def test_control_plane_imports_no_torch() -> None:
    code = ("import sys, autotune, autotune.cli, autotune.study.driver, autotune.study.dispatch, "
            "autotune.study.fidelity, "
            "autotune.results.report, autotune.export, workers.registry, workers.analytic; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
