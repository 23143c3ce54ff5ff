"""A driver killed between Optuna failing a stale trial and re-queuing it leaves an orphan; it is retried."""

from __future__ import annotations

import optuna

from autotune.store.budget import RECORDED_ATTR, requeue_orphans, reserve, usage
from autotune.store.optuna_adapter import study_id
from autotune.store.storage import Storage

TrialState = optuna.trial.TrialState


def test_orphaned_heartbeat_failure_is_requeued_once(tmp_path) -> None:
    store = Storage(f"sqlite:///{tmp_path / 'o.db'}")
    ostore = store.optuna()
    study = optuna.create_study(study_name="s", storage=ostore)
    slots = reserve(ostore, study_id(study), budget=3, k=3)
    assert [s.number for s in slots] == [0, 1, 2]
    # trial 0: finished by a driver as a failure (a crashed worker): a study trial, never re-queued
    ostore.set_trial_user_attr(slots[0].trial_id, RECORDED_ATTR, "crash")
    ostore.set_trial_state_values(slots[0].trial_id, TrialState.FAIL)
    # trials 1 and 2: failed by fail_stale_trials, whose driver died before the retry callback ran
    for s in slots[1:]:
        ostore.set_trial_state_values(s.trial_id, TrialState.FAIL)
    assert usage(ostore, study_id(study)) == (1, 0)  # two slots given back
    count, wait_s = requeue_orphans(study, min_age_s=3600.0)  # too recent: a live driver may still re-queue
    assert count == 0 and 3590.0 < wait_s <= 3600.0
    assert requeue_orphans(study, min_age_s=0.0) == (2, 0.0)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.system_attrs["retry_history"] for t in waiting) == [[1], [2]]
    assert requeue_orphans(study, min_age_s=0.0) == (0, 0.0)  # each orphan is re-queued once
    claimed = reserve(ostore, study_id(study), budget=3, k=3)
    assert [s.claimed for s in claimed] == [True, True]
    assert usage(ostore, study_id(study)) == (3, 2)
    store.close()
