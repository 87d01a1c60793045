"""Writing result rows as a table, CSV, JSON or Parquet."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from farm.cli.render import cell, out
from farm.errors import ConfigError

FORMATS = ("table", "csv", "json", "parquet")
#: The formats that can go to stdout (parquet needs a file).
TEXT_FORMATS = ("table", "csv", "json")


def check_output(fmt: str, output: str | None) -> None:
    """Fail before any work if ``fmt`` can't be written to ``output`` on this machine.

    Parquet needs pandas and pyarrow (tried by importing them) and a file (``--output``); a file needs an
    existing directory.

    Raises:
        ConfigError: one line saying what is missing.
    """
    if fmt == "parquet":
        from farm.frames import require

        require("pandas", "pyarrow", what="--format parquet")
        if output is None:
            raise ConfigError("--format parquet writes a file: add --output FILE")
    if output is not None:
        parent = Path(output).parent
        if not parent.is_dir():
            raise ConfigError(f"--output {output}: directory {parent} does not exist")


def write_rows(rows: list[dict[str, Any]], columns: Sequence[str], fmt: str, output: str | None = None) -> None:
    """Print (or write to ``output``) ``rows`` restricted to ``columns`` in ``fmt``.

    A file is written whole or not at all (a temporary file renamed into place). JSON is an array of objects
    keyed by column name, date-times as ISO 8601 strings; CSV has a header row of column names and empty
    cells for NULL; a table written to a file is plain text.

    Raises:
        ConfigError: the output file can't be written, or parquet is asked for without ``output``.
    """
    if fmt == "table" and output is None:
        out.print(_table(rows, columns))
        return
    if fmt == "parquet":
        if output is None:
            raise ConfigError("--format parquet writes a file: add --output FILE")
        _write_parquet(rows, columns, output)
        return
    if fmt == "json":
        text = json.dumps([{c: _plain(r.get(c)) for c in columns} for r in rows], indent=2) + "\n"
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow(["" if _plain(r.get(c)) is None else _plain(r.get(c)) for c in columns])
        text = buf.getvalue()
    else:  # a table into a file: plain text
        buf = io.StringIO()
        from rich.console import Console

        Console(file=buf, width=200).print(_table(rows, columns))
        text = buf.getvalue()
    if output is None:
        out.file.write(text)
        return
    _write_file(output, lambda path: path.write_text(text, encoding="utf-8"))


def write_compact(rows: list[dict[str, Any]], output: str | None = None) -> None:
    """The default results table (farm.cli.compact): fits 100 columns; to stdout, or as plain text to ``output``.

    Raises:
        ConfigError: the output file can't be written.
    """
    from rich.console import Console

    from farm.cli.compact import TABLE_WIDTH, compact_table

    table, notes = compact_table(rows)
    if output is None:
        out.print(table)
        for line in notes:
            out.print(line, markup=False)
        return
    buf = io.StringIO()
    console = Console(file=buf, width=TABLE_WIDTH)
    console.print(table)
    for line in notes:
        console.print(line, markup=False)
    text = buf.getvalue()
    _write_file(output, lambda path: path.write_text(text, encoding="utf-8"))


def _write_parquet(rows: list[dict[str, Any]], columns: Sequence[str], output: str) -> None:
    from farm.frames import results_frame

    frame = results_frame(rows, columns)
    _write_file(output, lambda path: frame.to_parquet(path, index=False))


def _write_file(output: str, write: Callable[[Path], object]) -> None:
    # Written beside the target under a temporary name (with the usual permissions, unlike mkstemp's 0600),
    # then renamed: a failure leaves no half-written file.
    target = Path(output)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    except OSError as e:
        raise ConfigError(f"--output {output} can't be written: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> Table:
    table = Table(show_edge=False, header_style="bold")
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*(cell(r.get(c)) for c in columns))
    return table


def json_text(data: Any) -> str:
    """``data`` as indented JSON that any parser reads: NaN and Infinity (an fp32 reference's SQNR against itself)
    become null, as :func:`show_rows` writes them; anything else not JSON-native is written as its text."""

    def finite(value: Any) -> Any:
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(data), indent=2, allow_nan=False, default=str)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or Infinity
    return value
