"""Screenshot of the top of an ``autotune report`` page, for the README (docs/report.png).

Runs the quickstart study (``search_spaces/examples/quickstart.yaml``, analytic evaluator, on a local
Ray) into a temporary SQLite file unless ``--storage`` names a DB that already holds it, renders the
report into a temporary directory and has headless Chromium capture its top (a 1280x900 window).
Run: ``.venv/bin/python benchmarks/report_screenshot.py [--out docs/report.png] [--storage URL]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from autotune.results.report import render_report
from autotune.store.storage import Storage

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "examples" / "quickstart.yaml"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=10000", "--window-size=1280,900"]


def main() -> None:
    """Build the study if needed, render the report, save the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    parser.add_argument("--storage", help="SQLAlchemy URL holding the quickstart study [default: a new temp DB]")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        sys.exit("report_screenshot: no chromium on PATH (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        url = args.storage or f"sqlite:///{tmp}/quickstart.db"
        if args.storage is None:
            subprocess.run([sys.executable, "-m", "autotune", "submit", str(SPEC), "--storage", url, "--quiet"],
                           check=True, cwd=tmp, stdout=subprocess.DEVNULL)
        store = Storage(url, create=False)
        page = Path(tmp) / "report.html"
        page.write_text(render_report(store, "quickstart"), encoding="utf-8")
        store.close()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile",
                        f"--screenshot={args.out.resolve()}", page.as_uri()],
                       check=True, capture_output=True, timeout=120)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
