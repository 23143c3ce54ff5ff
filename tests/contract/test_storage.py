"""One contract suite run over every storage back end (SQLite and PostgreSQL), as Optuna's storage tests are.

Covered: studies, evaluation rows (order, status filter, a caller's session), the cache, the bulk stage
writer (``append_stage``/``stage_rows``), and the trial budget (:mod:`autotune.store.budget`).

The PostgreSQL server is the session fixture of tests/conftest.py (installed and started on loopback, or
skipped with the reason). Its database is shared by the whole session, so every test writes under its own
study name and cache keys. Expected rows are the records the test wrote, compared field by field.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid

import optuna
import pytest
from sqlalchemy import text

from autotune.errors import StorageError
from autotune.store.budget import RECORDED_ATTR, requeue_orphans, reserve, usage
from autotune.store.optuna_adapter import study_id
from autotune.store.storage import EvaluationRecord, Storage

TrialState = optuna.trial.TrialState
BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    """A :class:`Storage` on each back end."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'contract.db'}"
    else:
        url = request.getfixturevalue("postgres").url()
    s = Storage(url)
    yield s
    s.close()


def _name(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def _record(study: str, trial: int, status: str = "ok", key: str | None = None, **kw) -> EvaluationRecord:
    reason = None if status == "ok" else f"{status} at trial {trial}"
    metrics = {"tokens_per_s": 1000.0 + trial, "memory_gib": {"total": 12.5, "weights": 2.25}} if status == "ok" \
        else {}
    return EvaluationRecord(study=study, trial=trial, fidelity="analytic", layout={"tp": 2, "pp": 1, "trial": trial},
                            metrics=metrics, status=status, reason=reason, reason_kind=status if reason else None,
                            value=metrics.get("tokens_per_s"), wall_s=0.25 * (trial + 1), host="h", cache_key=key, **kw)


def test_study_spec_round_trips(store) -> None:
    name = _name("spec")
    spec = {"name": name, "model": "tiny", "cluster": {"gpu": "cpu", "nodes": [1, 2]}, "search": {"n_trials": 3}}
    assert store.study_spec(name) is None
    store.add_study(name, spec, "1.2.3", "4")
    store.add_study(name, {"other": True}, "1.2.3", "4")  # a concurrent driver's second add is a no-op
    assert store.study_spec(name) == spec
    row = next(s for s in store.studies() if s["name"] == name)
    assert (row["autotune_version"], row["cost_model_version"], row["evaluations"], row["ok"]) == ("1.2.3", "4", 0, 0)


def test_evaluations_come_back_in_trial_order_with_every_field(store) -> None:
    name = _name("order")
    written = [_record(name, 3), _record(name, 0, "oom"), _record(name, 2), _record(name, 1, "crash"),
               _record(name, -1)]
    store.add_evaluations(written[:2])
    store.add_evaluations(written[2:])
    store.add_evaluations([])
    got = store.evaluations(name)
    assert [r.trial for r in got] == [-1, 0, 1, 2, 3]
    assert sorted(got, key=lambda r: r.trial) == sorted(written, key=lambda r: r.trial)
    assert [r.trial for r in store.evaluations(name, status="ok")] == [-1, 2, 3]
    assert [r.reason for r in store.evaluations(name, status="crash")] == ["crash at trial 1"]
    assert store.evaluations(name, status="nan") == []
    assert store.evaluations(_name("absent")) == []


def test_evaluations_in_a_callers_session_commit_with_it(store) -> None:
    from sqlalchemy.orm import Session

    name = _name("session")
    with Session(store.engine) as s, s.begin():
        store.add_evaluations([_record(name, 0)], session=s)
        assert store.evaluations(name) == []  # not visible before the caller's commit
    assert [r.trial for r in store.evaluations(name)] == [0]


def test_cached_finds_other_studies_keys_and_skips_cache_hits(store) -> None:
    a, b, k1, k2, k3 = _name("a"), _name("b"), _name("k1"), _name("k2"), _name("k3")
    first = _record(a, 0, key=k1)
    store.add_evaluations([first, _record(a, 1, "oom", key=k2), _record(a, 2, key=None)])
    store.add_evaluations([_record(b, 0, key=k1, cached=True), _record(b, 1, key=k3, cached=True)])
    found = store.cached([k1, k2, k3, _name("none")])
    assert set(found) == {k1, k2}  # k3 exists only as a cache hit: never a source
    assert found[k1] == first and found[k2].status == "oom"
    assert store.cached([]) == {}


def _study(store: Storage) -> optuna.Study:
    return optuna.create_study(study_name=_name("budget"), storage=store.optuna())


def _heartbeats(store: Storage, trial_ids: list[int]) -> set[int]:
    with store.optuna().engine.connect() as c:  # Optuna's schema: one heartbeat row per trial
        rows = c.execute(text("SELECT trial_id FROM trial_heartbeats")).all()
    return {r[0] for r in rows} & set(trial_ids)


def test_reserve_takes_k_running_slots_with_heartbeats_and_stops_at_the_budget(store) -> None:
    ostore = store.optuna()
    study = _study(store)
    sid = study_id(study)
    first = reserve(ostore, sid, budget=5, k=3)
    assert [s.number for s in first] == [0, 1, 2] and not any(s.claimed for s in first)
    assert {ostore.get_trial(s.trial_id).state for s in first} == {TrialState.RUNNING}
    assert _heartbeats(store, [s.trial_id for s in first]) == {s.trial_id for s in first}
    assert usage(ostore, sid) == (3, 3)
    second = reserve(ostore, sid, budget=5, k=3)
    assert [s.number for s in second] == [3, 4]  # only 2 left under the budget
    assert reserve(ostore, sid, budget=5, k=3) == []
    assert len(study.get_trials(deepcopy=False)) == 5 and usage(ostore, sid) == (5, 5)


def test_concurrent_reservations_never_exceed_the_budget(store) -> None:
    ostore = store.optuna()
    sid = study_id(_study(store))
    taken: list[int] = []
    lock = threading.Lock()

    def driver() -> None:
        while slots := reserve(ostore, sid, budget=7, k=2):
            with lock:
                taken.extend(s.number for s in slots)

    threads = [threading.Thread(target=driver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == list(range(7))
    assert usage(ostore, sid) == (7, 7)


def test_finished_and_failed_trials_count_and_orphans_are_requeued(store) -> None:
    ostore = store.optuna()
    study = _study(store)
    sid = study_id(study)
    slots = reserve(ostore, sid, budget=4, k=4)
    ostore.set_trial_state_values(slots[0].trial_id, TrialState.COMPLETE, [1.0])
    ostore.set_trial_user_attr(slots[1].trial_id, RECORDED_ATTR, "crash")  # a driver recorded this failure
    ostore.set_trial_state_values(slots[1].trial_id, TrialState.FAIL)
    for s in slots[2:]:  # failed by heartbeat: the driver died before re-queuing them
        ostore.set_trial_state_values(s.trial_id, TrialState.FAIL)
    assert usage(ostore, sid) == (2, 0)
    assert requeue_orphans(study, min_age_s=3600.0)[0] == 0
    assert requeue_orphans(study, min_age_s=0.0) == (2, 0.0)
    assert requeue_orphans(study, min_age_s=0.0) == (0, 0.0)
    claimed = reserve(ostore, sid, budget=4, k=4)
    assert [s.claimed for s in claimed] == [True, True]
    assert sorted(ostore.get_trial(s.trial_id).system_attrs["retry_history"][-1] for s in claimed) == [2, 3]
    assert usage(ostore, sid) == (4, 2) and reserve(ostore, sid, budget=4, k=1) == []


def test_bulk_stage_reads_back_as_add_evaluations_writes(store) -> None:
    a, b = _name("one"), _name("bulk")
    store.add_study(b, {"name": b}, "t", "t")
    records = [_record(a, i, "ok" if i % 3 else "oom", key=_name("k")) for i in range(10)]
    store.add_evaluations(records)
    staged = [dataclasses.replace(r, study=b) for r in records]
    assert [store.append_stage(b, start, staged[start:start + 4], numbered=True) for start in (0, 4, 8)] == [4, 4, 2]
    assert [dataclasses.replace(r, study=a) for r in store.evaluations(b)] == store.evaluations(a)
    assert len(store.evaluations(b, status="oom")) == 4 and store.stage_rows(b, "analytic", numbered=True) == 10


def test_bulk_stage_resumes_without_duplicates_and_refuses_gaps(store) -> None:
    name = _name("resume")
    store.add_study(name, {"name": name}, "t", "t")
    rows = [_record(name, -1, key=_name("k")) for _ in range(6)]
    assert store.append_stage(name, 0, rows[:4], numbered=False) == 4
    assert store.append_stage(name, 2, rows[2:6], numbered=False) == 2  # a resumed driver redoes a chunk
    assert store.stage_rows(name, "analytic", numbered=False) == 6 and len(store.evaluations(name)) == 6
    with pytest.raises(StorageError, match="holds 6 rows of its analytic stage, fewer than the 8"):
        store.append_stage(name, 8, rows[:1], numbered=False)
    with pytest.raises(StorageError):
        store.append_stage(_name("no-study"), 0, rows[:1], numbered=False)


def test_concurrent_bulk_appends_store_each_row_once(store) -> None:
    name = _name("race")
    store.add_study(name, {"name": name}, "t", "t")
    rows = [_record(name, i) for i in range(40)]

    def driver() -> None:
        for start in range(0, 40, 8):
            store.append_stage(name, start, rows[start:start + 8], numbered=True)

    threads = [threading.Thread(target=driver) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.trial for r in store.evaluations(name)] == list(range(40))
