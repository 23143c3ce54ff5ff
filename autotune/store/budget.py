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

import copy
import datetime as dt
from dataclasses import dataclass

import optuna
from sqlalchemy import and_, exists, func, or_, select, update

from autotune.store import optuna_adapter as models

__all__ = ["Slot", "RECORDED_ATTR", "reserve", "usage", "requeue_orphans"]

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


def requeue_orphans(study: optuna.Study, min_age_s: float) -> tuple[int, float]:
    """Re-queue heartbeat-failed trials that were never re-queued; returns how many, and the seconds
    until the youngest orphan left alone (failed less than ``min_age_s`` ago) is old enough (0 if none).

    Optuna's ``fail_stale_trials`` fails the stale trials first and only then runs the retry callback
    for each: a driver killed between the two leaves failed trials that no one retries. Here a
    heartbeat-failed trial (FAIL without the driver's ``status``) that failed more than ``min_age_s``
    ago (a live driver re-queues within milliseconds of failing) and that no trial's retry history ends
    with is handed to the same callback, which also enforces its ``max_retry``.
    """
    callback = models.study_storage(study).get_heartbeat_stale_trial_callback()
    if callback is None:
        return 0, 0.0
    trials = study.get_trials(deepcopy=False)
    copied = {t.system_attrs["retry_history"][-1] for t in trials if t.system_attrs.get("retry_history")}
    now = dt.datetime.now()
    ages = {t.number: (now - t.datetime_complete).total_seconds() for t in trials
            if t.state == TrialState.FAIL and RECORDED_ATTR not in t.user_attrs and t.number not in copied
            and t.datetime_complete is not None}
    orphans = [t for t in trials if ages.get(t.number, -1.0) >= min_age_s]
    for t in orphans:
        callback(study, copy.deepcopy(t))
    young = [min_age_s - a for a in ages.values() if a < min_age_s]
    return len(orphans), max(young, default=0.0)
