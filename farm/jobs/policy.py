"""The scheduling policy: from the job graph and the jobs' states, what may run, what a job's end releases or
ends, when a lost worker gives up, and how an interrupted submit is undone.

Pure: no database, no broker, no clock. The store (farm/store/scheduling.py) reads the states a decision needs,
asks this module, and writes the answer in the same transaction; the two executors (the local process pool in
farm/jobs/local.py and the Celery workers through workers/dispatch.py) run what it released. Neither executor,
nor the CLI, holds dependency logic of its own: a reliability fix to scheduling is made here, once.

The job graph: a job waits for a list of jobs (``deps``). It is runnable once every one of them succeeded; it
can never run once one of them failed or was cancelled, and ends with that one's reason (cancelled with a
cancelled dependency, failed otherwise). A trial's dependency is its model's fp32 reference; a stage job (see
farm/jobs/stages.py) waits for the jobs whose results it reads, and adds the next stage's jobs when it ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

PENDING, QUEUED, RUNNING = "pending", "queued", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
FINISHED_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})
#: States a job can still be started from (a message may be on its way for a queued one).
WAITING_STATES = (PENDING, QUEUED)
#: The queue of a local run's jobs (``farm sweep run``): no broker carries them, so none is ever lost.
LOCAL_QUEUE = "local"


@dataclass(frozen=True)
class Message:
    """A job to send to an executor: its id, the queue, and the stage (which task runs it)."""

    job_id: int
    queue: str
    stage: str


@dataclass(frozen=True)
class Decision:
    """What a job's end (or a batch of pending jobs' dependencies) decided, as the store wrote it.

    Attributes:
        messages: jobs released (now queued): the executor runs (or sends) them once the transaction commits.
        ended: jobs ended with a dependency (failed, or cancelled with it).
        settled: sweeps whose state was re-derived because nothing is left to run in them.
        added: jobs a stage added to its sweeps (released ones are among ``messages`` too).
    """

    messages: list[Message] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    settled: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)

    def __add__(self, other: Decision) -> Decision:
        return Decision(
            self.messages + other.messages,
            self.ended + other.ended,
            list(dict.fromkeys(self.settled + other.settled)),
            self.added + other.added,
        )


@dataclass(frozen=True)
class Dependency:
    """A job others wait for, as the store read it."""

    id: int
    state: str
    role: str = "trial"
    error: str | None = None


@dataclass(frozen=True)
class Waiter:
    """A job that has not started, and the ids of the jobs it waits for."""

    id: int
    deps: tuple[int, ...] = ()


@dataclass(frozen=True)
class Ending:
    """A waiting job that can never run: the state it ends in and why."""

    id: int
    state: str
    reason: str


@dataclass(frozen=True)
class Verdict:
    """For a set of waiting jobs: which start now, which end, which keep waiting."""

    release: list[int] = field(default_factory=list)
    end: list[Ending] = field(default_factory=list)
    wait: list[int] = field(default_factory=list)


def verdict(waiters: Iterable[Waiter], deps: Mapping[int, Dependency]) -> Verdict:
    """Decide each waiting job by its dependencies' states.

    Args:
        waiters: jobs not yet started (pending).
        deps: every dependency of ``waiters`` by id; one missing from it (deleted) counts as never succeeding.

    Returns:
        release: every dependency succeeded (or there are none); end: one ended without succeeding (the first
        in the job's order names the reason); wait: the rest.
    """
    out = Verdict()
    for waiter in waiters:
        blocker = None
        ready = True
        for dep_id in waiter.deps:
            dep = deps.get(dep_id, Dependency(dep_id, FAILED, error="it no longer exists"))
            if dep.state in (FAILED, CANCELLED):
                blocker = dep
                break
            ready = ready and dep.state == SUCCEEDED
        if blocker is not None:
            state = CANCELLED if blocker.state == CANCELLED else FAILED
            out.end.append(Ending(waiter.id, state, dependency_reason(blocker)))
        elif ready:
            out.release.append(waiter.id)
        else:
            out.wait.append(waiter.id)
    return out


def dependency_reason(dep: Dependency) -> str:
    """Why a job waiting for ``dep`` ends: the dependency, its end, and its own reason (≤ 4000 characters)."""
    what = f"the fp32 reference (job {dep.id})" if dep.role == "reference" else f"job {dep.id} ({dep.role})"
    return f"{what} {dep.state}: {dep.error or ''}".strip()[:4000]


@dataclass(frozen=True)
class Loss:
    """What a worker's death under a job decides: go again (with ``losses`` counted) or give up with ``reason``."""

    again: bool
    losses: int
    reason: str | None = None


def worker_lost(losses: int, max_losses: int, worker: str | None, *, what: str = "worker") -> Loss:
    """A job's worker died under it (its lease expired, its process vanished): ``losses`` counts this death.

    Args:
        losses: deaths under this job so far, this one included.
        max_losses: at this many the job fails instead of going again (``FARM_MAX_ATTEMPTS`` on the farm).
        worker: the worker that held it last, named in the reason.
        what: "worker" (a farm worker) or "worker process" (a local pool process).
    """
    if losses >= max_losses:
        return Loss(
            False, losses, f"its {what} died {losses} times while running it (last: {worker}); not retried again"
        )
    return Loss(True, losses)


def retry_states(failed_only: bool) -> tuple[str, ...]:
    """The states ``farm sweep retry`` makes pending again."""
    return (FAILED,) if failed_only else (FAILED, CANCELLED)


def undo_submit(created: bool) -> Literal["delete", "cancel_unsent"]:
    """A submit whose messages could not be sent: a sweep created by it is deleted (nothing half-written); one
    that already existed (a re-submit) keeps its history and cancels the jobs whose message was not sent."""
    return "delete" if created else "cancel_unsent"


def missing_messages(queued: int, broker_length: int) -> int:
    """How many of a queue's queued jobs lost their message: a broker holding at least as many as the database
    has queued lost none (a long backlog is never re-sent)."""
    return max(0, queued - broker_length)
