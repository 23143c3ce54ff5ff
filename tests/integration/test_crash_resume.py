"""kill -9 of ``autotune submit``/``resume`` at 5 random points, then ``resume`` to the end.

The drivers join the session's local Ray (``--ray-address``), so a kill takes down the driver's
process group while the cluster, like a real one, survives. ``benchmarks/crash_resume.py`` runs 20
kill points.
"""

from __future__ import annotations

import pytest

from tests.integration.crashkit import check, run_chain

pytestmark = pytest.mark.slow


def test_kill9_at_random_points_then_resume_reaches_budget_exactly(tmp_path, ray_local) -> None:
    chain = run_chain(tmp_path, kills=5, seed=10, ray_address=ray_local.get_runtime_context().gcs_address)
    assert len(chain.snapshots) == 5
    assert check(f"sqlite:///{tmp_path / 'crash.db'}", chain) == []
    assert any(s.running for s in chain.snapshots), "no kill left a trial RUNNING: nothing was retried"
