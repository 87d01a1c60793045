"""How the report writes values: HTML escaping and number formats (accuracy, milliseconds, bytes).

Every value from the database goes through :func:`esc` before it reaches the page: model references, error
messages and worker names are user input.
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from typing import Any

MISSING = "–"  # an en dash: a figure that was not measured


def esc(value: Any) -> str:
    """``value`` as HTML text (quotes escaped too, so the result is safe in an attribute).

    Args:
        value: anything; None becomes the empty string.

    Returns:
        The escaped text.
    """
    return "" if value is None else html.escape(str(value), quote=True)


def sig(x: float | None, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits, never in exponent notation (0.00737, 12.3, 1,230).

    Args:
        x: the number, or None.
        digits: significant digits (1 or more).

    Returns:
        The formatted number, or :data:`MISSING` for None or a non-finite value.
    """
    if x is None or not math.isfinite(x):
        return MISSING
    if x == 0:
        return "0"
    rounded = float(f"{x:.{digits - 1}e}")  # first, so that 0.0099996 is 0.0100, not 0.01000
    decimals = digits - 1 - math.floor(math.log10(abs(rounded)))
    if decimals > 0:
        return f"{rounded:.{decimals}f}"
    return f"{round(rounded, decimals):,.0f}"


def fixed(x: float | None, decimals: int = 4, *, signed: bool = False) -> str:
    """``x`` with a fixed number of decimals (accuracies: 0.9688; drops with ``signed``: +0.0312)."""
    if x is None or not math.isfinite(x):
        return MISSING
    return f"{x:+.{decimals}f}" if signed else f"{x:.{decimals}f}"


def percent(x: float | None, decimals: int = 1) -> str:
    """A fraction as a percentage (0.982 -> 98.2%)."""
    if x is None or not math.isfinite(x):
        return MISSING
    return f"{x:.{decimals}%}"


def human_bytes(n: float | None) -> str:
    """Bytes in binary units with three significant digits (13179 -> 12.9 KiB).

    Args:
        n: a byte count, or None.

    Returns:
        The formatted size, or :data:`MISSING`.
    """
    if n is None or not math.isfinite(n):
        return MISSING
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{sig(value)} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def byte_unit(largest: float) -> tuple[str, float]:
    """The binary unit a plot axis should use for sizes up to ``largest`` bytes: (name, bytes per unit)."""
    for unit, scale in (("GiB", 1024.0**3), ("MiB", 1024.0**2), ("KiB", 1024.0)):
        if largest >= scale:
            return unit, scale
    return "B", 1.0


def when(value: datetime | None) -> str:
    """A timestamp as ``YYYY-MM-DD HH:MM:SS UTC`` (naive datetimes are UTC, as SQLite returns them)."""
    if value is None:
        return MISSING
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return f"{value:%Y-%m-%d %H:%M:%S} UTC"


def sort_key(value: Any) -> str:
    """The ``data-v`` attribute a table cell sorts by: numbers compactly (6 significant digits), else ''."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return esc(value)


def id_ranges(ids: list[int], limit: int = 12) -> str:
    """Sorted ids as ranges: [1, 2, 3, 5, 7, 8] -> ``1–3, 5, 7–8``; past ``limit`` ranges, how many more ids."""
    out: list[str] = []
    values = sorted(set(ids))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        if len(out) == limit:
            return ", ".join(out) + f", … ({len(values) - i} more)"
        out.append(str(values[i]) if i == j else f"{values[i]}–{values[j]}")
        i = j + 1
    return ", ".join(out)
