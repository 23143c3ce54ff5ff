"""Record finished trials in Optuna's RDB tables in one transaction per batch.

Optuna's public ``Trial.set_user_attr`` / ``tell`` cost one transaction each, and each parameter of a
templated trial is checked against earlier trials with extra queries (~30 ms a trial on SQLite). The
driver's trials are all drawn from one fixed space, so the checks add nothing; this module writes
params, values, user and system attributes and the final state of a whole batch with Optuna's own
ORM models (``optuna.storages._rdb.models``, the schema of the installed Optuna) in one commit.
Trials are still created RUNNING through the public API when asked, so heartbeats and stale-trial
retry keep working.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.storages._rdb import models

__all__ = ["FinishedTrial", "record_finished"]


@dataclass(frozen=True)
class FinishedTrial:
    """What to write for one trial that was created RUNNING in the DB."""

    trial_id: int
    state: optuna.trial.TrialState
    values: list[float] | None
    params: dict[str, Any]
    distributions: dict[str, BaseDistribution]
    user_attrs: dict[str, Any]
    system_attrs: dict[str, Any]
    write_params: bool = True
    """False when the row already has its params (a re-queued trial claimed from WAITING)."""


def record_finished(storage: optuna.storages.RDBStorage, trials: list[FinishedTrial]) -> None:
    """Write the outcome of ``trials`` in one transaction."""
    if not trials:
        return
    session = storage.scoped_session()
    try:
        now = dt.datetime.now()
        for t in trials:
            row = session.get(models.TrialModel, t.trial_id)
            if row is None or row.state != optuna.trial.TrialState.RUNNING:
                continue
            if t.write_params:
                session.add_all(models.TrialParamModel(
                    trial_id=t.trial_id, param_name=name, param_value=t.distributions[name].to_internal_repr(v),
                    distribution_json=distribution_to_json(t.distributions[name])) for name, v in t.params.items())
            for objective, value in enumerate(t.values or []):
                stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                session.add(models.TrialValueModel(trial_id=t.trial_id, objective=objective, value=stored,
                                                   value_type=kind))
            session.add_all(models.TrialUserAttributeModel(trial_id=t.trial_id, key=k, value_json=json.dumps(v))
                            for k, v in t.user_attrs.items())
            session.add_all(models.TrialSystemAttributeModel(trial_id=t.trial_id, key=k, value_json=json.dumps(v))
                            for k, v in t.system_attrs.items())
            row.state = t.state
            row.datetime_complete = now
        session.commit()
    except Exception:
        session.rollback()
        raise
    finally:
        storage.scoped_session.remove()
