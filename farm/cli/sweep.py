"""``farm sweep ...``: plan, run, list and inspect sweeps."""

from __future__ import annotations

import contextlib
import getpass
import json
import socket
import sys
from collections.abc import Iterator
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from farm.cli import LazyGroup
from farm.cli.params import ID, POSITIVE_COUNT, PROCESSES
from farm.cli.render import cell, err, out


@click.group(
    cls=LazyGroup,
    lazy={
        "submit": "farm_sweep:submit",
        "cancel": "farm_sweep:cancel",
        "retry": "farm_sweep:retry",
        "resume": "farm_sweep:resume",
    },
)
def sweep() -> None:
    """Plan, run (here) or submit (to a farm), and operate sweeps."""


def open_db(*, read_only: bool = False, create: bool = True) -> Any:
    """The results database from FARM_DATABASE_URL (default: SQLite under FARM_HOME), schema checked.

    Args:
        read_only: for the read commands: the database is opened read-only and never changed, and one without
            QuantFarm's schema is refused with the command that makes it (``farm db upgrade``).
        create: create the schema in an empty database (``sweep run``, ``demo``, ``submit``); when False such a
            database is refused as for ``read_only``.
    """
    from farm.store.db import Database
    from farm.store.migrate import ensure_schema, require_schema

    if read_only or not create:
        # Checked on a read-only connection even when writes follow: connecting for writes may already change
        # a foreign SQLite file (it is switched to WAL).
        checked = Database(read_only=True)
        require_schema(checked)
        if read_only:
            return checked
        checked.dispose()
    db = Database()
    ensure_schema(db)  # at head already when create is False: nothing to create
    return db


def submitter() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name is not an error
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def load_plan(spec_path: str, force: bool, pools: Any = None) -> Any:
    from farm.settings import job_limit
    from farm.spec import load_spec, read_spec_text

    text = read_spec_text(spec_path)
    return load_spec(text, source=spec_path, limit=None if force else job_limit(), pools=pools)


def check_calibration_sizes(p: Any, source: str) -> None:
    """Where the engine is installed, refuse a calibration size past its dataset's calibration split.

    The check is ``farm quantize``'s (farm.zoo.data.check_calibration_size); without torch (a producer) the jobs
    find out on the workers.

    Raises:
        ConfigError: every calibration size too large for its dataset, each with the split's size.
    """
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return
    from farm.errors import ConfigError, Problem
    from farm.zoo.data import check_calibration_size, load_dataset

    sizes: dict[str, set[int]] = {}
    for j in p.jobs:
        n = j.columns()["calibration_size"]
        if n is not None:
            sizes.setdefault(j.spec.dataset, set()).add(n)
    problems = []
    for dataset, wanted in sizes.items():
        try:
            splits = load_dataset(dataset)
        except Exception:  # noqa: BLE001 - a dataset that does not load here (on the workers' disks) is their job
            continue
        for n in sorted(wanted):
            try:
                check_calibration_size(splits, n)
            except ConfigError as e:
                problems.append(Problem("calibration_size", str(e)))
    if problems:
        raise ConfigError(problems, source=source)


@sweep.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--force", is_flag=True, help="Allow a spec past the job limit (FARM_JOB_LIMIT, default 10,000).")
@click.option("--all", "show_all", is_flag=True, help="List every job, not the first 50.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(spec_path: str, force: bool, show_all: bool, as_json: bool) -> None:
    """Validate SPEC and show the jobs it expands to, without running anything."""
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
        click.echo(json.dumps(data, indent=2))
        return
    trials = len(p.jobs) - len(p.references)
    out.print(
        f"[bold]{escape(p.spec.name)}[/]: {len(p.jobs)} jobs ({len(p.references)} fp32 references, {trials} trials)"
    )
    for note in p.notes:
        out.print(f"  note: {escape(note)}")
    shown = p.jobs if show_all else p.jobs[:50]
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
        )
    out.print(table)
    if len(shown) < len(p.jobs):
        out.print(f"... and {len(p.jobs) - len(shown)} more (--all lists them)")


@sweep.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--jobs", "-j", type=PROCESSES, help="Jobs at once (default: cores / threads per job).")
@click.option("--force", is_flag=True, help="Allow a spec past the job limit (FARM_JOB_LIMIT, default 10,000).")
def run(spec_path: str, jobs: int | None, force: bool) -> None:
    """Run SPEC on this machine: SQLite and local artifacts unless FARM_* settings say otherwise.

    Jobs that already succeeded (in this or any sweep) are reused, not run again. Ctrl-C stops
    cleanly: unfinished jobs end as cancelled.
    """
    p = load_plan(spec_path, force)
    db, sweep_id, stats = run_plan(p, jobs)
    from farm.settings import Settings

    err.print(f"database:  {db.redacted_url}\nartifacts: {Settings.from_env().artifacts_url}")
    if stats.failed:
        sys.exit(1)


def run_plan(p: Any, jobs: int | None) -> tuple[Any, int, Any]:
    """Persist and run a plan on this machine, then print the results table. Exits 130 on Ctrl-C."""
    from farm.artifacts import check_store_url
    from farm.cli.progress import SweepProgress
    from farm.jobs.local import RunStats, default_jobs, reclaim_abandoned, run_local
    from farm.settings import Settings
    from farm.store import queries

    settings = Settings.from_env()
    check_store_url(settings.artifacts_url)  # before anything is written: every job would fail to upload
    db = open_db()
    with db.session() as s:
        record = queries.create_sweep(s, p, submitter())
    # Jobs a killed `farm sweep run` left queued or running go again.
    to_run_now = set(record.to_run)
    abandoned = reclaim_abandoned(db, [i for i in record.ids.values() if i not in to_run_now])
    to_run = record.to_run + abandoned
    if abandoned:
        err.print(f"{len(abandoned)} job(s) left unfinished by an earlier run that stopped will run again")
    threads = p.spec.benchmark.threads
    workers = jobs or default_jobs(threads)
    stats = RunStats(total=record.total, cached=record.cached)
    verb = "created" if record.created else "resumed"
    err.print(
        f"sweep {record.sweep_id} [bold]{escape(p.spec.name)}[/] {verb}: {record.total} jobs, {record.cached} cached, "
        f"{len(to_run)} to run on {workers} worker process(es) x {threads} thread(s)"
    )
    try:
        with _stop_on_termination(), SweepProgress(stats) as progress:
            run_local(
                db,
                record.sweep_id,
                to_run,
                artifacts_url=settings.artifacts_url,
                jobs=workers,
                threads=threads,
                on_update=progress.update,
                stats=stats,
            )
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted:[/] {stats.cancelled} job(s) cancelled, none left running")
        sys.exit(130)
    print_sweep_summary(db, record.sweep_id)
    return db, record.sweep_id, stats


@contextlib.contextmanager
def _stop_on_termination() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal) stop a local run the way Ctrl-C does: jobs end as cancelled."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP):  # a second one must not cut the cancellation short
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@sweep.command("list")
@click.option("--limit", type=POSITIVE_COUNT, default=50, show_default=True)
def list_sweeps(limit: int) -> None:
    """List sweeps, newest first, with their job counts."""
    from farm.store import queries

    db = open_db(read_only=True)
    with db.session() as s:
        rows = [
            (sw.id, sw.name, sw.state, sw.submitter, sw.created_at, counts)
            for sw, counts in queries.list_sweeps(s, limit)
        ]
    table = Table(show_edge=False, header_style="bold")
    for col in ("id", "name", "state", "jobs", "succeeded", "failed", "running", "submitter", "created"):
        table.add_column(col)
    for sweep_id, name, state, who, created, counts in rows:
        table.add_row(
            str(sweep_id),
            name,
            state,
            str(sum(counts.values())),
            str(counts.get("succeeded", 0)),
            str(counts.get("failed", 0)),
            str(counts.get("running", 0) + counts.get("queued", 0)),
            who or "-",
            f"{created:%Y-%m-%d %H:%M}",
        )
    out.print(table)


@sweep.command()
@click.argument("sweep_id", type=ID)
@click.option("--watch", is_flag=True, help="A live progress bar until the sweep ends.")
def status(sweep_id: int, watch: bool) -> None:
    """Show a sweep's progress and its failed jobs."""
    db = open_db(read_only=not watch, create=False)  # --watch settles the sweep's state as it goes
    patience = outage_patience() if watch else None
    if watch:
        state = watch_sweep(db, sweep_id, patience=patience)
        err.print(f"sweep {sweep_id}: {state}")
    print_status(db, sweep_id, patience=patience)


def outage_patience() -> Any:
    """How ``--wait`` and ``sweep status --watch`` ride out a database outage: one line on stderr when it starts and
    one when it ends, reconnecting with backoff meanwhile; after FARM_WAIT_RETRY_S (10 min) one line and exit 2.
    The sweep goes on without the watcher, whose exit status would otherwise lie about it."""
    from farm.outage import Patience
    from farm.settings import FarmSettings

    def waiting(e: Exception, retry_s: float) -> None:
        err.print(f"database unreachable, retrying… (for up to {retry_s:g} s, FARM_WAIT_RETRY_S): {escape(str(e))}")

    def back() -> None:
        err.print("database reachable again")

    return Patience(FarmSettings.from_env().wait_retry_s, setting="FARM_WAIT_RETRY_S", on_wait=waiting, on_back=back)


def print_status(db: Any, sweep_id: int, patience: Any = None) -> None:
    from farm.store import queries

    def read() -> tuple[Any, ...]:
        with db.session(write=False) as s:
            sw = queries.get_sweep(s, sweep_id)
            counts = queries.sweep_counts(s, sweep_id)
            failed = [(j.id, j.method, j.model, j.error) for j in sw.jobs if j.state == "failed"]
            return sw.name, sw.state, counts, failed

    name, state, counts, failed = patience.call(read) if patience is not None else read()
    total = sum(counts.values())
    order = ("succeeded", "failed", "running", "queued", "pending", "cancelled")
    parts = ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))
    out.print(f"sweep {sweep_id} [bold]{escape(name)}[/]: {state}; {total} jobs: {parts or 'none'}")
    for job_id, method, model, error in failed[:20]:
        out.print(f"  [red]failed[/] job {job_id} {escape(method)} {escape(model)}: {escape(error or '')}")


def watch_sweep(db: Any, sweep_id: int, poll_s: float = 1.0, patience: Any = None) -> str:
    """Show live progress read from the database until the sweep is no longer running; returns its state.

    A database outage meanwhile is ridden out (``patience``, default :func:`outage_patience`).

    Raises:
        StoreUnavailable: the database stayed unreachable past FARM_WAIT_RETRY_S.
    """
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from farm.cli.render import interactive
    from farm.store import queries

    patience = patience if patience is not None else outage_patience()

    def poll() -> tuple[str, dict[str, int]]:
        with db.session() as s:
            return queries.refresh_sweep_state(s, sweep_id), queries.sweep_counts(s, sweep_id)

    with Progress(
        TextColumn(f"[bold]sweep {sweep_id}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=err,
        disable=not interactive(),
    ) as progress:
        task = progress.add_task("watch", total=1, detail="")
        while True:
            state, counts = patience.call(poll)
            done = sum(counts.get(k, 0) for k in ("succeeded", "failed", "cancelled"))
            active = ", ".join(f"{counts[k]} {k}" for k in ("running", "queued", "pending") if counts.get(k))
            failed = f"[red]{counts['failed']} failed[/] " if counts.get("failed") else ""
            progress.update(task, total=max(sum(counts.values()), 1), completed=done, detail=f"{failed}{active}")
            if state != "running":
                return state
            time.sleep(poll_s)


def print_sweep_summary(db: Any, sweep_id: int) -> None:
    """The results table at the end of a run: one row per job, latency per batch size side by side."""
    from farm.store.results import fetch_results

    with db.session() as s:
        rows = fetch_results(s, sweep_ids=[sweep_id])
    by_job: dict[int, dict[str, Any]] = {}
    batches: list[int] = sorted({r["batch_size"] for r in rows if r["batch_size"] is not None})
    for r in rows:
        job = by_job.setdefault(r["job_id"], {**r, "lat": {}, "spd": {}})
        if r["batch_size"] is not None:
            job["lat"][r["batch_size"]] = r["latency_p50_ms"]
            job["spd"][r["batch_size"]] = r["speedup"]
    table = Table(show_edge=False, header_style="bold", title=f"sweep {sweep_id}")
    cols = [
        "model",
        "method",
        "bits",
        "cal",
        "observer",
        "gran",
        "accuracy",
        "drop",
        "sqnr dB",
        "size ratio",
        "coverage",
    ]
    cols += [f"p50 ms b{b}" for b in batches] + ([f"speedup b{batches[-1]}"] if batches else []) + ["state"]
    for c in cols:
        table.add_column(c, justify="right" if c not in ("model", "method", "observer", "gran", "state") else "left")
    for job in sorted(
        by_job.values(), key=lambda j: (j["model"], j["method"], j["bits"] or 0, j["calibration_size"] or 0)
    ):
        sim = " (sim)" if job["simulated"] else ""
        row = [
            job["model"],
            job["method"] + sim,
            cell(job["bits"]),
            cell(job["calibration_size"]),
            cell(job["observer"]),
            cell(job["granularity"]),
            _fmt(job["accuracy"], ".4f"),
            _fmt(job["accuracy_drop"], "+.4f"),
            _fmt(job["sqnr_db"], ".1f"),
            _fmt(job["size_ratio"], ".3f"),
            _fmt(job["coverage"], ".1%"),
        ]
        row += [_fmt(job["lat"].get(b), ".3f") for b in batches]
        if batches:
            row.append(_fmt(job["spd"].get(batches[-1]), ".2f", "x"))
        state = job["state"]
        row.append(f"[red]{state}[/]" if state == "failed" else state)
        table.add_row(*row)
    out.print(table)
    failures = [j for j in by_job.values() if j["state"] == "failed"]
    for j in failures[:10]:
        out.print(
            f"[red]failed[/] job {j['job_id']} ({escape(j['method'])}, {escape(j['model'])}): "
            f"{escape(j['error'] or '')}"
        )


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"
