"""The control plane imports neither torch nor the data plane (``workers``) at import time: every module
under autotune/ is imported in a fresh interpreter and the loaded modules are listed. Only the dispatch
layer (autotune/study/dispatch.py) reaches into workers/, lazily, when a study or command runs it."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import importlib, pkgutil, sys
import autotune
names = [m.name for m in pkgutil.walk_packages(autotune.__path__, "autotune.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "workers"))
print(len(names), loaded)
"""


def test_every_control_plane_module_imports_without_torch_or_workers() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    count, loaded = int(out[0]), out[1].strip()
    assert count >= 50, f"only {count} control-plane modules found"
    assert loaded == "[]", f"importing autotune/ loaded {loaded}"
