"""``farm report``: a sweep's results as one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

import click

from farm.cli.params import ID


@click.command()
@click.argument("sweep_id", metavar="SWEEP_ID", type=ID)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    help="The HTML file to write (replaced if it exists). [report-SWEEP_ID.html]",
)
def report(sweep_id: int, output: Path | None) -> None:
    """Write the HTML report of sweep SWEEP_ID: summary, trade-off charts, sortable results, failures, hardware.

    The page is self-contained (no network needed to open it). Prints the path written.
    """
    from farm.report.svg import require_matplotlib
    from farm.report.writer import check_output, write_report
    from farm.store.migrate import open_database

    require_matplotlib()
    path = check_output(output or Path(f"report-{sweep_id}.html"))  # before the database: nothing done on a bad path
    db = open_database(read_only=True)
    try:
        written = write_report(db, sweep_id, path)
    finally:
        db.dispose()
    click.echo(str(written))
