"""Injected worker faults end as typed trials and the study goes on (Driver API, local Ray, SQLite).

The ``faults`` evaluator (workers/faults.py) scores layouts analytically except at chosen trial
numbers. Every layout of the space fits, so every trial is dispatched and the counts are exact.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from autotune.catalog import get_gpu, get_model
from autotune.config import derive
from autotune.evaluation import EvalTask
from autotune.spec import StudySpec, TrainingSpec
from autotune.store.storage import Storage
from autotune.study.dispatch import RayPool
from autotune.study.driver import Driver, RunOptions

pytestmark = pytest.mark.slow

SPACE = """name: faults
framework: any
dimensions:
  tp: {choices: [2, 4, 8]}
  micro_batch: {choices: [1, 2]}
  recompute: {choices: [selective, full]}
fixed: {zero: 1}
"""
TIMEOUT_S = 10.0
"""Per-step deadline; it also covers starting a fresh Ray worker after a crash, seconds on a busy machine."""


def _driver(tmp: Path, name: str, n_trials: int, workers: int, options: dict,
            timeout_s: float = TIMEOUT_S) -> tuple[Driver, Storage]:
    (tmp / "space.yaml").write_text(SPACE)
    spec = StudySpec.model_validate({
        "name": name, "model": "llama3-8b", "cluster": {"gpu": "h100-sxm", "gpus_per_node": 8},
        "training": {"seq_len": 4096, "global_batch": 64},
        "search": {"space": str(tmp / "space.yaml"), "sampler": "random", "n_trials": n_trials, "seed": 0}})
    store = Storage(f"sqlite:///{tmp / 'faults.db'}")
    opts = RunOptions(n_trials=n_trials, sampler="random", evaluator="faults", workers=workers, seed=0,
                      use_cache=False, task_timeout_s=timeout_s, evaluator_options=options)
    return Driver(spec, store, opts), store


def _outcomes(store: Storage, name: str
              ) -> tuple[dict[int, tuple[str, str | None]], dict[int, optuna.trial.FrozenTrial]]:
    rows = store.evaluations(name)
    assert len(rows) == len({r.trial for r in rows}), "a trial has two evaluation rows"
    trials = optuna.load_study(study_name=name, storage=store.optuna()).get_trials()
    return {r.trial: (r.status, r.reason) for r in rows}, {t.number: t for t in trials}


def test_each_fault_is_its_typed_status_with_reason_and_the_study_goes_on(tmp_path, ray_local) -> None:
    faults = {1: "oom", 2: "crash", 4: "hang", 6: "nan", 7: "error"}
    driver, store = _driver(tmp_path, "faults", 10, 2, {"faults": faults, "hang_s": 120})
    progress = driver.run(driver.open(create=True))
    rows, trials = _outcomes(store, "faults")
    expected = {1: "oom", 2: "crash", 4: "timeout", 6: "nan", 7: "error"}
    assert {n: s for n, (s, _) in rows.items()} == {n: expected.get(n, "ok") for n in range(10)}
    reasons = {n: r for n, (_, r) in rows.items()}
    assert "out of memory" in reasons[1] and "loss is nan" in reasons[6]
    assert "injected exception in trial 7" in reasons[7] and "RuntimeError" in reasons[7]
    assert f"no result within {TIMEOUT_S:.0f} s" in reasons[4]
    assert "Worker" in reasons[2] or "died" in reasons[2]
    assert all(reasons[n] is None for n in range(10) if n not in faults)
    state = {n: t.state.name for n, t in trials.items()}
    assert state == {n: {"oom": "PRUNED", None: "COMPLETE"}.get(faults.get(n), "FAIL") for n in range(10)}
    for n in faults:
        assert trials[n].user_attrs["status"] == expected[n] and trials[n].user_attrs["reason"] == reasons[n]
    assert (progress.done, progress.failed, progress.infeasible) == (10, 4, 1)
    assert Counter(s for s, _ in rows.values()) == Counter({"ok": 5, "oom": 1, "crash": 1, "timeout": 1,
                                                            "nan": 1, "error": 1})


def test_ray_worker_killed_mid_trial_is_a_crashed_trial_not_a_dead_study(tmp_path, ray_local) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    driver, store = _driver(tmp_path, "killed", 6, 2, {"faults": {3: "kill"}, "pid_dir": str(pid_dir),
                                                         "hang_s": 120}, timeout_s=120)
    killed: list[int] = []

    def kill_worker() -> None:
        deadline = time.monotonic() + 120
        while not (pid_dir / "3.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int((pid_dir / "3.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    watcher = threading.Thread(target=kill_worker, daemon=True)
    watcher.start()
    progress = driver.run(driver.open(create=True))
    watcher.join(5)
    rows, trials = _outcomes(store, "killed")
    assert killed and killed[0] != os.getpid()
    assert {n: s for n, (s, _) in rows.items()} == {n: "crash" if n == 3 else "ok" for n in range(6)}
    assert trials[3].state == optuna.trial.TrialState.FAIL and trials[3].user_attrs["reason"]
    assert "timeout" not in (rows[3][1] or "")
    assert progress.done == 6 and progress.failed == 1


def test_non_analytic_evaluators_go_one_layout_per_task_so_a_crash_takes_only_its_own(ray_local) -> None:
    model, training = get_model("llama3-8b"), TrainingSpec(seq_len=4096, global_batch=64)
    cfg = derive(model, training, 8, tp=8, zero=1)
    plan = {1: "crash", 3: "error"}
    tasks = [EvalTask(model=model, training=training, gpu=get_gpu("h100-sxm"), gpus_per_node=8, config=cfg,
                      trial=i, options={"faults": plan}) for i in range(4)]
    pool = RayPool("faults", workers=2, task_timeout_s=60)
    assert [r.status for r in pool.run(tasks)] == ["ok", "crash", "ok", "error"]
