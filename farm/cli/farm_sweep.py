"""``farm sweep submit / cancel / retry / resume``: sweeps on a farm (Celery + Redis + a shared database).

The producer imports neither torch nor the engine: these commands run from a laptop with the base install.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.markup import escape

from farm.cli.params import ID, QUEUE
from farm.cli.render import err, out
from farm.cli.sweep import load_plan, open_db, outage_patience, print_status, submitter, watch_sweep


@click.command()
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
    from farm.routing import Pools, route
    from farm.store import queries, scheduling
    from workers import dispatch
    from workers.app import app

    pools = Pools(cpu=cpu_queue, gpu=gpu_queue)
    plan = load_plan(spec_path, force, pools)
    dispatch.check_broker(app)
    db = open_db()

    def route_of(job: Any) -> tuple[str, str, str | None]:
        r = route(job.method, job.device, pools)
        return r.queue, r.stage, r.finish_queue

    with db.session() as s:
        record = queries.create_sweep(s, plan, submitter(), route=route_of)
        messages = queries.queue_ready(s, record.to_run)
    try:
        dispatch.send(app, messages)
    except dispatch.BrokerUnavailable:
        with db.session() as s:
            if record.created:
                queries.delete_new_sweep(s, record.sweep_id)
            else:
                unsent = [m.job_id for m in messages]
                queries.cancel_jobs(s, unsent, "not sent: the broker was unreachable")
                scheduling.jobs_ended(s, unsent)  # their dependents end too, and the sweep settles
                queries.refresh_sweep_state(s, record.sweep_id)
        raise
    waiting = len(record.to_run) - len(messages)
    err.print(
        f"sweep {record.sweep_id} [bold]{escape(plan.spec.name)}[/] submitted: {record.total} jobs, "
        f"{record.cached} cached, {len(messages)} sent, {waiting} waiting for their fp32 reference"
    )
    click.echo(record.sweep_id)
    if wait:
        patience = outage_patience()  # a database outage meanwhile: said once, ridden out (FARM_WAIT_RETRY_S)
        state = watch_sweep(db, record.sweep_id, patience=patience)
        print_status(db, record.sweep_id, patience=patience)
        sys.exit(0 if state == "succeeded" else 1)


@click.command()
@click.argument("sweep_id", type=ID)
def cancel(sweep_id: int) -> None:
    """Cancel a sweep: queued jobs never start, running ones stop at their next check."""
    from farm.store import queries, scheduling

    db = open_db(create=False)
    with db.session() as s:
        queries.get_sweep(s, sweep_id)
        job_ids = queries.sweep_job_ids(s, sweep_id)
        n = queries.cancel_jobs(s, job_ids, "cancelled by farm sweep cancel")
        scheduling.jobs_ended(s, job_ids)  # a reference shared with another sweep: that sweep's dependents end too
        queries.refresh_sweep_state(s, sweep_id)
    out.print(f"sweep {sweep_id}: {n} job(s) cancelled")


@click.command()
@click.argument("sweep_id", type=ID)
@click.option("--failed-only", is_flag=True, help="Retry failed jobs only, not cancelled ones.")
def retry(sweep_id: int, failed_only: bool) -> None:
    """Run a sweep's failed (and cancelled) jobs again, with a fresh attempt budget."""
    from farm.store import queries, scheduling
    from workers import dispatch
    from workers.app import app

    dispatch.check_broker(app)
    db = open_db(create=False)
    with db.session() as s:
        queries.get_sweep(s, sweep_id)
        ids = queries.reset_for_retry(s, sweep_id, failed_only=failed_only)
        # Released if their reference succeeded; failed again at once if it stays failed (not retried here).
        decision = scheduling.schedule_pending(s, ids)
        queries.refresh_sweep_state(s, sweep_id)
    sent = dispatch.send(app, decision.messages)
    ended = len(set(decision.ended) & set(ids))
    waiting = len(ids) - len(decision.messages) - ended
    out.print(
        f"sweep {sweep_id}: {len(ids)} job(s) to retry, {sent} sent, {waiting} waiting for their reference"
        + (f", {ended} ended again with their reference" if ended else "")
    )


@click.command()
@click.argument("sweep_id", type=ID)
def resume(sweep_id: int) -> None:
    """Re-send a sweep's jobs whose messages were lost (a broker restart, a worker killed with its host)."""
    from farm.settings import FarmSettings
    from farm.store import queries, scheduling
    from workers import dispatch
    from workers.app import app

    dispatch.check_broker(app)
    db = open_db(create=False)
    with db.session() as s:
        queries.get_sweep(s, sweep_id)
    from farm.artifacts import open_store

    requeued, failed = dispatch.reap(db, app, FarmSettings.from_env().max_attempts, sweep_id, store=open_store())
    with db.session() as s:
        queued = scheduling.resend_queued(s, sweep_id)
        ready = scheduling.schedule_pending(s, queries.sweep_job_ids(s, sweep_id, ("pending",))).messages
        queries.refresh_sweep_state(s, sweep_id)
    sent = dispatch.send(app, queued + ready)
    out.print(
        f"sweep {sweep_id}: {sent} message(s) sent ({len(queued)} queued job(s), {len(ready)} released), "
        f"{requeued} expired job(s) re-queued, {failed} failed after too many attempts"
    )
