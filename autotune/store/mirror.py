"""Record finished trials in Optuna's RDB tables in one transaction per batch.

Optuna's public ``Trial.set_user_attr`` / ``tell`` cost one transaction each, and each parameter of a
templated trial is checked against earlier trials with extra queries (~30 ms a trial on SQLite). The
driver's trials are all drawn from one fixed space, so the checks add nothing; this module writes
params, values, user and system attributes and the final state of a whole batch with Optuna's own
ORM models (the schema of the installed Optuna, through :mod:`autotune.store.optuna_adapter`) in one
commit.
Trials are created RUNNING with a heartbeat when asked (:mod:`autotune.store.budget`), so stale-trial retry
keeps working. A trial is written only while it is still RUNNING: the conditional state update comes
first (SQLite's write lock, PostgreSQL's row lock), so a trial another driver failed as stale meanwhile
is skipped, never overwritten, and the caller's evaluation rows are written in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, distribution_to_json
from sqlalchemy import update
from sqlalchemy.orm import Session

from autotune.store import optuna_adapter as models

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


def record_finished(storage: optuna.storages.RDBStorage, trials: list[FinishedTrial],
                    also: Callable[[Session, set[int]], None] | None = None) -> set[int]:
    """Write the outcome of ``trials`` in one transaction; return the ids written (those still RUNNING).

    ``also(session, written_ids)`` adds more rows (the evaluation rows) to the same transaction.
    """
    if not trials:
        return set()
    session = storage.scoped_session()
    written: set[int] = set()
    try:
        now = dt.datetime.now()
        for t in trials:
            running = models.TrialModel.state == optuna.trial.TrialState.RUNNING
            res = session.execute(update(models.TrialModel).where(models.TrialModel.trial_id == t.trial_id, running)
                                  .values(state=t.state))
            if res.rowcount != 1:
                continue
            written.add(t.trial_id)
            row = session.get(models.TrialModel, t.trial_id)
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
            row.datetime_complete = now
        if also is not None:
            also(session, written)
        session.commit()
        return written
    except Exception:
        session.rollback()
        raise
    finally:
        storage.scoped_session.remove()
