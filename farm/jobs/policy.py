"""The scheduling policy: from the job graph and the jobs' states, what may run, what a job's end releases or
ends, when a lost worker gives up, and how an interrupted submit is undone.

Pure: no database, no broker, no clock. The store (farm/store/scheduling.py) reads the states a decision needs,
asks this module, and writes the answer in the same transaction; the two executors (the local process pool in
farm/jobs/local.py and the Celery workers through workers/dispatch.py) run what it released. Neither executor,
nor the CLI, holds dependency logic of its own: a reliability fix to scheduling is made here, once.

The job graph: a job waits for a list of jobs (``deps``), and what it needs of them depends on its kind
(:func:`needs_success`). A trial (or reference) needs every dependency to succeed: its dependency is its model's
fp32 reference, which it compares with; it can never run once one failed or was cancelled, and ends with that
one's reason (cancelled with a cancelled dependency, failed otherwise). A stage job (farm/jobs/stages.py) reads
the results of the jobs it waits for and adds the next stage's jobs: it needs them only to have FINISHED, however
they ended (one failed trial must not end a search), and its expander skips those that did not succeed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

PENDING, QUEUED, RUNNING = "pending", "queued", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
FINISHED_STATES = (SUCCEEDED, FAILED, CANCELLED)
UNFINISHED_STATES = (PENDING, QUEUED, RUNNING)
#: States a job can still be started from (a message may be on its way for a queued one).
WAITING_STATES = (PENDING, QUEUED)
#: The queue of a local run's jobs (``farm sweep run``): no broker carries them, so none is ever lost.
LOCAL_QUEUE = "local"
#: How a local run routes the jobs it takes: (queue, stage, finish_queue): the local queue, the whole job in one
#: process (a job a farm would split into a gpu "train" stage and a cpu "finish" stage runs whole here).
LOCAL_ROUTE: tuple[str, str, str | None] = (LOCAL_QUEUE, "all", None)
#: The routes a local run takes a pending job from: none yet (a new job, or one that ended and runs again) or its
#: own queue. A farm's job waiting for a farm's job stays the farm's: the farm sends it when it is released (a
#: "local" message on the broker would reach nobody).
LOCAL_RUN_TAKES: tuple[str | None, ...] = (None, LOCAL_QUEUE)
#: Why a local pool's worker process dies under a job, said in the reason of a job that gave up after it.
POOL_DEATH_HINT = "killed by the OS, out of memory, or a crash in native code"


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
    """A job that has not started, the ids of the jobs it waits for, and its role (what it needs of them).

    ``deps`` may leave out dependencies that succeeded: they decide nothing (the store passes only those that
    can, so that a stage after N trials is not O(N) per decision).
    """

    id: int
    deps: tuple[int, ...] = ()
    role: str = "trial"


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


def needs_success(role: str) -> bool:
    """Whether a job of ``role`` needs its dependencies to succeed (trials, references) or only to finish (a
    stage: it reads whatever results there are)."""
    return role != "stage"


def verdict(waiters: Iterable[Waiter], deps: Mapping[int, Dependency]) -> Verdict:
    """Decide each waiting job by its dependencies' states and what its role needs of them.

    Args:
        waiters: jobs not yet started (pending).
        deps: every dependency of ``waiters`` by id; one missing from it (deleted) counts as never succeeding.

    Returns:
        release: every dependency succeeded (a stage: finished), or there are none; end: one ended without
        succeeding and the job needs success (the first in the job's order names the reason); wait: the rest.
    """
    out = Verdict()
    for waiter in waiters:
        strict = needs_success(waiter.role)
        blocker = None
        ready = True
        for dep_id in waiter.deps:
            dep = deps.get(dep_id, Dependency(dep_id, FAILED, error="it no longer exists"))
            if strict and dep.state in (FAILED, CANCELLED):
                blocker = dep
                break
            ready = ready and (dep.state == SUCCEEDED if strict else dep.state in FINISHED_STATES)
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


def worker_lost(
    losses: int, max_losses: int, worker: str | None, *, what: str = "worker", hint: str | None = None
) -> Loss:
    """A job's worker died under it (its lease expired, its process vanished): ``losses`` counts this death.

    Args:
        losses: deaths under this job so far, this one included.
        max_losses: at this many the job fails instead of going again (``FARM_MAX_ATTEMPTS`` on the farm).
        worker: the worker that held it last, named in the reason.
        what: "worker" (a farm worker) or "worker process" (a local pool process).
        hint: what such a death usually is, said in the reason instead of the worker's name (a local pool's
            process: :data:`POOL_DEATH_HINT`; its name, a dead pid, tells the user nothing).
    """
    if losses >= max_losses:
        detail = hint or f"last: {worker}"
        return Loss(False, losses, f"its {what} died {losses} times while running it ({detail}); not retried again")
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


def needs_decision(role: str | None, has_dependents: bool) -> bool:
    """Whether an executor must ask the store to decide a job's end (farm.store.scheduling.job_ended).

    A trial nobody waited for when it was claimed (``has_dependents``, read with the claim) decides nothing, and
    the statement that ended it settled its sweeps: skipping it saves a round trip per job on the hot path. A
    reference or a stage is always decided (a job may have come to wait for it after it was claimed), and so is a
    job of unknown role (ended without a claim: given up after transient errors).
    """
    return role in (None, "reference", "stage") or has_dependents


def gave_up(attempts: int, error: object) -> str:
    """Why a job failed whose transient errors (the database, the object store away) outlasted its retries."""
    return f"gave up after {attempts} attempts: {error}"
