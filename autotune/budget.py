"""A study's trial budget, enforced in the database so that several drivers share it exactly.

A *study trial* is a trial of the DB study that is RUNNING (taken by a live or dead driver) or that a
driver finished (COMPLETE, PRUNED, or FAIL with the driver's ``status`` user attribute). A trial that
Optuna failed by heartbeat (its driver died) is not one: it gives its slot back, and the WAITING copy
that :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` re-queues takes a slot when claimed.

:func:`reserve` takes slots in one transaction whose first statement writes the study row, so SQLite
takes its write lock and PostgreSQL locks the row before the study trials are counted: two drivers
can never both take the last slot, and the budget is never exceeded (no over-budget trials are ever
created). A reserved trial gets its first heartbeat in the same transaction, so a driver killed at
any moment leaves only trials that go stale after the grace period.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import optuna
from optuna.storages._rdb import models
from sqlalchemy import and_, exists, func, or_, select, update

__all__ = ["Slot", "RECORDED_ATTR", "reserve", "usage"]

TrialState = optuna.trial.TrialState
RECORDED_ATTR = "status"
"""User attribute the driver writes on every trial it finishes (marks a FAIL as a study trial)."""


@dataclass(frozen=True)
class Slot:
    """A trial taken for one evaluation: new, or a re-queued WAITING trial claimed."""

    trial_id: int
    number: int
    claimed: bool


def _study_trials(study_id: int):
    t, attr = models.TrialModel, models.TrialUserAttributeModel
    recorded = exists().where(attr.trial_id == t.trial_id, attr.key == RECORDED_ATTR)
    return select(func.count()).select_from(t).where(t.study_id == study_id, or_(
        t.state.in_([TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED]),
        and_(t.state == TrialState.FAIL, recorded)))


def usage(storage: optuna.storages.RDBStorage, study_id: int) -> tuple[int, int]:
    """(study trials, of which RUNNING) of the study."""
    session = storage.scoped_session()
    try:
        taken = session.scalar(_study_trials(study_id))
        running = session.scalar(select(func.count()).select_from(models.TrialModel).where(
            models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING))
        return int(taken or 0), int(running or 0)
    finally:
        storage.scoped_session.remove()


def reserve(storage: optuna.storages.RDBStorage, study_id: int, budget: int, k: int) -> list[Slot]:
    """Take up to ``k`` slots under ``budget`` (re-queued WAITING trials first), all RUNNING with a heartbeat."""
    t = models.TrialModel
    session = storage.scoped_session()
    try:
        session.execute(update(models.StudyModel).where(models.StudyModel.study_id == study_id)
                        .values(study_name=models.StudyModel.study_name))  # the lock
        free = min(k, budget - int(session.scalar(_study_trials(study_id)) or 0))
        if free <= 0:
            session.rollback()
            return []
        now = dt.datetime.now()
        slots = []
        waiting = session.scalars(select(t).where(t.study_id == study_id, t.state == TrialState.WAITING)
                                  .order_by(t.number).limit(free)).all()
        for row in waiting:
            row.state, row.datetime_start = TrialState.RUNNING, now
            slots.append(Slot(row.trial_id, row.number, claimed=True))
        count = session.scalar(select(func.count()).select_from(t).where(t.study_id == study_id))
        for i in range(free - len(waiting)):
            row = t(study_id=study_id, number=int(count) + i, state=TrialState.RUNNING, datetime_start=now)
            session.add(row)
            session.flush()
            slots.append(Slot(row.trial_id, row.number, claimed=False))
        session.add_all(models.TrialHeartbeatModel(trial_id=s.trial_id) for s in slots)
        session.commit()
        return slots
    except Exception:
        session.rollback()
        raise
    finally:
        storage.scoped_session.remove()
