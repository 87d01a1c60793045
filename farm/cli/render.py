"""Formatting helpers shared by the commands."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console

# Piped or redirected output gets a wide console so that tables are never cut at 80 columns.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 220)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 220)


def interactive() -> bool:
    """Whether live progress displays belong on stderr (a terminal)."""
    return sys.stderr.isatty()


def human_bytes(n: float | int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def fraction(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def percent(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def number(x: float | None, fmt: str = ".2f", suffix: str = "") -> str:
    return "-" if x is None else f"{x:{fmt}}{suffix}"


def cell(value: Any) -> str:
    """A table cell for any scalar."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
