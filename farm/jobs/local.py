"""The local runner: a sweep on this machine, no services, up to N jobs at once in worker processes.

Each worker process claims its job in the database, runs it and records the result itself, exactly as
a farm worker does; this process only schedules (fp32 references first, then the jobs that compare
with them) and reports progress. Ctrl-C cancels through the database: queued jobs never start, running
ones stop at their next check, and no worker process is left behind.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from farm.errors import TransientError
from farm.jobs.execute import Outcome

RETRIES = 3
FINISHED = ("succeeded", "failed", "cancelled")
#: A job whose worker process dies under it this many times (killed by the OS, a crash in native code) fails.
MAX_WORKER_LOSSES = 3
GRACE_S = 20.0
#: How often a running job renews its lease and checks for cancellation: Ctrl-C stops it within about this.
HEARTBEAT_S = 1.0


@dataclass
class RunStats:
    """Counts of a local run, updated as jobs end."""

    total: int
    cached: int
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def to_run(self) -> int:
        return self.total - self.cached


def default_jobs(threads: int) -> int:
    """Worker processes for this machine: one per ``threads`` usable cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, threads))


def local_name(pid: int | None = None) -> str:
    """The name a local process records on the jobs it holds: ``local:HOST:PID``."""
    return f"local:{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def is_gone(name: str | None) -> bool:
    """Whether ``name`` (see :func:`local_name`) is a process of this machine that no longer runs."""
    parts = (name or "").split(":")
    if len(parts) != 3 or parts[0] != "local":
        return False
    _, host, pid_text = parts
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def reclaim_abandoned(db: Any, job_ids: list[int]) -> list[int]:
    """Jobs among ``job_ids`` that a local run on this machine left queued or running when it died.

    ``farm sweep run`` killed (SIGKILL, a closed terminal, a crash) leaves its jobs queued or running with
    nobody to run them. They go back to pending, to run again; a job held by a live process (another
    ``farm sweep run`` of the same jobs) is left alone.

    Returns:
        The ids now pending again.
    """
    from farm.store import queries

    with db.session() as s:
        return queries.reset_abandoned(s, job_ids, is_gone, MAX_WORKER_LOSSES)


# --- worker process side -------------------------------------------------------------------------------

_worker: dict[str, Any] = {}


def _init_worker(database_url: str, artifacts_url: str, threads: int) -> None:
    # The parent handles Ctrl-C (and a closed terminal) and cancels through the database; workers finish or
    # stop cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    # Busy-waiting OpenMP threads collapse when jobs share the cores (measured: 2-thread batches 5x slower).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from farm.artifacts import open_store
    from farm.store.db import Database

    _worker["db"] = Database(database_url)
    _worker["store"] = open_store(artifacts_url)
    _worker["name"] = local_name()


def _run_one(job_id: int) -> Outcome:
    from farm.jobs.execute import execute_job
    from farm.store import queries

    delay = 1.0
    for attempt in range(RETRIES + 1):
        try:
            return execute_job(
                job_id,
                db=_worker["db"],
                store=_worker["store"],
                worker=_worker["name"],
                heartbeat_s=HEARTBEAT_S,
                max_losses=MAX_WORKER_LOSSES,
            )
        except TransientError as e:
            if attempt == RETRIES:
                with _worker["db"].session() as s:
                    queries.fail_job(s, job_id, f"gave up after {RETRIES + 1} attempts: {e}")
                return Outcome(job_id, "failed", str(e))
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


# --- scheduler side -------------------------------------------------------------------------------------


def run_local(
    db: Any,
    sweep_id: int,
    job_ids: list[int],
    *,
    artifacts_url: str,
    jobs: int,
    threads: int,
    on_update: Callable[[RunStats], None] | None = None,
    stats: RunStats,
) -> RunStats:
    """Run ``job_ids`` of sweep ``sweep_id`` in ``jobs`` worker processes.

    References run first; a trial is submitted once its reference succeeded, and fails at once (without
    running) when its reference failed.

    Raises:
        KeyboardInterrupt: after cancelling the unfinished jobs and stopping the workers.
    """
    from farm.store import queries
    from farm.store.models import Job

    notify = on_update or (lambda s: None)
    with db.session() as s:
        rows = s.query(Job.id, Job.role, Job.reference_job_id).filter(Job.id.in_(job_ids)).all() if job_ids else []
        ref_ids = {r.reference_job_id for r in rows if r.reference_job_id is not None}
        ref_states = dict(s.query(Job.id, Job.state).filter(Job.id.in_(ref_ids)).all()) if ref_ids else {}
    waiting: dict[int, list[int]] = {}
    ready: list[int] = []
    for r in rows:
        ref = r.reference_job_id
        if ref is None or ref_states.get(ref) == "succeeded":
            ready.append(r.id)
        else:
            waiting.setdefault(ref, []).append(r.id)
    # Dependents of a reference that is not part of this run and not succeeded can never start.
    in_run = {r.id for r in rows}
    for rid in [rid for rid in waiting if rid not in in_run]:
        if ref_states.get(rid) in ("failed", "cancelled"):
            _fail_dependents(db, waiting.pop(rid), rid, stats, notify)
        else:  # held by another live run: its jobs stay pending for a run after it (not ours to fail)
            stats.cached += len(waiting.pop(rid))

    ctx = multiprocessing.get_context("spawn")

    def new_executor() -> ProcessPoolExecutor:
        init_args = (db.url, artifacts_url, threads)
        return ProcessPoolExecutor(max(1, jobs), mp_context=ctx, initializer=_init_worker, initargs=init_args)

    executor = new_executor()
    futures: dict[Future[Outcome], int] = {}
    owner = local_name()

    def submit(ids: list[int]) -> None:
        if not ids:
            return
        with db.session() as s:
            queries.mark_queued(s, ids, queue="local", owner=owner)
        for job_id in ids:
            with _sigint_blocked():  # submit may start a worker process
                futures[executor.submit(_run_one, job_id)] = job_id

    def ended(outcome: Outcome) -> None:
        if outcome.state == "skipped":  # another run holds it, or it ended meanwhile: the database says how
            state = _state(db, outcome.job_id) or "cancelled"
            outcome = Outcome(outcome.job_id, state if state in FINISHED else "skipped", role=outcome.role)
        _count(stats, outcome)
        dependents = waiting.pop(outcome.job_id, [])
        if outcome.state == "succeeded":
            submit(dependents)
        elif outcome.state == "skipped":  # still running elsewhere: its dependents stay pending, not failed
            stats.cached += len(dependents)
        elif dependents:
            _fail_dependents(db, dependents, outcome.job_id, stats, notify)

    try:
        # References first so that their dependents can start as soon as possible.
        submit(sorted(ready, key=lambda i: i not in waiting))
        notify(stats)
        while futures:
            finished, _ = wait(list(futures), return_when=FIRST_COMPLETED)
            lost: list[int] = []
            for fut in finished:
                job_id = futures.pop(fut)
                try:
                    ended(fut.result())
                except BrokenProcessPool:
                    lost.append(job_id)
                notify(stats)
            if lost:
                # A worker process died (the OOM killer, a crash in native code): the pool is broken and every
                # job it held is lost. Start a new pool; the jobs go again, up to MAX_WORKER_LOSSES each.
                lost += [futures.pop(f) for f in list(futures)]
                executor.shutdown(wait=True, cancel_futures=True)
                executor = new_executor()
                again, outcomes = _recover(db, lost)
                for outcome in outcomes:
                    ended(outcome)
                submit(again)
                notify(stats)
        with db.session() as s:
            queries.refresh_sweep_state(s, sweep_id)
    except KeyboardInterrupt:
        _cancel(db, sweep_id, job_ids, executor, futures, stats)
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return stats


def _state(db: Any, job_id: int) -> str | None:
    from farm.store import queries

    with db.session(write=False) as s:
        return queries.job_state(s, job_id)


def _recover(db: Any, job_ids: list[int]) -> tuple[list[int], list[Outcome]]:
    """After a worker process died: which lost jobs run again, and how the others ended.

    A job the dead pool still held counts a worker loss (it may be the one that killed the process, or a
    bystander that shared the pool); at MAX_WORKER_LOSSES it fails with the reason instead.
    """
    from farm.store import queries

    again: list[int] = []
    outcomes: list[Outcome] = []
    with db.session() as s:
        for job_id in job_ids:
            job = s.get(queries.Job, job_id)
            if job is None:
                continue
            if job.state in ("succeeded", "failed", "cancelled"):
                outcomes.append(Outcome(job_id, job.state, job.error, role=job.role))
                continue
            losses = (job.worker_losses or 0) + (1 if job.state == "running" else 0)
            if losses >= MAX_WORKER_LOSSES:
                error = (
                    f"its worker process died {losses} times while running it (killed by the OS, out of memory, "
                    "or a crash in native code); not retried again"
                )
                if queries.fail_job(s, job_id, error, worker=job.worker):
                    outcomes.append(Outcome(job_id, "failed", error, role=job.role))
                continue
            if queries.requeue_lost(s, job_id, job.state, job.worker, losses):
                again.append(job_id)
    return again, outcomes


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Hold Ctrl-C back while worker processes may be started, and deliver it to this process right after.

    A worker ignores SIGINT only once its initializer runs; a Ctrl-C (sent to the whole process group) while
    it is still starting up would print its KeyboardInterrupt traceback. A process started with SIGINT
    blocked keeps it blocked, so a new worker never sees one: this process alone handles Ctrl-C.
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    # SIGHUP too (a closed terminal reaches the whole group): workers inherit both blocked, and the parent
    # alone stops the run, cancelling through the database. SIGTERM stays deliverable: _cancel terminates.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _count(stats: RunStats, outcome: Outcome) -> None:
    if outcome.state == "skipped":  # another live run holds it, or it finished meanwhile: not ours to count
        stats.cached += 1
    elif outcome.state == "succeeded":
        stats.succeeded += 1
    elif outcome.state == "cancelled":
        stats.cancelled += 1
    else:
        stats.failed += 1
        if outcome.error:
            stats.errors[outcome.job_id] = outcome.error


def _fail_dependents(db: Any, ids: list[int], ref_id: int, stats: RunStats, notify: Callable[[RunStats], None]) -> None:
    """The reference ``ref_id`` ended without succeeding: the farm's one decision (scheduling.job_ended) ends its
    dependents with its reason and settles their sweeps; ``ids`` are the ones this run was waiting to start."""
    from farm.store import queries, scheduling

    with db.session() as s:
        ended = set(scheduling.job_ended(s, ref_id).ended) & set(ids)
        cancelled = queries.job_state(s, ref_id) == "cancelled"
    if cancelled:
        stats.cancelled += len(ended)
    else:
        stats.failed += len(ended)
    notify(stats)


def _cancel(
    db: Any,
    sweep_id: int,
    job_ids: list[int],
    executor: ProcessPoolExecutor,
    futures: dict[Future[Outcome], int],
    stats: RunStats,
) -> None:
    """Ctrl-C: cancel every unfinished job, let running ones notice, then make sure no worker is left."""
    from farm.store import queries, scheduling

    for fut in futures:
        fut.cancel()
    with db.session() as s:
        queries.cancel_jobs(s, job_ids, "cancelled (Ctrl-C)")
        scheduling.jobs_ended(s, job_ids)  # a reference shared with another sweep: that sweep's dependents end too
        queries.refresh_sweep_state(s, sweep_id)
    deadline = time.monotonic() + GRACE_S
    pending = [f for f in futures if not f.cancelled()]
    while pending and time.monotonic() < deadline:
        try:
            done, not_done = wait(pending, timeout=0.5)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            break
        pending = list(not_done)
    for proc in list(getattr(executor, "_processes", {}).values()):
        if proc.is_alive():
            proc.terminate()
    stats.cancelled = stats.total - stats.cached - stats.succeeded - stats.failed
