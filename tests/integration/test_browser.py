"""The web page in a real headless Chromium (Debian's, driven by Playwright; no browser is downloaded) against
a real ``autotune serve`` on loopback.

One test submits the quickstart spec through the form, watches the studies list reach the end, opens the
study and checks the best layout, breakdowns, runners-up, exports and a rendered plotly figure in the
report frame, with no JS error; it saves a screenshot of the study page (to the test's tmp dir, and to
``$AUTOTUNE_SCREENSHOT_OUT`` when set: ``AUTOTUNE_SCREENSHOT_OUT=docs/service.png pytest
tests/integration/test_browser.py -k quickstart`` regenerates the README's picture). The other submits a
study whose model name carries ``<script>`` and ``"><img onerror>`` markup and checks the page shows it as
text and runs none of it (nor does a 422 message that quotes such a value).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from autotune.results.render import layout_summary
from tests.integration import servicekit
from tests.integration.aptkit import apt_install

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[dev]'")

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "search_spaces" / "examples" / "quickstart.yaml"
APT_TIMEOUT_S = {"update": 180, "install": 600}
STUDY_TIMEOUT_MS = 240_000
PAYLOAD = ('<script>document.documentElement.dataset.xss=1</script>"><img src=x '
           'onerror="document.documentElement.dataset.xss=2">')
"""Markup a display name may carry; run, it would mark the document (no single quote: the reproduce command
quotes the model JSON in single quotes, so the name appears in it as JSON text)."""
XSS_CHECK = "() => document.documentElement.dataset.xss === undefined && !document.querySelector('img[src=x]')"


def _chromium() -> str:
    """The system Chromium, installed from Debian's packages if missing (bounded); skip with the reason."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    failed = apt_install("chromium", APT_TIMEOUT_S)
    if failed:
        pytest.skip(f"no chromium on PATH and {failed}")
    return shutil.which("chromium") or pytest.skip("apt-get installed chromium but it is not on PATH")


@dataclass(frozen=True)
class Service:
    """The server under test: its base URL and the token it accepts."""

    base: str
    token: str

    def get(self, path: str, ok_only: bool = True) -> httpx.Response:
        """``GET path`` with the token; raises on a 4xx/5xx when ``ok_only``."""
        r = httpx.get(self.base + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=60)
        if ok_only:
            r.raise_for_status()
        return r


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Service]:
    tmp, token = tmp_path_factory.mktemp("service"), secrets.token_urlsafe(24)
    proc = servicekit.start(tmp, f"sqlite:///{tmp / 'service.db'}", env={"AUTOTUNE_TOKENS": token})
    yield Service(proc.url, token)
    servicekit.kill(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    path = _chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Watched:
    """A page with its JS errors (console errors and uncaught exceptions), dialogs and HTTP refusals collected.

    Chromium also logs each 4xx response as a console error ("Failed to load resource"); those are kept
    apart, as (status, path), for the test to compare with the refusals it expects.
    """

    def __init__(self, browser, base: str) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 1000})
        self.base = base
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.refused: list[tuple[int, str]] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" and not m.text.startswith(
            "Failed to load resource") else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("response", lambda r: self.refused.append((r.status, r.url.removeprefix(base)))
                     if r.status >= 400 else None)

    def open(self, path: str) -> None:
        self.page.goto(self.base + path)

    def set_token(self, token: str) -> None:
        """Open the list without a token (the server wants one for reads: a 401, said in the page), then enter
        it in the token form."""
        self.open("/")
        self.page.wait_for_selector("#notice:not([hidden])")
        assert self.page.text_content("#notice").startswith("401: ")
        assert self.refused == [(401, "/api/v1/studies")]
        self.refused.clear()
        self.page.fill("#token", token)
        self.page.click("#token-form button[type=submit]")
        assert self.page.text_content("#token-state") == "token set for this tab"

    def submit(self, text: str | None = None, example: str | None = None) -> None:
        self.open("/submit")
        if example:
            self.page.wait_for_selector(f"#example option[value='{example}']", state="attached")
            self.page.select_option("#example", example)
            self.page.wait_for_function("document.querySelector('#spec').value.includes('name:')")
        else:
            self.page.fill("#spec", text)
        self.page.click("#submit-button")

    def wait_completed(self, name: str) -> list[str]:
        """Wait on the studies list until the study's row is completed; the row states seen on the way."""
        self.page.wait_for_url(f"**/?submitted={name}")
        row = f"tr[data-name='{name}']"
        self.page.wait_for_selector(row)
        seen = [self.page.get_attribute(row, "data-state")]
        self.page.wait_for_selector(f"{row}[data-state=completed]", timeout=STUDY_TIMEOUT_MS)
        seen.append(self.page.get_attribute(row, "data-state"))
        return seen

    def report_frame(self):
        frame = self.page.wait_for_selector("iframe#report").content_frame()
        frame.wait_for_selector(".plot-container svg", state="attached", timeout=60_000)
        return frame


def test_submit_quickstart_and_read_the_study(server: Service, browser, tmp_path: Path) -> None:
    w = Watched(browser, server.base)
    w.set_token(server.token)
    w.submit(example="quickstart")
    seen = w.wait_completed("quickstart")
    assert seen[-1] == "completed" and seen[0] in ("queued", "running", "completed")
    state = server.get("/api/v1/studies/quickstart").json()
    row = "tr[data-name='quickstart']"
    label = w.page.text_content(f"{row} .progress-label")
    assert label == (f"{state['done']:,} / {state['budget']:,}" if state["budget"] else f"{state['done']:,}")
    assert state["done"] > 0 and state["done"] == (state["budget"] or state["done"])

    w.page.click(f"{row} a")
    w.page.wait_for_url("**/studies/quickstart")
    w.page.wait_for_selector("#best-layout")
    best = server.get("/api/v1/studies/quickstart/best").json()
    # the page's layout line is the CLI's (render.layout_summary) with the node count the report adds
    assert w.page.text_content("#best-layout") == f"{layout_summary(best['config'])} nodes={best['config']['nodes']}"
    metrics = dict(zip(w.page.locator("dl.metrics dt").all_text_contents(),
                       w.page.locator("dl.metrics dd").all_text_contents(), strict=True))
    m = best["metrics"]
    assert metrics["tokens/s"] == f"{m['tokens_per_s']:,.0f}" and metrics["step time"] == f"{m['step_time_s']:,.3f} s"
    assert metrics["MFU"] == f"{100 * m['mfu']:.1f} %" and metrics["trial"] == str(best["trial"])
    assert metrics["memory from"] == best["memory_fidelity"] and metrics["time from"] == best["time_fidelity"]
    memory = w.page.locator(".breakdown").nth(0).locator("tbody tr td:first-child").all_text_contents()
    assert memory == [*(k for k in best["metrics"]["memory_gib"] if k != "total"), "total"]
    times = w.page.locator(".breakdown").nth(1).locator("tbody tr td:first-child").all_text_contents()
    assert times == [*best["metrics"]["time_breakdown_s"], "total"]
    runners = w.page.locator("#runners-up tbody tr")
    assert runners.count() == len(best["runners_up"]) == 5
    for i, r in enumerate(best["runners_up"]):
        cells = runners.nth(i).locator("td").all_text_contents()
        assert cells[0] == str(r["trial"]) and cells[-1] == r["lost_by"]
        assert re.search(r"\+\d+\.\d{3} s/step \(\+\d", cells[-1])
    assert w.page.text_content("#estimate-command") == best["estimate_command"]

    exported, refusals = 0, []
    for framework in w.page.get_attribute("body", "data-frameworks").split():
        w.page.click(f"button[data-framework={framework}]")
        served = server.get(f"/api/v1/studies/quickstart/export/{framework}", ok_only=False)
        if served.is_success:  # the launch config as the API serves it
            w.page.wait_for_selector(f"#export-output[data-framework={framework}]:not([hidden])")
            expected = json.dumps(served.json(), indent=2) if "json" in served.headers["content-type"] else served.text
            assert w.page.text_content("#export-output") == expected and expected.strip()
            assert w.page.get_attribute("#export-download", "download").startswith(f"quickstart-{framework}.")
            exported += 1
        else:  # a layout the framework cannot run: the exporter's one-line reason, at the buttons
            w.page.wait_for_selector(f"#export-error[data-framework={framework}]:not([hidden])")
            assert w.page.text_content("#export-error") == served.json()["detail"]["message"]
            refusals.append((served.status_code, f"/api/v1/studies/quickstart/export/{framework}"))
    assert exported >= 1  # the quickstart space is Megatron-LM's: at least that export works

    frame = w.report_frame()
    assert frame.locator(".plot-container").count() >= 3
    assert w.errors == [] and w.dialogs == [] and w.refused == refusals
    w.page.evaluate("window.scrollTo(0, 0)")
    shot = tmp_path / "service.png"
    w.page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("AUTOTUNE_SCREENSHOT_OUT"):
        shutil.copyfile(shot, os.environ["AUTOTUNE_SCREENSHOT_OUT"])


def test_user_strings_are_not_executed(server: Service, browser) -> None:
    """A model name with markup is shown as text (the reproduce command carries it) and never runs, on the
    study page and in the report frame; a 422 for a GPU name with markup runs none of it either."""
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec["name"] = "xss-check"
    # Llama-3-8B's shape (Meta's config.json) under a hostile display name
    spec["model"] = {"name": PAYLOAD, "layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 8, "ffn_hidden": 14336,
                     "vocab": 128256, "activation": "swiglu", "norm": "rmsnorm"}
    w = Watched(browser, server.base)
    w.set_token(server.token)

    bad = dict(spec, cluster=dict(spec["cluster"], gpu=PAYLOAD))
    w.submit(json.dumps(bad, indent=2))
    w.page.wait_for_selector("#spec-error:not([hidden])")
    assert w.page.get_attribute("#spec-error", "data-field") == "cluster.gpu"
    # the error sits under the spec and the spec's line of that field is selected
    selected = w.page.evaluate("(() => { const a = document.querySelector('#spec'); "
                               "return a.value.slice(a.selectionStart, a.selectionEnd); })()")
    assert selected.strip().startswith('"gpu": ')
    assert w.page.evaluate(XSS_CHECK)

    # the study page opened while the study runs follows it over the event stream to the end
    w.submit(json.dumps(spec, indent=2))
    w.page.wait_for_url("**/?submitted=xss-check")
    streams = []
    w.page.on("request", lambda r: streams.append(r.url) if r.url.endswith("/events") else None)
    w.open("/studies/xss-check")
    w.page.wait_for_selector("#study-state")
    assert w.page.get_attribute("#study-state", "data-state") in ("queued", "running")
    w.page.wait_for_selector("#study-state[data-state=completed]", timeout=STUDY_TIMEOUT_MS)
    assert streams == [f"{server.base}/api/v1/studies/xss-check/events"]
    w.page.wait_for_selector("#estimate-command")
    assert json.dumps(PAYLOAD)[1:-1] in w.page.text_content("#estimate-command")
    frame = w.report_frame()
    assert PAYLOAD in frame.locator("body").text_content()
    assert w.page.evaluate(XSS_CHECK) and frame.evaluate(XSS_CHECK)
    assert w.dialogs == [] and w.errors == [] and w.refused == [(422, "/api/v1/studies")]
