"""How a sweep is shown while and after it runs: its status, a live watch, and the results table at the end.

Shared by the ``farm sweep`` commands and ``farm demo``; reads go through farm.store.sweeps (plain data).
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from farm.cli.render import cell, err, out


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
    """A sweep's state and counts in one line, then its first 20 failed jobs with their errors.

    Raises:
        NotFound: no such sweep.
    """
    from farm.store import sweeps

    def read() -> Any:
        return sweeps.status(db, sweep_id)

    status = patience.call(read) if patience is not None else read()
    name, state, counts = status.name, status.state, status.counts
    total = sum(counts.values())
    order = ("succeeded", "failed", "running", "queued", "pending", "cancelled")
    parts = ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))
    out.print(f"sweep {sweep_id} [bold]{escape(name)}[/]: {state}; {total} jobs: {parts or 'none'}")
    for job in status.failed[:20]:
        out.print(f"  [red]failed[/] job {job.id} {escape(job.method)} {escape(job.model)}: {escape(job.error or '')}")


def watch_sweep(db: Any, sweep_id: int, poll_s: float = 1.0, patience: Any = None) -> str:
    """Show live progress read from the database until the sweep is no longer running; returns its state.

    A database outage meanwhile is ridden out (``patience``, default :func:`outage_patience`).

    Raises:
        StoreUnavailable: the database stayed unreachable past FARM_WAIT_RETRY_S.
    """
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from farm.cli.render import interactive
    from farm.store import sweeps

    patience = patience if patience is not None else outage_patience()

    def poll() -> tuple[str, dict[str, int]]:
        progress = sweeps.progress(db, sweep_id)
        return progress.state, progress.counts

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
    from farm.store.results import sweep_rows

    rows = sweep_rows(db, sweep_id)
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
