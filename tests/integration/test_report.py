"""``autotune report``: sections, escaping, self-containment, and rendering in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import optuna
import pytest

from autotune.cli import main
from autotune.results.report import MIN_IMPORTANCE_TRIALS, default_filename, render_report
from autotune.store.storage import EvaluationRecord, Storage
from tests.integration.studydb import EVIL, SPEC, STUDY

ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
SECTIONS = ("Best layout", "Pareto front", "Memory breakdown", "Step-time breakdown", "Optimisation history",
            "Parameter importances", "Rejected layouts by reason", "All evaluations")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000"]
# Prepended to a copy of the report (the product carries no test hooks): records uncaught errors and
# rejected promises, then on load sorts the table by tokens/s (two clicks: descending) and writes a marker.
HOOK = """<script>
window.__errs = [];
window.onerror = (m) => { window.__errs.push(String(m)); };
window.addEventListener("unhandledrejection", (e) => window.__errs.push("rejection: " + e.reason));
window.addEventListener("load", () => setTimeout(() => {
  const th = [...document.querySelectorAll("table.sortable th")].find(h => h.textContent === "tokens/s");
  th.click(); th.click();
  const first = document.querySelector("table.sortable tbody tr").cells[5].textContent;
  const pre = document.createElement("pre");
  pre.id = "test-marker";
  pre.textContent = "ERRORS=" + window.__errs.length + " " + window.__errs.join(" | ") + " FIRST=" + first + " END";
  document.body.appendChild(pre);
}, 200));
</script>"""


def _render(db: str, study: str) -> str:
    store = Storage(db, create=False)
    try:
        return render_report(store, study)
    finally:
        store.close()


@pytest.fixture(scope="module")
def page(study_db) -> str:
    """The report of the driver-written study."""
    return _render(study_db, STUDY)


@pytest.fixture(scope="module")
def evil_page(study_db) -> str:
    """The report of the script-named copy (evaluation rows only, no Optuna study)."""
    return _render(study_db, EVIL)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a Chromium binary; installs the Debian package if missing, skips (with why) if that fails."""
    found = shutil.which("chromium")
    if found:
        return found
    steps = (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"])
    for cmd in steps:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                                  env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"chromium is not installed and `{' '.join(cmd)}` could not run: {e}")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            pytest.skip(f"chromium is not installed and `{' '.join(cmd)}` failed: {tail[0]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("chromium: apt-get install succeeded but no `chromium` binary is on PATH")
    return found


def test_sections_present(page):
    for title in SECTIONS:
        assert f"<h2>{title}" in page
    assert 'id="fig-pareto-memory"' in page and 'id="fig-pareto-gpus"' in page  # two cluster sizes
    assert 'id="fig-importance"' in page
    assert page.count("<tr>") == 41 + 1  # every evaluation plus the header


def test_user_strings_escaped(evil_page):
    page = evil_page
    assert EVIL not in page
    assert f"autotune: {ESCAPED}</title>" in page  # study name
    assert f"<p class=\"sub\">{ESCAPED} on 8/16" in page  # model name
    assert f"<td>{ESCAPED}</td>" in page  # reason in the table
    assert r"\u003cscript\u003ealert" not in page  # plotly labels were escaped before JSON encoding
    assert "crash: &lt;script&gt;alert(1)" in page  # reason as a bar label


def test_missing_optuna_study_is_explained(evil_page):
    assert "Parameter importances cannot be computed: no Optuna study named" in evil_page


def test_self_contained(page):
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?https?:", page, re.I)
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js inlined


def _study_with(store: Storage, name: str, completed: int) -> None:
    store.add_study(name, SPEC | {"name": name}, "test", "test")
    store.add_evaluations([EvaluationRecord(study=name, trial=0, fidelity="analytic", layout={"tp": 3},
                                            metrics={}, status="infeasible", reason="tp=3 does not divide heads")])
    study = optuna.create_study(study_name=name, storage=store.optuna(), direction="maximize")
    for i in range(completed):
        study.add_trial(optuna.trial.create_trial(
            params={"tp": 1}, distributions={"tp": optuna.distributions.CategoricalDistribution([1, 2])}, value=i))


def test_no_fit_and_too_few_trials(tmp_path):
    store = Storage(f"sqlite:///{tmp_path / 'few.db'}")
    _study_with(store, "few", completed=2)
    page = render_report(store, "few")
    assert "No layout fits" in page
    assert f"2 completed trial(s), at least {MIN_IMPORTANCE_TRIALS} needed" in page
    assert "tp=3 does not divide heads" in page
    store.close()


def test_default_filename_is_sanitised():
    assert default_filename("../../etc/passwd") == "etc_passwd-report.html"
    assert default_filename(EVIL) == "script_alert_1_script-report.html"
    assert default_filename("...") == "study-report.html"
    assert default_filename("llama-8b.v2") == "llama-8b.v2-report.html"


def test_cli_report_default_name(study_db, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["report", EVIL, "--storage", study_db])
    assert (tmp_path / "script_alert_1_script-report.html").stat().st_size > 1_000_000
    assert "wrote script_alert_1_script-report.html" in capsys.readouterr().out


def test_cli_report_unknown_study(study_db, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", "nope", "--storage", study_db, "-o", str(tmp_path / "r.html")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert not (tmp_path / "r.html").exists()


def test_cli_report_help(capsys):
    main(["report", "--help"])
    assert "self-contained HTML" in capsys.readouterr().out


def test_renders_in_chromium(study_db, page, tmp_path, chromium):
    store = Storage(study_db, create=False)
    best = max(r.metrics["tokens_per_s"] for r in store.evaluations(STUDY) if r.status == "ok")
    store.close()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + HOOK, 1), encoding="utf-8")
    done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                           probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    marker = re.search(r'<pre id="test-marker">(.*?)</pre>', done.stdout, re.S)
    assert marker, "the page never finished loading: " + done.stderr[-2000:]
    assert marker.group(1).startswith("ERRORS=0 "), marker.group(1)
    assert f"FIRST={best:,.0f} END" in marker.group(1)  # header click sorted tokens/s descending
    assert "Uncaught" not in done.stderr and ":CONSOLE" not in done.stderr, done.stderr[-2000:]  # no console output
    assert done.stdout.count('class="main-svg"') >= 2 * 7  # plotly drew every figure (2 SVG layers each)
