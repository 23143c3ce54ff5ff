"""What optuna-dashboard shows of a driver-written study is readable through Optuna's public API."""

from __future__ import annotations

import optuna
import pytest

from autotune.spec import parse_spec
from autotune.store.storage import Storage
from autotune.study.driver import Driver, RunOptions
from tests.integration.studydb import SPEC

pytestmark = pytest.mark.slow


def test_user_attrs_on_a_ray_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    store = Storage(url)
    spec = parse_spec(SPEC | {"name": "dash"})
    driver = Driver(spec, store, RunOptions(n_trials=20, evaluator="analytic", workers=1, seed=0))
    driver.run(driver.open(create=True))
    store.close()

    study = optuna.load_study(study_name="dash", storage=url)  # a fresh reader, as the dashboard is
    trials = study.trials
    assert len(trials) == 20
    for t in trials:
        a = t.user_attrs
        assert a["fidelity"] == "analytic" and a["status"] in ("ok", "infeasible", "unsupported")
        assert isinstance(a["layout"], dict) and a["layout"]["nodes"] in (1, 2)
        if a["status"] == "ok":
            assert t.state == optuna.trial.TrialState.COMPLETE and t.values[0] == pytest.approx(a["tokens_per_s"])
            assert a["memory_gib"] > 0 and a["step_time_s"] > 0 and 0 < a["mfu"] < 1
            assert {"tp", "pp", "dp", "micro_batch", "grad_accum"} <= set(a["layout"])
        else:
            assert a["reason"]
    rejected = [t for t in trials if t.user_attrs["status"] != "ok"]
    ok = [t for t in trials if t.user_attrs["status"] == "ok"]
    assert ok and rejected, "the seeded study should both find and reject layouts"
