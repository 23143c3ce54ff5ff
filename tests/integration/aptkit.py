"""Install a Debian package for a test that needs a service or tool, each apt-get step bounded by a timeout."""

from __future__ import annotations

import os
import shutil
import subprocess

__all__ = ["apt_install"]


def apt_install(package: str, timeouts: dict[str, int]) -> str | None:
    """``apt-get update`` then ``apt-get install -y --no-install-recommends PACKAGE`` (``timeouts`` in seconds
    for the ``update`` and ``install`` steps); None when it worked, else why not, in one line that reads on
    after "the tool is missing and ..."."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "cannot be installed here (needs root and apt-get)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for step, cmd in (("update", ["apt-get", "update"]),
                      ("install", ["apt-get", "install", "-y", "--no-install-recommends", package])):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeouts[step],
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"apt-get {step} {package} timed out after {timeouts[step]} s"
        if proc.returncode:
            return f"apt-get {step} {package} failed: {proc.stderr.strip()[-300:]}"
    return None
