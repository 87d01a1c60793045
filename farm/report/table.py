"""The results table (every row of the sweep, sortable and filterable in the page) and the failed-jobs table.

Cells show formatted numbers; ``data-v`` holds the value the page's script sorts by (blank sorts last), and
sizes carry their exact byte count in a ``title``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from farm.report.fmt import MISSING, esc, fixed, human_bytes, percent, sig, sort_key


@dataclass(frozen=True)
class Column:
    """A results-table column: the view's column, its header, how a value is shown, and whether it is numeric."""

    name: str
    header: str
    show: Callable[[Any], str]
    numeric: bool = True
    title: str = ""


def _text(value: Any) -> str:
    return MISSING if value is None or value == "" else str(value)


def _integer(value: Any) -> str:
    return MISSING if value is None else str(value)


def _yes(value: Any) -> str:
    return MISSING if value is None else ("yes" if value else "no")


def _times(value: Any) -> str:
    return MISSING if value is None else f"{sig(value)}×"


COLUMNS = (
    Column("job_id", "job", _integer),
    Column("model", "model", _text, numeric=False),
    Column("dataset", "dataset", _text, numeric=False),
    Column("method", "method", _text, numeric=False),
    Column("recipe", "recipe", _text, numeric=False, title="the method and every non-default parameter"),
    Column("bits", "bits", _integer),
    Column("calibration_size", "calib.", _integer, title="calibration samples"),
    Column("observer", "observer", _text, numeric=False),
    Column("granularity", "granularity", _text, numeric=False),
    Column("backend", "backend", _text, numeric=False),
    Column("device", "device", _text, numeric=False),
    Column("batch_size", "batch", _integer),
    Column("state", "state", _text, numeric=False),
    Column("health", "health", _text, numeric=False, title="ok, degenerate_reference, collapsed or nan"),
    Column("accuracy", "accuracy", fixed, title="top-1 accuracy, fraction"),
    Column("accuracy_drop", "drop", lambda v: fixed(v, signed=True), title="fp32 accuracy minus this accuracy"),
    Column("agreement", "agreement", fixed, title="fraction of top-1 classes equal to fp32's"),
    Column("sqnr_db", "SQNR dB", lambda v: fixed(v, 1), title="output signal-to-quantization-noise ratio, dB"),
    Column("size_bytes", "size", human_bytes, title="serialized model size"),
    Column("size_ratio", "size ratio", lambda v: fixed(v, 3), title="size / fp32 size"),
    Column("latency_p50_ms", "p50 ms", sig, title="median latency per call, ms"),
    Column("latency_p90_ms", "p90 ms", sig),
    Column("latency_p99_ms", "p99 ms", sig),
    Column("throughput", "samples/s", sig, title="samples per second at the median latency"),
    Column("speedup", "speedup", _times, title="fp32 p50 latency / this p50 latency, same machine and batch size"),
    Column("coverage", "coverage", percent, title="fraction of parameters quantized"),
    Column("simulated", "simulated", _yes, numeric=False, title="fake quantization: latency not meaningful"),
    Column("hardware", "hardware", _text, numeric=False),
    Column("duration_s", "run s", sig, title="wall time of the job, seconds"),
)
#: Shown only when the sweep has more than one value in them.
_OPTIONAL = {"dataset", "device", "health"}


def results_table(rows: Sequence[dict[str, Any]]) -> str:
    """Every row as an HTML table that the page's script can sort (click a header) and filter.

    Args:
        rows: the sweep's rows of results_flat.

    Returns:
        The markup: a filter box, a row count and the table.
    """
    columns = [c for c in COLUMNS if c.name not in _OPTIONAL or len({r.get(c.name) for r in rows}) > 1]
    head = "".join(
        f'<th scope="col" data-col="{c.name}" aria-sort="none"{_attr("title", c.title)}'
        f'{"" if c.numeric else " class=t"}><button type="button">{esc(c.header)}</button></th>'
        for c in columns
    )
    body = "\n".join(f"<tr>{''.join(_cell(c, r.get(c.name)) for c in columns)}</tr>" for r in rows)
    return (
        '<div class="filter"><label for="results-filter">Filter</label> '
        '<input id="results-filter" type="search" placeholder="words that a row must contain, e.g. static int8" '
        'autocomplete="off"> '
        f'<span id="results-count" aria-live="polite">{len(rows)} rows</span></div>\n'
        '<div class="table-wrap"><table id="results-table" class="results">\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>"
    )


def failed_table(rows: Sequence[dict[str, Any]]) -> str:
    """The sweep's failed and cancelled jobs with their errors, or a line saying there are none.

    Args:
        rows: the sweep's rows of results_flat.

    Returns:
        The markup.
    """
    seen: set[Any] = set()
    failed = []
    for r in rows:
        if r["state"] in ("failed", "cancelled") and r["job_id"] not in seen:
            seen.add(r["job_id"])
            failed.append(r)
    if not failed:
        return '<p class="empty">none: no job failed or was cancelled.</p>'
    lines = []
    for r in failed:
        config = " · ".join(
            str(v) for v in (r["method"], _bits_text(r), r.get("observer"), _cal_text(r)) if v not in (None, "")
        )
        lines.append(
            f"<tr><td>{r['job_id']}</td><td>{esc(r['state'])}</td><td class=t>{esc(r['model'])}</td>"
            f"<td class=t>{esc(config)}</td><td class=t>{esc(_text(r.get('worker')))}</td>"
            f'<td class="t error">{esc(r.get("error") or "(no error recorded)")}</td></tr>'
        )
    return (
        f"<p>{len(failed)} job(s) did not succeed.</p>\n"
        '<div class="table-wrap"><table class="failed"><thead><tr><th scope="col">job</th><th scope="col">state</th>'
        '<th scope="col">model</th><th scope="col">configuration</th><th scope="col">worker</th>'
        '<th scope="col">error</th></tr></thead>\n<tbody>\n' + "\n".join(lines) + "\n</tbody></table></div>"
    )


def _cell(column: Column, value: Any) -> str:
    shown = column.show(value)
    attrs = ""
    if column.numeric:
        key = sort_key(value)
        if key != shown:
            attrs += f' data-v="{key}"'
    else:
        attrs += " class=t" + (' data-v=""' if value is None or value == "" else "")
    if column.name == "size_bytes" and value is not None:
        attrs += f' title="{value:,} bytes"'
    return f"<td{attrs}>{esc(shown)}</td>"


def _attr(name: str, value: str) -> str:
    return f' {name}="{esc(value)}"' if value else ""


def _bits_text(r: dict[str, Any]) -> str:
    return f"int{r['bits']}" if r.get("bits") is not None else ""


def _cal_text(r: dict[str, Any]) -> str:
    return f"cal {r['calibration_size']}" if r.get("calibration_size") is not None else ""
