"""What autotune relies on in Optuna's private API (autotune/store/optuna_adapter.py), checked against the
installed Optuna: an upgrade that renames a model, a column or an attribute fails here, by name."""

from __future__ import annotations

import re
from importlib.metadata import requires, version

import optuna
import pytest
from sqlalchemy import inspect as sa_inspect

from autotune.store import optuna_adapter as adapter

#: Columns autotune reads or writes, per ORM model (autotune/store/budget.py and mirror.py).
COLUMNS = {
    "StudyModel": {"study_id", "study_name"},
    "TrialModel": {"trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"},
    "TrialParamModel": {"trial_id", "param_name", "param_value", "distribution_json"},
    "TrialValueModel": {"trial_id", "objective", "value", "value_type"},
    "TrialUserAttributeModel": {"trial_id", "key", "value_json"},
    "TrialSystemAttributeModel": {"trial_id", "key", "value_json"},
    "TrialHeartbeatModel": {"trial_id", "heartbeat"},
}


@pytest.mark.parametrize("name", sorted(COLUMNS))
def test_orm_models_have_the_columns_autotune_uses(name):
    model = getattr(adapter, name)
    columns = {c.key for c in sa_inspect(model).columns}
    missing = COLUMNS[name] - columns
    assert not missing, f"optuna {optuna.__version__}: {name} lost columns {sorted(missing)}"


def test_value_encoding_round_trips_the_finite_and_infinite_cases():
    model = adapter.TrialValueModel
    for value in (1.5, float("inf"), float("-inf")):
        stored, kind = model.value_to_stored_repr(value)
        assert model.stored_repr_to_value(stored, kind) == value


def test_study_id_and_storage_match_the_public_api(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'a.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    assert adapter.study_id(study) == storage.get_study_id_from_name("s")
    # Optuna wraps an RDBStorage in a cache; the heartbeat callback autotune reads must come through it
    assert adapter.study_storage(study).get_heartbeat_stale_trial_callback() is None
    beating = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'b.db'}", heartbeat_interval=1,
                                         heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback())
    with_callback = optuna.create_study(study_name="t", storage=beating)
    assert adapter.study_storage(with_callback).get_heartbeat_stale_trial_callback() is not None


def test_optuna_is_bounded_to_the_verified_major_version():
    spec = next(r for r in requires("autotune") if re.match(r"optuna\b", r))
    assert "<6" in spec.replace(" ", ""), f"pyproject must bound optuna below 6 (has {spec!r})"
    assert int(version("optuna").split(".")[0]) == 5, "autotune's Optuna adapter was verified on Optuna 5"
