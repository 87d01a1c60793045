"""``farm sweep ...``: plan, run (here) or submit (to a farm), list, inspect and operate sweeps.

Each command parses, calls one operation (farm.jobs.sweeps) or read (farm.store.sweeps), and renders. The farm
commands (submit, cancel, retry, resume) import neither torch nor the engine: they run from a laptop with the
base install.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from farm.cli import LazyGroup
from farm.cli.output import json_text
from farm.cli.params import ID, POSITIVE_COUNT, PROCESSES, QUEUE
from farm.cli.render import cell, err, out


@click.group(cls=LazyGroup)
def sweep() -> None:
    """Plan, run (here) or submit (to a farm), and operate sweeps."""


@sweep.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--force", is_flag=True, help="Allow a spec past the job limit (FARM_JOB_LIMIT, default 10,000).")
@click.option("--all", "show_all", is_flag=True, help="List every job, not the first 50.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(spec_path: str, force: bool, show_all: bool, as_json: bool) -> None:
    """Validate SPEC and show the jobs it expands to, without running anything."""
    from farm.jobs.sweeps import check_calibration_sizes, load_plan

    p = load_plan(spec_path, force)
    check_calibration_sizes(p, spec_path)
    if as_json:
        data = {
            "name": p.spec.name,
            "jobs": len(p.jobs),
            "references": len(p.references),
            "notes": p.notes,
            "job_table": [{"key": j.key, "role": j.role, **j.columns(), "config": j.method.to_dict()} for j in p.jobs],
        }
        click.echo(json_text(data))
        return
    trials = sum(1 for j in p.jobs if j.role == "trial")
    stages = len(p.jobs) - len(p.references) - trials  # no quantization: they add jobs from others' results
    kinds = f"{len(p.references)} fp32 references, {trials} trials" + (f", {stages} stage(s)" if stages else "")
    out.print(f"[bold]{escape(p.spec.name)}[/]: {len(p.jobs)} jobs ({kinds})")
    for note in p.notes:
        out.print(f"  note: {escape(note)}")
    shown = p.jobs if show_all else p.jobs[:50]
    runtimes = len({j.columns()["runtime"] for j in p.jobs}) > 1  # a column only where it varies
    table = Table(show_edge=False, header_style="bold")
    for col in (
        "key",
        "role",
        "model",
        "dataset",
        "method",
        "bits",
        "cal",
        "observer",
        "granularity",
        "backend",
        "device",
        *(("runtime",) if runtimes else ()),
    ):
        table.add_column(col)
    for j in shown:
        c = j.columns()
        table.add_row(
            j.key[:10],
            j.role,
            c["model"],
            c["dataset"],
            j.method.label() if j.method.method in ("qat",) else c["method"],
            cell(c["bits"]),
            cell(c["calibration_size"]),
            cell(c["observer"]),
            cell(c["granularity"]),
            cell(c["backend"]),
            c["device"],
            *((c["runtime"],) if runtimes else ()),
        )
    out.print(table)
    if len(shown) < len(p.jobs):
        out.print(f"... and {len(p.jobs) - len(shown)} more (--all lists them)")


@sweep.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--jobs", "-j", type=PROCESSES, help="Jobs at once (default: cores / threads per job).")
@click.option("--force", is_flag=True, help="Allow a spec past the job limit (FARM_JOB_LIMIT, default 10,000).")
@click.option("--wide", is_flag=True, help="The results table with every column, not the 100-column summary.")
def run(spec_path: str, jobs: int | None, force: bool, wide: bool) -> None:
    """Run SPEC on this machine: SQLite and local artifacts unless FARM_* settings say otherwise.

    Jobs that already succeeded (in this or any sweep) are reused, not run again. Ctrl-C stops
    cleanly: unfinished jobs end as cancelled.
    """
    from farm.cli.local_run import run_plan
    from farm.jobs.sweeps import load_plan
    from farm.spec.load import check_runs_here

    p = load_plan(spec_path, force)
    check_runs_here(p, source=spec_path)
    db, sweep_id, stats = run_plan(p, jobs, wide=wide)
    from farm.settings import Settings

    err.print(f"database:  {db.redacted_url}\nartifacts: {Settings.from_env().artifacts_url}")
    from farm.jobs.tune_answer import settings_from_text

    settings = settings_from_text(p.text)
    if settings is not None:  # a tune's spec: its answer (exit 1 where it misses its target), as `farm tune` ends
        from farm.cli.tune_views import finish
        from farm.jobs.tune_answer import answer_of
        from farm.store.expansion import sweep_head, sweep_jobs

        result = answer_of(sweep_jobs(db, sweep_id), settings, sweep_head(db, sweep_id).state)
        finish(sweep_id, result, settings, False, None)
        return
    if stats.failed:
        sys.exit(1)


@sweep.command("list")
@click.option("--limit", type=POSITIVE_COUNT, default=50, show_default=True)
def list_sweeps(limit: int) -> None:
    """List sweeps, newest first, with their job counts."""
    from farm.store import sweeps
    from farm.store.migrate import open_database

    rows = sweeps.list_sweeps(open_database(read_only=True), limit)
    table = Table(show_edge=False, header_style="bold")
    for col in ("id", "name", "state", "jobs", "succeeded", "failed", "running", "submitter", "created"):
        table.add_column(col)
    for row in rows:
        counts = row.counts
        table.add_row(
            str(row.id),
            row.name,
            row.state,
            str(sum(counts.values())),
            str(counts.get("succeeded", 0)),
            str(counts.get("failed", 0)),
            str(counts.get("running", 0) + counts.get("queued", 0)),
            row.submitter or "-",
            f"{row.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)


@sweep.command()
@click.argument("sweep_id", type=ID)
@click.option("--watch", is_flag=True, help="A live progress bar until the sweep ends.")
def status(sweep_id: int, watch: bool) -> None:
    """Show a sweep's progress and its failed jobs."""
    from farm.cli.sweep_views import outage_patience, print_status, watch_sweep
    from farm.store.migrate import open_database

    db = open_database(read_only=not watch, create=False)  # --watch settles the sweep's state as it goes
    patience = outage_patience() if watch else None
    if watch:
        state = watch_sweep(db, sweep_id, patience=patience)
        err.print(f"sweep {sweep_id}: {state}")
    print_status(db, sweep_id, patience=patience)


@sweep.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--wait", is_flag=True, help="Show live progress; exit 0 if every job succeeded, 1 otherwise.")
@click.option("--force", is_flag=True, help="Allow a spec past the job limit (FARM_JOB_LIMIT, default 10,000).")
@click.option(
    "--cpu-queue", type=QUEUE, default="cpu", show_default=True, help="Queue (pool) for CPU jobs, e.g. cpu-avx512."
)
@click.option("--gpu-queue", type=QUEUE, default="gpu", show_default=True, help="Queue (pool) for GPU jobs.")
def submit(spec_path: str, wait: bool, force: bool, cpu_queue: str, gpu_queue: str) -> None:
    """Create the sweep in the database and send its runnable jobs to the broker; print the sweep ID.

    fp32 references go first; the jobs that compare with one are sent when it succeeds. Jobs that already
    succeeded (in any sweep) are reused. A broker that can't be reached leaves no sweep behind.
    """
    from farm.cli.sweep_views import outage_patience, print_status, watch_sweep
    from farm.jobs import sweeps
    from farm.routing import Pools
    from farm.store.migrate import open_database

    pools = Pools(cpu=cpu_queue, gpu=gpu_queue)
    plan = sweeps.load_plan(spec_path, force, pools)
    broker = _checked_broker()  # before the database: an unreachable broker leaves nothing behind
    db = open_database()
    done = sweeps.submit(db, broker, plan, pools)
    # A stage waits for the jobs whose results it reads, not for a reference.
    waited_for = "the jobs they depend on" if any(j.role == "stage" for j in plan.jobs) else "their fp32 reference"
    err.print(
        f"sweep {done.sweep_id} [bold]{escape(done.name)}[/] submitted: {done.total} jobs, "
        f"{done.cached} cached, {done.sent} sent, {done.waiting} waiting for {waited_for}"
    )
    click.echo(done.sweep_id)
    if wait:
        patience = outage_patience()  # a database outage meanwhile: said once, ridden out (FARM_WAIT_RETRY_S)
        state = watch_sweep(db, done.sweep_id, patience=patience)
        print_status(db, done.sweep_id, patience=patience)
        sys.exit(0 if state == "succeeded" else 1)


@sweep.command()
@click.argument("sweep_id", type=ID)
def cancel(sweep_id: int) -> None:
    """Cancel a sweep: queued jobs never start, running ones stop at their next check."""
    from farm.jobs import sweeps
    from farm.store.migrate import open_database

    n = sweeps.cancel(open_database(create=False), sweep_id)
    out.print(f"sweep {sweep_id}: {n} job(s) cancelled")


@sweep.command()
@click.argument("sweep_id", type=ID)
@click.option("--failed-only", is_flag=True, help="Retry failed jobs only, not cancelled ones.")
def retry(sweep_id: int, failed_only: bool) -> None:
    """Run a sweep's failed (and cancelled) jobs again, with a fresh attempt budget."""
    from farm.jobs import sweeps
    from farm.store.migrate import open_database

    broker = _checked_broker()
    r = sweeps.retry(open_database(create=False), broker, sweep_id, failed_only=failed_only)
    out.print(
        f"sweep {sweep_id}: {r.to_retry} job(s) to retry, {r.sent} sent, {r.waiting} waiting for their reference"
        + (f", {r.ended} ended again with their reference" if r.ended else "")
    )


@sweep.command()
@click.argument("sweep_id", type=ID)
def resume(sweep_id: int) -> None:
    """Re-send a sweep's jobs whose messages were lost (a broker restart, a worker killed with its host)."""
    from farm.jobs import sweeps
    from farm.store.migrate import open_database

    broker = _checked_broker()
    r = sweeps.resume(open_database(create=False), broker, sweep_id)
    out.print(
        f"sweep {sweep_id}: {r.sent} message(s) sent ({r.queued} queued job(s), {r.released} released), "
        f"{r.requeued} expired job(s) re-queued, {r.failed} failed after too many attempts"
    )


def _checked_broker() -> Any:
    """The farm's broker (FARM_BROKER_URL), checked to answer.

    Raises:
        ConfigError: a transport the farm does not run on.
        BrokerUnavailable: the broker does not answer.
    """
    from workers.broker import CeleryBroker

    broker = CeleryBroker()
    broker.check()
    return broker
