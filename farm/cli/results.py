"""``farm results ...``: read the results view."""

from __future__ import annotations

import click

from farm.cli import LazyGroup
from farm.cli.output import FORMATS
from farm.cli.params import COUNT, ID


@click.group(
    cls=LazyGroup,
    lazy={"pareto": "analyze:pareto", "best": "analyze:best", "compare": "analyze:compare"},
)
def results() -> None:
    """Query results (the view results_flat)."""


@results.command()
@click.option("--sweep", "sweep_ids", type=ID, multiple=True, help="Only these sweeps (repeatable).")
@click.option("--tune", "tune_ids", type=ID, multiple=True, help="Only these tunes (a tune is a sweep: --sweep ID).")
@click.option(
    "--where",
    metavar="EXPR",
    help="Filter, e.g. \"method = 'static' AND accuracy_drop < 0.01 AND bits IN (8, 4)\" (docs/query.md).",
)
@click.option(
    "--order-by",
    "order_by",
    metavar="'COL [asc|desc]'",
    multiple=True,
    help="Sort key (repeatable; NULLs last). Then sweep_id, job_id, batch_size.",
)
@click.option(
    "--columns",
    metavar="A,B,...",
    help="Comma-separated columns to show (default: all; a table shows a 100-column summary unless --wide).",
)
@click.option("--wide", is_flag=True, help="Table: every column of results_flat, not the 100-column summary.")
@click.option("--limit", type=COUNT, help="At most this many rows.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
def query(
    sweep_ids: tuple[int, ...],
    tune_ids: tuple[int, ...],
    where: str | None,
    order_by: tuple[str, ...],
    columns: str | None,
    wide: bool,
    limit: int | None,
    fmt: str,
    output: str | None,
) -> None:
    """Rows of results_flat: one per sweep, job and batch size.

    As a table without --columns: job, model (long names shortened through a legend), recipe, the backend where it
    varies, batch, accuracy, drop, p50 ± its 95 % interval, speedup, size, and health or state where one is off.
    """
    from farm.cli.output import check_output, write_compact, write_rows
    from farm.store.migrate import open_database
    from farm.store.results import ResultsQuery, query

    # Every check that needs no database comes first: bad input never opens it, nor writes a file.
    q = ResultsQuery.parse(
        sweep=(*sweep_ids, *tune_ids), where=where, order_by=order_by, columns=columns, limit=limit, cli=True
    )
    check_output(fmt, output)
    rows = query(open_database(read_only=True), q)
    if fmt == "table" and columns is None and not wide:
        write_compact(rows, output)
        return
    write_rows(rows, q.columns, fmt, output)
