"""A sweep run on this machine, shown live: what ``farm sweep run`` and ``farm demo`` print around a local run.

The run itself (persist, schedule, the process pool) is farm.jobs.sweeps'; this module prints its start, a
progress bar, its end, and turns SIGTERM / SIGHUP into the Ctrl-C that cancels it cleanly.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from rich.markup import escape

from farm.cli.render import err


def run_plan(p: Any, jobs: int | None, *, wide: bool = False) -> tuple[Any, int, Any]:
    """Persist and run a plan on this machine, then print the results table (every column when ``wide``). Exits
    130 on Ctrl-C.

    Returns:
        (the database, the sweep id, the run's RunStats).
    """
    with started_workers(p, jobs) as (artifacts, starter):
        return _run_started(p, jobs, artifacts, starter, wide)


@contextlib.contextmanager
def started_workers(plan: Any, jobs: int | None) -> Iterator[tuple[str, Any]]:
    """The artifact store (checked before anything is written: every job would fail to upload) and the run's worker
    processes, started now to import the engine while this process opens the database and writes the run
    (farm.jobs.local_workers.start_workers); closed at the end. Meanwhile a closed terminal or SIGTERM stops the run
    as Ctrl-C does, the worker processes included."""
    from farm.jobs.local_workers import artifacts_url, start_workers

    artifacts = artifacts_url()
    with stop_on_termination():
        starter = start_workers(plan, jobs, artifacts)
        try:
            yield artifacts, starter
        finally:
            starter.close()


def _run_started(p: Any, jobs: int | None, artifacts_url: str, starter: Any, wide: bool) -> tuple[Any, int, Any]:
    from farm.cli.progress import SweepProgress
    from farm.cli.sweep_views import print_sweep_summary
    from farm.jobs import sweeps
    from farm.store.migrate import open_database

    db = open_database()
    run = sweeps.start_local_run(db, p, jobs, artifacts_url)
    # Jobs a killed `farm sweep run` left queued or running go again.
    if run.abandoned:
        err.print(f"{run.abandoned} job(s) left unfinished by an earlier run that stopped will run again")
    verb = "created" if run.created else "resumed"
    stages = sum(1 for j in p.jobs if j.role == "stage")
    # A stage job runs no quantization: it adds jobs (and the run's totals grow) once its inputs finish.
    staged = f" ({stages} of them stage(s) that add jobs as they end)" if stages else ""
    err.print(
        f"sweep {run.sweep_id} [bold]{escape(run.name)}[/] {verb}: {run.total} jobs{staged}, {run.cached} cached, "
        f"{len(run.to_run)} to run on {run.workers} worker process(es) x {run.threads} thread(s)"
    )
    try:
        with stop_on_termination(), SweepProgress(run.stats) as progress:
            sweeps.run_locally(db, run, on_update=progress.update, starter=starter)
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted:[/] {run.stats.cancelled} job(s) cancelled, none left running")
        sys.exit(130)
    print_sweep_summary(db, run.sweep_id, wide=wide)
    # The id the creation line named has scrolled away by now, and a user's first sweep is not sweep 1 after the
    # demo: name it again with the commands that take it.
    i = run.sweep_id
    err.print(f"sweep {i}: `farm sweep status {i}`, `farm results query --sweep {i}`, `farm report {i}`")
    return db, run.sweep_id, run.stats


@contextlib.contextmanager
def stop_on_termination() -> Iterator[None]:
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
