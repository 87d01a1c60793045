"""Headless Chromium (Debian's ``chromium`` package) for the report tests: screenshots, DOM dumps, console errors.

Importable as ``tests.unit.report.browser``. Locally the browser tests skip, with the reason, when
/usr/bin/chromium is absent; under ``CI=true`` they fail instead (``.ci/browser`` installs it).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
#: The flags of every run: no sandbox (containers run as root), no GPU, and nothing that reaches the network.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
TIMEOUT_S = 60
# Chromium logs page console messages as: [..:INFO:CONSOLE:12] "Uncaught ReferenceError: ...", source: ...
_SCRIPT_ERROR = re.compile(r"Uncaught|SyntaxError")
_CONSOLE_ERROR = re.compile(r"CONSOLE.*Error")


def require_chromium() -> Path:
    """The browser, or a skip (a failure under CI=true) when it is not installed."""
    if CHROMIUM.exists():
        return CHROMIUM
    reason = f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium; .ci/browser does)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class Run:
    stdout: str
    stderr: str


def run(browser: Path, profile: Path, *args: str) -> Run:
    """One headless Chromium run with a fresh profile directory; fails the test on a non-zero exit."""
    env = {**os.environ, "HOME": str(profile)}  # nothing under the real home
    result = subprocess.run(
        [str(browser), *FLAGS, f"--user-data-dir={profile / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
        check=False,
    )
    assert result.returncode == 0, f"chromium exited {result.returncode}:\n{result.stderr[-4000:]}"
    return Run(result.stdout, result.stderr)


def screenshot(browser: Path, tmp: Path, url: str, *, size: str = "1280,2400") -> Path:
    """A PNG of ``url`` in a ``size`` window."""
    png = tmp / "screenshot.png"
    run(browser, tmp, f"--screenshot={png}", f"--window-size={size}", url)
    assert png.is_file(), "chromium wrote no screenshot"
    return png


def dump_dom(browser: Path, tmp: Path, url: str) -> tuple[str, list[str]]:
    """The DOM of ``url`` after its scripts ran, and the console lines that report script errors."""
    result = run(browser, tmp, "--enable-logging=stderr", "--v=0", "--dump-dom", url)
    return result.stdout, console_errors(result.stderr)


def console_errors(log: str) -> list[str]:
    """The lines of a Chromium log that report an error thrown by a page's script."""
    return [line for line in log.splitlines() if _SCRIPT_ERROR.search(line) or _CONSOLE_ERROR.search(line)]
