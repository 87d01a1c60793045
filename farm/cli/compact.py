"""Result tables that fit 100 terminal columns: a recipe label instead of five parameter columns, model names
shortened through a legend (never ambiguous), and a column only where it says something (the backend and the runtime
where they vary, health where a result is not ok, state where a job did not succeed). ``--wide`` shows every column."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from farm.cli.render import cell

#: What a default table should fit in.
TABLE_WIDTH = 100
#: Model names up to this long are shown whole.
MODEL_WIDTH = 12
#: A longer recipe label wraps onto a second line (at a space) rather than widening the table.
RECIPE_WIDTH = 24


def model_legend(models: Sequence[str]) -> dict[str, str]:
    """A short name for each model, unique among ``models``: the name itself when short, else the part after the
    scheme (``torchvision:resnet18`` -> ``resnet18``) cut to fit and numbered where two would collide.

    Returns:
        {full name: short name}; the caller prints a legend line for every name that differs.
    """
    names = list(dict.fromkeys(models))
    short: dict[str, str] = {}
    for name in names:
        tail = name.rsplit(":", 1)[-1].rsplit("/", 1)[-1] or name
        short[name] = name if len(name) <= MODEL_WIDTH else tail[:MODEL_WIDTH]
    counts: dict[str, int] = {}
    for s in short.values():
        counts[s] = counts.get(s, 0) + 1
    seen: dict[str, int] = {}
    for name in names:
        s = short[name]
        if counts[s] > 1 or (s != name and s in names):
            seen[s] = seen.get(s, 0) + 1
            short[name] = f"{s[: MODEL_WIDTH - 3]}~{seen[s]}"
    return short


def legend_lines(legend: dict[str, str]) -> list[str]:
    """``models: resnet18 = torchvision:resnet18, ...`` for the names a table shortened (none: no line)."""
    pairs = [f"{s} = {full}" for full, s in legend.items() if s != full]
    return [f"models: {', '.join(pairs)}"] if pairs else []


def p50_with_interval(row: dict[str, Any]) -> str:
    """``0.118±0.002``: the median latency and the half-width of its 95 % interval (the wider side)."""
    p50 = row.get("latency_p50_ms")
    if p50 is None:
        return "-"
    low, high = row.get("latency_p50_ci_low_ms"), row.get("latency_p50_ci_high_ms")
    if low is None or high is None:
        return f"{p50:.3g}"
    return f"{p50:.3g}±{max(high - p50, p50 - low, 0.0):.1g}"


def recipe_of(row: dict[str, Any]) -> str:
    """The row's recipe label, marked when simulated; the method for rows stored before the label existed."""
    label = row.get("recipe") or row.get("method") or "-"
    return f"{label} (sim)" if row.get("simulated") else str(label)


def compact_table(rows: list[dict[str, Any]], *, title: str | None = None) -> tuple[Table, list[str]]:
    """The default results table (``farm results query`` without ``--columns``): one row per job and batch size.

    Returns:
        The table and the lines to print under it (the model legend).
    """
    legend = model_legend([str(r.get("model")) for r in rows])
    columns: list[tuple[str, Any]] = [
        ("job", lambda r: cell(r.get("job_id"))),
        ("model", lambda r: legend[str(r.get("model"))]),
        ("recipe", recipe_of),
    ]
    shown = varying(rows)
    for name in ("backend", "runtime"):
        if name in shown:
            columns.append((name, lambda r, name=name: cell(r.get(name))))
    columns += [
        ("bs", lambda r: cell(r.get("batch_size"))),
        ("acc", lambda r: fmt(r.get("accuracy"), ".4f")),
        ("drop", lambda r: fmt(r.get("accuracy_drop"), "+.4f")),
        ("p50 ms", p50_with_interval),
        ("speedup", lambda r: fmt(r.get("speedup"), ".2f", "x")),
        ("size", lambda r: short_bytes(r.get("size_bytes"))),
    ]
    if any(status(r) != "ok" for r in rows):
        columns.append(("status", status))
    table = new_table(title)
    for name, _ in columns:
        add_column(table, name)
    for r in rows:
        table.add_row(*(render(r) for _, render in columns))
    return table, legend_lines(legend)


def status(row: dict[str, Any]) -> str:
    """One word for what is off with a row: its state when the job did not succeed, else its health."""
    if row.get("state") != "succeeded":
        return str(row.get("state"))
    return str(row.get("health") or "ok")


def new_table(title: str | None = None) -> Table:
    """A table without vertical rules, one space between columns: ten columns of figures fit in TABLE_WIDTH."""
    return Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, header_style="bold", title=title)


def add_column(table: Table, name: str) -> None:
    """Text columns left, figures right; the recipe wraps (whole words, never cut) past RECIPE_WIDTH."""
    if name == "recipe":
        table.add_column(name, max_width=RECIPE_WIDTH, overflow="fold")
    else:
        table.add_column(name, justify="left" if name in _TEXT else "right", no_wrap=True)


_TEXT = ("model", "recipe", "backend", "runtime", "status", "observer", "gran", "state", "health")


def varying(rows: list[dict[str, Any]]) -> set[str]:
    """The columns (backend, device, runtime) holding more than one value among ``rows``: those a table must show."""
    return {c for c in ("backend", "device", "runtime") if len({r.get(c) for r in rows if r.get(c) is not None}) > 1}


def fmt(value: Any, spec: str, suffix: str = "") -> str:
    """``value`` formatted by ``spec`` (and ``suffix``), ``-`` for None."""
    return "-" if value is None else f"{value:{spec}}{suffix}"


def short_bytes(n: float | int | None) -> str:
    """A size in at most six characters, binary units: ``330B``, ``4.2K``, ``11.1M``, ``1.25G`` (KiB, MiB, GiB)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M"):
        if abs(value) < 1000:
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.3g}{unit}"
        value /= 1024
    return f"{value:.3g}G"
