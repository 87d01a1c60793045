"""``farm worker`` and ``farm workers``: serve queues on this machine, and list who serves them."""

from __future__ import annotations

import click
from rich.table import Table

from farm.cli.params import PROCESSES
from farm.cli.render import out


@click.command()
@click.option(
    "--queues", "-Q", default="cpu", show_default=True, help="Comma-separated queues: cpu, gpu, cpu-avx512, ..."
)
@click.option("--concurrency", "-c", type=PROCESSES, help="CPU pool processes (default: cores / threads).")
@click.option("--gpus", help="Comma-separated GPU indices for the gpu queues (default: all).")
@click.option("--threads", type=PROCESSES, default=1, show_default=True, help="torch threads per process.")
@click.option("--loglevel", default="info", show_default=True)
@click.option("--dry-run", is_flag=True, help="Print what would run and exit.")
def worker(queues: str, concurrency: int | None, gpus: str | None, threads: int, loglevel: str, dry_run: bool) -> None:
    """Run jobs from the broker on this machine (FARM_BROKER_URL, FARM_DATABASE_URL, FARM_ARTIFACTS_URL).

    One Celery worker serves the CPU queues with --concurrency processes; each GPU gets its own worker
    process with CUDA_VISIBLE_DEVICES set. A queue this machine can't serve (gpu without CUDA, cpu-avx512
    without AVX-512) is refused.
    """
    from workers.runtime import prepare, serve

    children = prepare(queues, concurrency=concurrency, gpus=gpus, threads=threads, loglevel=loglevel)
    for child in children:
        gpu = child.env.get("CUDA_VISIBLE_DEVICES") or "none"
        served = ",".join(child.runtimes) or "none"
        click.echo(
            f"{child.name}: queues {','.join(child.queues)}, {child.concurrency} process(es), GPU {gpu}, "
            f"runtimes {served}",
            err=True,
        )
    if dry_run:
        return
    raise SystemExit(serve(children, loglevel))


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Include workers that stopped or died.")
def workers(show_all: bool) -> None:
    """List workers: queues, what they run now, and whether they are alive."""
    from farm.settings import FarmSettings
    from farm.store.fleet import list_workers
    from farm.store.migrate import open_database

    farm = FarmSettings.from_env()
    now, rows = list_workers(open_database(read_only=True))
    table = Table(show_edge=False, header_style="bold")
    for col in ("name", "host", "queues", "state", "job", "last heartbeat", "alive"):
        table.add_column(col)
    shown = 0
    for w in rows:
        age = (now - w.last_heartbeat).total_seconds()
        alive = w.state != "stopped" and age <= 3 * farm.heartbeat_s
        if not alive and not show_all:
            continue
        shown += 1
        table.add_row(
            w.name,
            w.hostname,
            ",".join(w.queues),
            w.state if alive else ("stopped" if w.state == "stopped" else "dead"),
            str(w.current_job_id or "-"),
            f"{age:.0f}s ago",
            "[green]yes[/]" if alive else "[red]no[/]",
        )
    out.print(table)
    if not shown:
        out.print("no live workers" + ("" if show_all else " (--all shows stopped and dead ones)"))
