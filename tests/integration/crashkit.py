"""Kill -9 a study driver at random points, resume it, and check what survived.

Shared by ``tests/integration/test_crash_resume.py`` (5 kill points) and ``benchmarks/crash_resume.py``
(20). Each round starts ``python -m autotune submit`` (first round) or ``resume`` in its own process
group, waits until the study holds a random number more evaluation rows than when the round began
(0: the kill lands while the driver starts up or opens the study), waits a further random fraction
of a second (so the kill lands anywhere in a batch: reserving, evaluating on Ray, writing), then
SIGKILLs the whole group and waits up to 20 s for every process the driver had started (a local
Ray's, when it started one) to be gone; survivors are counted as orphans and killed. A final
``resume`` runs to the end. :func:`check` lists every broken invariant; an empty list is a pass.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import psutil

from autotune.store.storage import Storage

MAX_RETRY = 3
"""Re-queues of one trial lineage (Storage's RetryHeartbeatStaleTrialCallback); a 4th stale copy is not retried."""
SPEC = """name: {name}
model: llama3-8b
cluster: {{gpu: h100-sxm, gpus_per_node: 8, nodes: 1}}
training: {{seq_len: 8192, global_batch: 512, precision: bf16}}
search: {{space: megatron, sampler: tpe, n_trials: {n_trials}, evaluator: analytic, workers: 2, seed: 3}}
"""


@dataclass
class Snapshot:
    """The DB right after one kill."""

    rows: dict[int, tuple]
    """trial number -> (status, layout, value) of its evaluation row."""
    running: set[int]
    """Trial numbers left RUNNING by the killed driver."""


@dataclass
class Chain:
    """What a run of kills and resumes produced."""

    snapshots: list[Snapshot] = field(default_factory=list)
    orphans: int = 0
    """Processes of a killed driver still alive 20 s after the kill."""
    final_rc: int = -1
    final_err: str = ""
    wall_s: float = 0.0


def _count(db: Path, study: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from autotune_evaluations where study = ?", (study,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def snapshot(url: str, study: str) -> Snapshot:
    """Evaluation rows and RUNNING trials of ``study``."""
    store = Storage(url, create=False)
    rows: dict[int, tuple] = {}
    for r in store.evaluations(study):
        assert r.trial not in rows, f"trial {r.trial} has two evaluation rows"
        rows[r.trial] = (r.status, tuple(sorted(r.layout.items())), r.value)
    trials = optuna.load_study(study_name=study, storage=store.optuna()).get_trials(deepcopy=False)
    store.close()
    return Snapshot(rows, {t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING})


def run_chain(tmp: Path, kills: int, seed: int, ray_address: str | None, n_trials: int = 200) -> Chain:
    """Submit, kill -9 ``kills`` times at random points (resuming in between), then resume to the end."""
    rng = random.Random(seed)
    spec = tmp / "crash.yaml"
    spec.write_text(SPEC.format(name="crash", n_trials=n_trials))
    db = tmp / "crash.db"
    url = f"sqlite:///{db}"
    extra = ["--storage", url, "--quiet"] + (["--ray-address", ray_address] if ray_address else [])
    chain, start = Chain(), time.monotonic()
    for i in range(kills):
        target = min(_count(db, "crash") + rng.randint(0, n_trials // kills), n_trials - 20)
        cmd = ["submit", str(spec)] if i == 0 else ["resume", "crash"]
        proc = subprocess.Popen([sys.executable, "-m", "autotune", *cmd, *extra], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while proc.poll() is None and _count(db, "crash") < target:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is not None:
            raise RuntimeError(f"driver exited before the kill: {proc.stderr.read().decode()[-2000:]}")
        kids = _descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(kids, timeout=20)
        chain.orphans += len(alive)
        for p in alive:
            p.kill()
        proc.stderr.close()
        if db.exists():
            chain.snapshots.append(snapshot(url, "crash"))
    done = subprocess.run([sys.executable, "-m", "autotune", "resume", "crash", *extra], capture_output=True,
                          text=True, timeout=600)
    chain.final_rc, chain.final_err, chain.wall_s = done.returncode, done.stderr, time.monotonic() - start
    return chain


def check(url: str, chain: Chain, n_trials: int = 200) -> list[str]:
    """Broken invariants after the final resume (empty when all hold)."""
    bad = []
    if chain.orphans:
        bad.append(f"{chain.orphans} processes of killed drivers outlived them")
    if chain.final_rc != 0:
        bad.append(f"final resume exited {chain.final_rc}: {chain.final_err[-500:]}")
    final = snapshot(url, "crash")
    for i, snap in enumerate(chain.snapshots):
        lost = [n for n, row in snap.rows.items() if final.rows.get(n) != row]
        if lost:
            bad.append(f"kill {i}: evaluations {lost} lost or changed")
    trials = optuna.load_study(study_name="crash", storage=url).get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    if len(numbers) != len(set(numbers)):
        bad.append("duplicated trial numbers")
    unfinished = [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
    if unfinished:
        bad.append(f"left RUNNING/WAITING: {unfinished}")
    recorded = {t.number for t in trials if t.state.is_finished() and "status" in t.user_attrs}
    if recorded != set(final.rows):
        bad.append(f"Optuna trials and evaluation rows disagree: {sorted(recorded ^ set(final.rows))}")
    if len(final.rows) != n_trials:
        bad.append(f"{len(final.rows)} evaluated trials, budget {n_trials}")
    stale = {t.number for t in trials if t.state.name == "FAIL" and "status" not in t.user_attrs}
    killed_running = set().union(*(s.running for s in chain.snapshots)) if chain.snapshots else set()
    if stale != killed_running:
        bad.append(f"heartbeat-failed {sorted(stale)} != left RUNNING by kills {sorted(killed_running)}")
    retried = {h for t in trials if t.number in recorded for h in t.system_attrs.get("retry_history", [])}
    exhausted = {t.number for t in trials if len(t.system_attrs.get("retry_history", [])) >= MAX_RETRY}
    if not killed_running <= retried | exhausted:
        bad.append(f"not retried: {sorted(killed_running - retried - exhausted)}")
    return bad
