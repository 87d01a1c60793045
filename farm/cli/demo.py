"""``farm demo``: the built-in sweep, its results table and plots."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from farm.cli.params import PROCESSES
from farm.cli.render import out


@click.command()
@click.option("--jobs", "-j", type=PROCESSES, help="Jobs at once (default: one per core).")
@click.option(
    "--plots", "plots_dir", type=click.Path(file_okay=False), help="Where to write the PNGs. [FARM_HOME/demo]"
)
def demo(jobs: int | None, plots_dir: str | None) -> None:
    """Run the built-in demo sweep on farm:digits-cnn and plot accuracy against size and latency."""
    from farm.cli.local_run import run_plan
    from farm.demo import DEMO_SPEC
    from farm.plots import tradeoff_plots
    from farm.settings import Settings, farm_home
    from farm.spec.load import load_spec
    from farm.store.results import sweep_rows

    plan = load_spec(DEMO_SPEC, source="demo")
    db, sweep_id, stats = run_plan(plan, jobs)
    rows = sweep_rows(db, sweep_id)
    directory = Path(plots_dir) if plots_dir else farm_home() / "demo"
    paths = tradeoff_plots(rows, directory)
    settings = Settings.from_env()
    out.print()
    out.print(f"results:   {escape(db.redacted_url)} (view results_flat; `farm results query --sweep {sweep_id}`)")
    out.print(f"artifacts: {escape(settings.artifacts_url)}")
    for p in paths:
        out.print(f"plot:      {escape(str(p))}")
    if stats.failed:
        raise SystemExit(1)
