"""How a sweep is shown while and after it runs: its status, a live watch, and the results table at the end.

Shared by the ``farm sweep`` commands and ``farm demo``; reads go through farm.store.sweeps (plain data).
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape

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


def print_sweep_summary(db: Any, sweep_id: int, *, wide: bool = False) -> None:
    """The results table at the end of a run: one row per job, its figures at the largest batch size.

    It fits 100 columns: the recipe label stands for the method's parameters, long model names are shortened
    through a legend printed below, the backend shows where it varies, a status where a job failed or its figures
    are not healthy. ``wide`` adds the parameter columns, SQNR, coverage and the latency at every batch size.
    """
    from farm.cli.compact import add_column, fmt, legend_lines, model_legend, new_table, status, varying
    from farm.store.results import sweep_rows

    rows = sweep_rows(db, sweep_id)
    by_job: dict[int, dict[str, Any]] = {}
    batches: list[int] = sorted({r["batch_size"] for r in rows if r["batch_size"] is not None})
    for r in rows:
        job = by_job.setdefault(r["job_id"], {**r, "lat": {}, "by_batch": {}})
        if r["batch_size"] is not None:
            job["lat"][r["batch_size"]] = r["latency_p50_ms"]
            job["by_batch"][r["batch_size"]] = r
    jobs = list(by_job.values())
    legend = model_legend([j["model"] for j in jobs])
    last = batches[-1] if batches else None
    cols: list[tuple[str, Any]] = [("model", lambda j: escape(legend[j["model"]])), ("recipe", _recipe)]
    if wide:
        cols += [("bits", lambda j: cell(j["bits"])), ("cal", lambda j: cell(j["calibration_size"]))]
        cols += [("observer", lambda j: cell(j["observer"])), ("gran", lambda j: cell(j["granularity"]))]
    if wide or "backend" in varying(jobs):
        cols.append(("backend", lambda j: cell(j.get("backend"))))
    cols += [("acc", lambda j: fmt(j["accuracy"], ".4f")), ("drop", lambda j: fmt(j["accuracy_drop"], "+.4f"))]
    if wide:
        cols += [("sqnr dB", lambda j: fmt(j["sqnr_db"], ".1f")), ("coverage", lambda j: fmt(j["coverage"], ".1%"))]
    cols.append(("size/fp32", lambda j: fmt(j["size_ratio"], ".3f")))
    if wide:
        cols += [(f"p50 ms b{b}", lambda j, b=b: fmt(j["lat"].get(b), ".3f")) for b in batches]
    elif last is not None:
        cols.append(("p50 ms", lambda j: _p50_at(j, last)))
    if last is not None:
        cols.append(("speedup", lambda j: fmt((j["by_batch"].get(last) or {}).get("speedup"), ".2f", "x")))
    if any(status(j) != "ok" for j in jobs):
        cols.append(("status", _status))
    at = f" (latency and speedup at batch {last})" if last is not None and not wide else ""
    table = new_table(f"sweep {sweep_id}{at}")
    for name, _ in cols:
        add_column(table, name)
    for job in sorted(jobs, key=lambda j: (j["model"], j["method"], j["bits"] or 0, j["calibration_size"] or 0)):
        table.add_row(*(render(job) for _, render in cols))
    out.print(table)
    for line in legend_lines(legend):
        out.print(line, markup=False)
    failures = [j for j in jobs if j["state"] == "failed"]
    for j in failures[:10]:
        out.print(
            f"[red]failed[/] job {j['job_id']} ({escape(j['method'])}, {escape(j['model'])}): "
            f"{escape(j['error'] or '')}"
        )


def _recipe(job: dict[str, Any]) -> str:
    from farm.cli.compact import recipe_of

    return escape(recipe_of(job))


def _p50_at(job: dict[str, Any], batch: int) -> str:
    from farm.cli.compact import p50_with_interval

    row = job["by_batch"].get(batch)
    return "-" if row is None else p50_with_interval(row)


def _status(job: dict[str, Any]) -> str:
    from farm.cli.compact import status

    word = status(job)
    return word if word in ("ok", "succeeded") else f"[red]{word}[/]" if word == "failed" else f"[yellow]{word}[/]"
