"""The analytic stage's bulk writes under kill -9 and under 4 concurrent drivers.

The study is ``search_spaces/examples/llama3-70b-64xh100.yaml`` with ``sampler: auto``: 18,528 layouts
(9 full chunks of :data:`autotune.study.analytic.CHUNK` and one of 528). A driver is killed with SIGKILL
from inside a stage transaction: a ``before_commit`` listener in the driver's own process counts the
stage's commits and kills itself on the Nth, after its rows were inserted and before they were
committed, and first writes down how many rows that transaction saw (its own uncommitted ones
included), so the test knows the kill landed mid-chunk. What survives must be exactly the committed
chunks; ``autotune resume`` must then finish the study with the rows of an uninterrupted run in a
second database. Every wait is bounded by a subprocess timeout.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml

from autotune.store.storage import Storage
from autotune.study.analytic import CHUNK
from autotune.study.run import DASHBOARD_TRIALS

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "search_spaces" / "examples" / "llama3-70b-64xh100.yaml"
ROWS = 18_528
"""Layouts of the example's specialised megatron space on 64 GPUs at global batch 512 (10 chunks)."""
TIMEOUT_S = 120
KILLER = r"""
import os, signal, sys
from sqlalchemy import event, text
from sqlalchemy.orm import Session
from autotune.cli import main
from autotune.store import storage
from autotune.study import run

where, kill_at, seen_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
owner, name = {"stage": (storage.Storage, "append_stage"), "mirror": (run, "record_finished")}[where]
state = {"calls": 0, "inside": False}
wrapped = getattr(owner, name)

def counted(*args, **kwargs):
    state["calls"] += 1
    state["inside"] = True
    try:
        return wrapped(*args, **kwargs)
    finally:
        state["inside"] = False

@event.listens_for(Session, "before_commit")
def die(session):
    if state["inside"] and state["calls"] == kill_at:
        seen = session.scalar(text("select count(*) from autotune_evaluations"))
        with open(seen_file, "w") as f:
            f.write(str(seen))
        os.kill(os.getpid(), signal.SIGKILL)

setattr(owner, name, counted)
main(sys.argv[4:])
"""


def _spec(tmp: Path, name: str, example: Path = EXAMPLE) -> Path:
    data = yaml.safe_load(example.read_text())
    data["name"] = name
    data["search"] = {k: v for k, v in data["search"].items() if k != "sampler"}  # auto, the default
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "autotune", *args]


def _rows(url: str, study: str) -> dict[int, tuple]:
    """trial -> (status, layout, value, reason) of every stored row; fails on a repeated trial number."""
    store = Storage(url, create=False)
    out: dict[int, tuple] = {}
    for r in store.evaluations(study):
        assert r.trial not in out, f"trial {r.trial} stored twice"
        out[r.trial] = (r.status, tuple(sorted(r.layout.items())), r.value, r.reason)
    store.close()
    return out


def _trials(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def _killed_at(tmp: Path, n: int, args: list[str], where: str = "stage") -> int:
    """Run the CLI with ``args`` and SIGKILL it inside its ``n``-th ``where`` transaction (``stage``: a
    chunk's, ``mirror``: the dashboard trials'); return the evaluation rows that transaction saw."""
    seen = tmp / f"seen-{where}-{n}"
    proc = subprocess.run([sys.executable, "-c", KILLER, where, str(n), str(seen), *args], capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, f"not killed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return int(seen.read_text())


def test_kill9_mid_chunk_keeps_whole_chunks_and_resume_matches_a_clean_run(tmp_path) -> None:
    assert ROWS > 7 * CHUNK, "the example must span several chunks"
    url, ref_url = f"sqlite:///{tmp_path / 'killed.db'}", f"sqlite:///{tmp_path / 'clean' / 'clean.db'}"
    (tmp_path / "clean").mkdir()
    clean = subprocess.Popen(_cli("submit", str(_spec(tmp_path / "clean", "bulk")), "--storage", ref_url, "--quiet"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    spec = _spec(tmp_path, "bulk")

    seen = _killed_at(tmp_path, 3, ["submit", str(spec), "--storage", url, "--quiet"])
    assert seen == 3 * CHUNK, "the kill should land after the 3rd chunk's insert, before its commit"
    after = _rows(url, "bulk")
    assert sorted(after) == list(range(2 * CHUNK)), "exactly the 2 committed chunks, rows 0..3999"
    assert _trials(url, "bulk") == [], "no dashboard trial before the stage ends"

    # a resume re-appends from row 0: its calls 1-2 store nothing, call 5 is chunk 5 (rows 8000..9999)
    seen = _killed_at(tmp_path, 5, ["resume", "bulk", "--storage", url, "--quiet"])
    assert seen == 5 * CHUNK
    again = _rows(url, "bulk")
    assert sorted(again) == list(range(4 * CHUNK))
    assert all(again[n] == row for n, row in after.items()), "a resume changed a committed row"

    done = subprocess.run(_cli("resume", "bulk", "--storage", url, "--quiet"), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    assert clean.wait(timeout=TIMEOUT_S) == 0, clean.stderr.read()[-2000:]
    clean.stderr.close()
    final, reference = _rows(url, "bulk"), _rows(ref_url, "bulk")
    assert len(reference) == ROWS and sorted(reference) == list(range(ROWS))
    assert final == reference, "the resumed study differs from the uninterrupted one"
    for u in (url, ref_url):
        trials = _trials(u, "bulk")
        assert [t.state.name for t in trials] == ["COMPLETE"] * DASHBOARD_TRIALS
    assert [t.params for t in _trials(url, "bulk")] == [t.params for t in _trials(ref_url, "bulk")]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_four_drivers_store_each_row_once(backend, tmp_path, request) -> None:
    name = f"bulk-{backend}"
    url = f"sqlite:///{tmp_path / 'team.db'}" if backend == "sqlite" else request.getfixturevalue("postgres").url()
    spec = _spec(tmp_path, name)
    procs = [subprocess.Popen(_cli("submit", str(spec), "--resume", "--storage", url, "--quiet"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=TIMEOUT_S)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert not any("locked" in e or "Traceback" in e for e in errors), errors

    rows = _rows(url, name)  # fails on a trial number stored twice
    assert sorted(rows) == list(range(ROWS)), "lost or extra rows"
    trials = _trials(url, name)
    assert Counter(t.state.name for t in trials) == {"COMPLETE": DASHBOARD_TRIALS}
    assert sorted(t.number for t in trials) == list(range(DASHBOARD_TRIALS))
    values = sorted((r[2] for r in rows.values() if r[0] == "ok"), reverse=True)[:DASHBOARD_TRIALS]
    assert sorted((t.values[0] for t in trials), reverse=True) == pytest.approx(values, rel=1e-12)
    store = Storage(url, create=False)
    assert [s["name"] for s in store.studies()].count(name) == 1
    store.close()


def test_kill9_while_mirroring_the_best_then_resume_writes_them(tmp_path) -> None:
    """Killed after taking the 10 dashboard slots and before writing them: resume writes those trials."""
    url = f"sqlite:///{tmp_path / 'mirror.db'}"
    spec = _spec(tmp_path, "mirror", EXAMPLE.with_name("quickstart.yaml"))
    seen = _killed_at(tmp_path, 1, ["submit", str(spec), "--storage", url, "--quiet"], where="mirror")
    rows = _rows(url, "mirror")
    assert seen == len(rows) and sorted(rows) == list(range(len(rows))), "the whole stage was stored first"
    assert [t.state.name for t in _trials(url, "mirror")] == ["RUNNING"] * DASHBOARD_TRIALS

    done = subprocess.run(_cli("resume", "mirror", "--storage", url, "--quiet"), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _rows(url, "mirror") == rows
    trials = sorted(_trials(url, "mirror"), key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE"] * DASHBOARD_TRIALS
    best = sorted(((r[2], n) for n, r in rows.items() if r[0] == "ok"), key=lambda vn: (-vn[0], vn[1]))
    assert [t.values[0] for t in trials] == pytest.approx([v for v, _ in best[:DASHBOARD_TRIALS]], rel=1e-12)
    for t in trials:
        assert rows[t.user_attrs["evaluation"]][2] == pytest.approx(t.values[0], rel=1e-12)
