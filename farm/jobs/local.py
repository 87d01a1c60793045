"""The local runner: a sweep on this machine, no services, up to N jobs at once in worker processes.

Each worker process claims its job in the database, runs it and records the result itself, exactly as
a farm worker does. This process is an executor of the one scheduling policy, as the Celery workers are: it
holds no dependency logic of its own, but asks the store (farm.store.local_runs) which jobs are released,
submits those of the local queue to the pool, reports each end back, and counts. Ctrl-C cancels through the
database: queued jobs never start, running ones stop at their next check, and no worker process is left behind.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from farm.jobs.execute import Outcome
from farm.jobs.lanes import Lanes
from farm.jobs.local_workers import MAX_WORKER_LOSSES, Starter, local_name, run_one, sigint_blocked
from farm.jobs.policy import FINISHED_STATES, LOCAL_QUEUE, needs_decision

if TYPE_CHECKING:
    from farm.store.local_runs import LocalDecision

log = logging.getLogger("farm.local")

GRACE_S = 20.0


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
    from farm.store import local_runs

    return local_runs.reclaim_abandoned(db, job_ids, is_gone, MAX_WORKER_LOSSES)


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
    warm: bool = False,
    starter: Starter | None = None,
) -> RunStats:
    """Run ``job_ids`` of sweep ``sweep_id`` in ``jobs`` worker processes.

    ``warm``: the jobs load the engine: every process starts at once and imports it before its first job. A pool
    otherwise starts a process when a job finds none idle: a tune's second process started (and imported torch,
    1.5-2 s) only once its fp32 reference ended and released stage 1.
    ``starter``: the processes, started by the caller before it wrote the run (farm/jobs/local_workers.py; it
    closes it too); without it the run starts its own as ``warm`` says.

    The store decides what runs when (farm.jobs.policy, through farm.store.local_runs): a job starts once every
    job it waits for succeeded (an fp32 reference before the trials that compare with it), and ends without
    running when one of them failed or was cancelled. This process submits what is released, reports each end
    back, and counts; a job a stage adds to the sweep joins the run when it is released.

    Raises:
        KeyboardInterrupt: after cancelling the unfinished jobs and stopping the workers.
    """
    from farm.quant.pinning import oversubscribed
    from farm.store import local_runs

    crowded = oversubscribed(max(1, jobs), threads)
    if crowded:  # said once, here; each process pins to free cores when it can
        log.warning("%s", crowded)
    if starter is None:  # with ``warm``, the lanes the run's jobs can keep busy start at once
        starts = min(jobs, len(job_ids)) if warm else 0
        starter = Starter(db.url, artifacts_url, threads, warm=warm, early=starts if starts > 1 else 0)

    try:
        lanes = Lanes(jobs, starter.new_pool, run_one)
    except BaseException:
        starter.close()
        raise
    run = _Run(db, stats, on_update or (lambda s: None), lanes, set(job_ids))
    failed = True
    try:
        starter.release()  # an interrupt held since the processes started arrives here, and cancels the run
        run.execute(local_runs.start(db, job_ids, run.owner))
        run.notify(stats)
        run.drain()
        local_runs.settle(db, sweep_id)
        failed = False
    except KeyboardInterrupt:
        _cancel(db, sweep_id, sorted(run.job_ids), run.lanes, stats)
        raise
    finally:
        run.lanes.shutdown(stop=failed)  # a failed run (the store gone, say) stops its jobs rather than wait
        starter.close()
    # Jobs still waiting now wait for a job another live run holds, or are held by it: that run runs them.
    stats.cached += max(0, stats.to_run - stats.done)
    return stats


class _Run:
    """A local run in progress: the pool, the jobs in flight, and the run's jobs (those it was given, and those
    released to it since: a stage's new jobs)."""

    def __init__(
        self, db: Any, stats: RunStats, notify: Callable[[RunStats], None], lanes: Lanes, job_ids: set[int]
    ) -> None:
        self.db, self.stats, self.notify, self.lanes = db, stats, notify, lanes
        self.job_ids = job_ids
        self.owner = local_name()

    def execute(self, decided: LocalDecision) -> None:
        """Carry out a store decision: count the run's jobs it ended, submit every job it released here."""
        decision = decided.decision
        added = set(decision.added) - self.job_ids
        self.job_ids |= added
        self.stats.total += len(added)
        for job_id in decision.ended:
            if job_id in self.job_ids:
                if job_id in decided.cancelled:
                    self.stats.cancelled += 1
                else:
                    self.stats.failed += 1
        for message in decision.messages:
            if message.queue != LOCAL_QUEUE:  # a farm's job released by a local one: the farm's reaper sends it
                continue
            if message.job_id not in self.job_ids:  # another run's job that waited for ours: it runs here
                self.job_ids.add(message.job_id)
                self.stats.total += 1
            self.lanes.add(message.job_id, decided.runtimes.get(message.job_id))
        with sigint_blocked():  # a lane's submit may start its worker process
            self.lanes.dispatch()

    def ended(self, outcome: Outcome) -> None:
        """Count a job's end and carry out what it decided. A trial nobody waits for decides nothing (the statement
        that ended it settled its sweeps): it costs no round trip (farm.jobs.policy.needs_decision)."""
        from farm.store import local_runs

        if outcome.state != "skipped" and not needs_decision(outcome.role, outcome.has_dependents):
            _count(self.stats, outcome)
            return
        end = local_runs.job_ended(self.db, outcome.job_id, self.owner)
        if outcome.state == "skipped":  # another run holds it, or it ended meanwhile: the database says how
            state = end.state if end.state is not None and end.state in FINISHED_STATES else "skipped"
            outcome = Outcome(outcome.job_id, state, role=outcome.role)
        _count(self.stats, outcome)
        self.execute(end.decided)

    def drain(self) -> None:
        """Wait for the jobs in flight, and for those their ends release, until none is left. A lane that comes free
        takes its next job before this process asks the store what the end released (a round trip)."""
        while self.lanes.futures:
            finished, _ = wait(list(self.lanes.futures), return_when=FIRST_COMPLETED)
            lost: list[int] = []
            for fut in finished:
                lane = self.lanes.futures[fut]
                job_id = self.lanes.finished(fut)
                try:
                    outcome = fut.result()
                except BrokenProcessPool:
                    lost.append(job_id)
                    self.lanes.replace(lane)
                    continue
                with sigint_blocked():
                    self.lanes.dispatch()
                self.ended(outcome)
                self.notify(self.stats)
            if lost:
                self.recover(lost)

    def recover(self, lost: list[int]) -> None:
        """A worker process died (the OOM killer, a crash in native code) and the job it ran is lost; its lane has a
        new process. The job runs again, up to MAX_WORKER_LOSSES deaths (farm.jobs.policy.worker_lost)."""
        from farm.store import local_runs

        recovery = local_runs.recover(self.db, lost, self.owner, MAX_WORKER_LOSSES)
        for job in recovery.finished:
            _count(self.stats, Outcome(job.id, job.state, job.error, role=job.role))
        self.execute(recovery.decided)
        self.notify(self.stats)


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


def _cancel(db: Any, sweep_id: int, job_ids: list[int], lanes: Lanes, stats: RunStats) -> None:
    """Ctrl-C: cancel every unfinished job, let running ones notice, then make sure no worker is left."""
    from farm.store import sweeps

    futures = list(lanes.futures)
    lanes.pending.clear()
    for fut in futures:
        fut.cancel()
    # The jobs waiting for them end too (in any sweep: a reference shared with another), and the sweep settles.
    sweeps.cancel_jobs(db, sweep_id, job_ids, "cancelled (Ctrl-C)")
    deadline = time.monotonic() + GRACE_S
    pending = [f for f in futures if not f.cancelled()]
    while pending and time.monotonic() < deadline:
        try:
            done, not_done = wait(pending, timeout=0.5)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            break
        pending = list(not_done)
    for proc in lanes.processes():
        if proc.is_alive():
            proc.terminate()
    stats.cancelled = stats.total - stats.cached - stats.succeeded - stats.failed
