"""Security: safe YAML only, no unpickling of stored data, masked passwords, sanitised file names.

Reports escaping user strings is tested in tests/integration/test_report.py (test_user_strings_escaped).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from autotune.errors import SpecError
from autotune.spec import StudySpec, read_mapping

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "TopSecret42"
REFUSED = f"postgresql+psycopg://alice:{PASSWORD}@127.0.0.1:1/autotune"
UNPARSEABLE = f"postgresql+psycopg://alice:{PASSWORD}@127.0.0.1:notaport/autotune"


def _sources(*dirs: str) -> dict[Path, str]:
    return {p: p.read_text() for d in dirs for p in (ROOT / d).rglob("*.py")}


def test_yaml_is_only_ever_safe_loaded(tmp_path) -> None:
    unsafe = re.compile(r"yaml\.(load|unsafe_load|full_load|load_all)\(|Loader\s*=|yaml\.(Unsafe|Full)?Loader\b")
    sources = _sources("autotune", "workers", "search_spaces")
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p, text in sources.items() for m in unsafe.finditer(text)]
    assert hits == []
    spec = tmp_path / "evil.yaml"
    spec.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        read_mapping(spec)
    assert not (tmp_path / "pwned").exists()


def test_nothing_is_unpickled_from_the_database() -> None:
    """autotune/ (the only DB reader) never unpickles; workers/ never open the DB at all."""
    unpickle = re.compile(r"\b(pickle|cPickle|dill|cloudpickle|marshal|joblib|shelve|PickleType)\b|torch\.load")
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p, text in _sources("autotune").items()
            for m in unpickle.finditer(text)]
    assert hits == []
    db_access = re.compile(r"^\s*(from|import) (sqlalchemy|optuna|autotune\.(storage|driver|mirror|budget))\b", re.M)
    assert [str(p.relative_to(ROOT)) for p, text in _sources("workers").items() if db_access.search(text)] == []


@pytest.mark.parametrize("args", [["studies"], ["trials", "s"], ["best", "s"], ["resume", "s"], ["report", "s"],
                                  ["export", "s", "--format", "megatron"]])
@pytest.mark.parametrize("url", [REFUSED, UNPARSEABLE])
def test_password_is_masked_in_storage_errors(cli, args, url) -> None:
    pytest.importorskip("psycopg")
    code, out, err = cli([*args, "--storage", url])
    assert code == 2 and err.startswith("error: storage: ") and err.count("\n") == 1
    assert PASSWORD not in out + err and "alice:***@" in err


@pytest.mark.slow
def test_password_is_masked_on_postgres_in_every_output_and_log_line(cli, postgres, ray_local, tmp_path,
                                                                    caplog) -> None:
    from tests.integration.postgres import PASSWORD as REAL

    caplog.set_level(logging.DEBUG)
    code, out, err = cli(["studies", "--storage", postgres.url(password=PASSWORD)])
    assert code == 2 and "password authentication failed" in err and err.count("\n") == 1
    spec = tmp_path / "masked.yaml"
    spec.write_text("name: masked\nmodel: llama3-8b\ncluster: {gpu: h100-sxm}\ntraining: {seq_len: 4096, "
                    "global_batch: 64}\nsearch: {n_trials: 5, workers: 1}\n")
    code, out2, err2 = cli(["submit", str(spec), "--storage", postgres.url(), "--ray-address",
                            ray_local.get_runtime_context().gcs_address])
    assert code == 0, err2
    assert "autotune:***@127.0.0.1" in out2
    code, out3, err3 = cli(["studies", "--storage", postgres.url(), "--json"])
    assert code == 0 and '"masked"' in out3
    for text in (out, err, out2, err2, out3, err3, caplog.text):
        assert PASSWORD not in text and REAL not in text


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", "..", ".hidden", "x\\y", "a b", "/abs", "~user", ""])
def test_study_names_that_could_escape_a_directory_are_rejected(name, cli, tmp_path, monkeypatch) -> None:
    with pytest.raises(Exception, match="name"):
        StudySpec.model_validate({"name": name, "model": "llama3-8b", "cluster": {"gpu": "h100-sxm"},
                                  "training": {"seq_len": 4096, "global_batch": 64}})
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "ok.yaml"
    spec.write_text("name: ok\nmodel: llama3-8b\ncluster: {gpu: h100-sxm}\ntraining: {seq_len: 4096, "
                    "global_batch: 64}\n")
    code, _, err = cli(["submit", str(spec), "--name", name, "--storage", f"sqlite:///{tmp_path / 'n.db'}"])
    assert code == 2 and err.startswith("error: name: ") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.yaml"]


def test_report_of_a_traversal_name_writes_nothing(cli, tmp_path, monkeypatch) -> None:
    from autotune.store.storage import Storage

    Storage(f"sqlite:///{tmp_path / 'r.db'}").close()
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["report", "../../../tmp/evil", "--storage", "sqlite:///r.db"])
    assert code == 2 and err.startswith("error: study: ") and err.count("\n") == 1
    assert not list(tmp_path.glob("**/*.html")) and not Path("/tmp/evil-report.html").exists()
