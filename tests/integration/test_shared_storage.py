"""Several drivers on one study: 4 ``autotune submit --resume`` processes on SQLite and on PostgreSQL.

They share the session's Ray (``--ray-address``, as a team shares a cluster) and one database; the
study must end with exactly its trial budget, every trial evaluated once, and no driver failing
(``database is locked`` or otherwise).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import optuna
import pytest

from autotune.store.storage import Storage

pytestmark = pytest.mark.slow

DRIVERS, BUDGET = 4, 96
SPEC = """name: {name}
model: llama3-8b
cluster: {{gpu: h100-sxm, gpus_per_node: 8, nodes: [1, 2]}}
training: {{seq_len: 8192, global_batch: 512, precision: bf16, tokens: 1.0e12}}
search: {{space: megatron, sampler: tpe, n_trials: {budget}, evaluator: analytic, workers: 1, seed: 0}}
objective: throughput
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_four_drivers_on_one_study_stop_at_exactly_the_budget(backend, tmp_path, ray_local, request) -> None:
    name = f"team-{backend}"
    url = f"sqlite:///{tmp_path / 'team.db'}" if backend == "sqlite" else request.getfixturevalue("postgres").url()
    spec = tmp_path / "team.yaml"
    spec.write_text(SPEC.format(name=name, budget=BUDGET))
    cmd = [sys.executable, "-m", "autotune", "submit", str(spec), "--resume", "--storage", url, "--quiet",
           "--ray-address", ray_local.get_runtime_context().gcs_address]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(DRIVERS)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * DRIVERS, errors
    assert not any("locked" in e or "Traceback" in e for e in errors), errors

    store = Storage(url, create=False)
    rows = store.evaluations(name)
    trials = optuna.load_study(study_name=name, storage=store.optuna()).get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    assert len(trials) == BUDGET and states.keys() <= {"COMPLETE", "PRUNED", "FAIL"}, states
    assert sorted(t.number for t in trials) == list(range(BUDGET))
    assert all("status" in t.user_attrs for t in trials)
    assert sorted(r.trial for r in rows) == list(range(BUDGET)), "lost or duplicated evaluation rows"
    store.close()


def test_postgres_fixture_explains_why_it_cannot_run(monkeypatch) -> None:
    """Without server binaries and without root, the fixture gets a reason to skip with, not a hang."""
    from tests.integration import postgres as pg

    monkeypatch.setattr(pg, "_bindir", lambda: None)
    monkeypatch.setattr(pg.os, "geteuid", lambda: 1000)
    with pytest.raises(pg.Unavailable, match="missing and cannot be installed"):
        pg.start()
