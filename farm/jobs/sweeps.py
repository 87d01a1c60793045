"""Sweep operations, as the ``farm sweep`` commands ask for them: submit (undone when the broker is down), run
here, cancel, retry and resume.

Each takes the database, a :class:`Broker` where messages go out, and plain arguments, and returns a dataclass
for the CLI to render. The scheduling is the store's (farm/store/scheduling.py, deciding with farm.jobs.policy);
the choices left here (how to undo an interrupted submit, what a retry resets) are the policy's too. This module
never imports ``workers``: the CLI builds the farm's broker (workers/broker.py) and passes it in, so a producer
on a laptop and a test with a fake broker run the same code. It imports no torch either.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from farm.errors import TransientError
from farm.jobs import policy
from farm.jobs.policy import Message
from farm.store import sweeps as store

#: Why ``farm sweep cancel`` ended a job.
CANCEL_REASON = "cancelled by farm sweep cancel"
#: Why an interrupted re-submit ended the jobs it could not send.
UNSENT_REASON = "not sent: the broker was unreachable"


class Broker(Protocol):
    """Where a farm's messages go (implemented by workers.broker.CeleryBroker)."""

    def check(self) -> None:
        """Raises: TransientError (BrokerUnavailable) when the broker does not answer."""

    def send(self, messages: Iterable[Message]) -> int:
        """Send one message per job; returns how many were sent.

        Raises:
            TransientError: the broker went away (messages sent before that stay sent).
        """

    def reap(self, db: Any, sweep_id: int, *, max_attempts: int, store: Any) -> tuple[int, int]:
        """Re-queue (and send) the sweep's running jobs whose lease expired; fail those past ``max_attempts``.

        Returns:
            (re-queued, failed).
        """


def submitter() -> str:
    """Who asks: ``user@host`` (``unknown@host`` where the user has no name)."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name is not an error
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def load_plan(spec_path: str, force: bool, pools: Any = None) -> Any:
    """Read and expand a spec file into a plan, refused past FARM_JOB_LIMIT unless ``force``.

    Raises:
        ConfigError: every problem of the spec, each with its path.
    """
    from farm.artifacts import object_digest
    from farm.settings import job_limit
    from farm.spec.load import load_spec, read_spec_text
    from farm.spec.schema import parse_text

    text = read_spec_text(spec_path)
    limit = None if force else job_limit()
    data = parse_text(text, spec_path)
    if isinstance(data, dict) and "tune" in data:  # a search: stage 1 planned here, the rest added by its stages
        from farm.jobs.tune_plan import plan_tune

        return plan_tune(text, data, source=spec_path, pools=pools, remote_digest=object_digest)
    # Weights in S3 are keyed by their digest, asked for here (a HEAD request): the planner makes no call itself.
    return load_spec(text, source=spec_path, limit=limit, pools=pools, remote_digest=object_digest)


def check_calibration_sizes(plan: Any, source: str) -> None:
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
    for j in plan.jobs:
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


# --- on a farm ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    """A submitted sweep: its jobs, how many were cached, sent, and left waiting for their dependencies."""

    sweep_id: int
    name: str
    total: int
    cached: int
    sent: int
    waiting: int


def submit(db: Any, broker: Broker, plan: Any, pools: Any) -> Submitted:
    """Create the sweep, queue its runnable jobs and send them; undo the submit if they cannot be sent.

    A sweep this submit created is deleted (nothing half-written); one that existed already keeps its history
    and cancels the jobs whose message was not sent (``policy.undo_submit``).

    Args:
        db: the results database.
        broker: where the messages go.
        plan: the expanded spec (:func:`load_plan`).
        pools: the queues for CPU and GPU jobs (farm.routing.Pools).

    Raises:
        TransientError: the broker is unreachable (the submit was undone first).
    """
    from farm.routing import route

    def route_of(job: Any) -> tuple[str, str, str | None]:
        r = route(job.method, job.device, pools)
        return r.queue, r.stage, r.finish_queue

    submission = store.create_and_queue(db, plan, submitter(), route_of)
    record, messages = submission.record, submission.messages
    try:
        broker.send(messages)
    except TransientError:
        if policy.undo_submit(record.created) == "delete":
            store.delete_new(db, record.sweep_id)
        else:
            store.cancel_jobs(db, record.sweep_id, [m.job_id for m in messages], UNSENT_REASON)
        raise
    waiting = len(record.to_run) - len(messages)
    return Submitted(record.sweep_id, plan.spec.name, record.total, record.cached, len(messages), waiting)


def cancel(db: Any, sweep_id: int) -> int:
    """Cancel a sweep: queued jobs never start, running ones stop at their next check; returns how many.

    Raises:
        NotFound: no such sweep.
    """
    return store.cancel(db, sweep_id, CANCEL_REASON)


@dataclass(frozen=True)
class Retry:
    """A retry: jobs made pending again, sent, still waiting for a dependency, and ended again with one."""

    to_retry: int
    sent: int
    waiting: int
    ended: int


def retry(db: Any, broker: Broker, sweep_id: int, *, failed_only: bool) -> Retry:
    """Run a sweep's failed (and cancelled, unless ``failed_only``) jobs again with a fresh attempt budget.

    Raises:
        NotFound: no such sweep.
        TransientError: the broker went away while sending.
    """
    retried = store.retry(db, sweep_id, failed_only=failed_only)
    ids, decision = retried.job_ids, retried.decision
    sent = broker.send(decision.messages)
    ended = len(set(decision.ended) & set(ids))
    return Retry(len(ids), sent, len(ids) - len(decision.messages) - ended, ended)


@dataclass(frozen=True)
class Resumed:
    """A resume: messages sent (for queued jobs, and for pending ones released now), jobs whose worker died
    re-queued, and jobs failed after too many deaths."""

    sent: int
    queued: int
    released: int
    requeued: int
    failed: int


def resume(db: Any, broker: Broker, sweep_id: int) -> Resumed:
    """Send again a sweep's jobs whose messages were lost (a broker restart, a worker killed with its host).

    Raises:
        NotFound: no such sweep.
        TransientError: the broker went away.
    """
    from farm.artifacts import open_store
    from farm.settings import FarmSettings

    store.require_sweep(db, sweep_id)
    max_attempts = FarmSettings.from_env().max_attempts
    requeued, failed = broker.reap(db, sweep_id, max_attempts=max_attempts, store=open_store())
    queued, ready = store.resume_messages(db, sweep_id)
    sent = broker.send(queued + ready)
    return Resumed(sent, len(queued), len(ready), requeued, failed)


# --- on this machine --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalRun:
    """A sweep persisted to run on this machine: what runs, on how many processes, and its live counts."""

    sweep_id: int
    name: str
    created: bool
    total: int
    cached: int
    to_run: list[int]
    abandoned: int
    workers: int
    threads: int
    artifacts_url: str
    stats: Any  # farm.jobs.local.RunStats, updated as jobs end
    #: Whether its jobs load the engine (not bookkeeping noop jobs): the pool's processes then start together and
    #: import it before their first job (farm.jobs.local.run_local's ``warm``).
    warm: bool = False


def start_local_run(db: Any, plan: Any, jobs: int | None, artifacts_url: str) -> LocalRun:
    """Persist a plan to run here: its jobs routed to the local queue, and the jobs a killed earlier run left
    queued or running made pending again to run with them.

    Args:
        jobs: worker processes (default: cores / the spec's threads per job).
    """
    from farm.jobs.local import RunStats, reclaim_abandoned
    from farm.jobs.local_workers import default_jobs

    record = store.create(db, plan, submitter(), route=lambda job: policy.LOCAL_ROUTE)
    to_run_now = set(record.to_run)
    abandoned = reclaim_abandoned(db, [i for i in record.ids.values() if i not in to_run_now])
    threads = plan.spec.benchmark.threads
    runs = to_run_now | set(abandoned)
    return LocalRun(
        sweep_id=record.sweep_id,
        name=plan.spec.name,
        created=record.created,
        total=record.total,
        cached=record.cached,
        to_run=record.to_run + abandoned,
        abandoned=len(abandoned),
        workers=jobs or default_jobs(threads),
        threads=threads,
        artifacts_url=artifacts_url,
        stats=RunStats(total=record.total, cached=record.cached),
        warm=any(job.spec.method.method != "noop" for job in plan.jobs if record.ids.get(job.key) in runs),
    )


def run_locally(db: Any, run: LocalRun, on_update: Callable[[Any], None] | None = None, starter: Any = None) -> Any:
    """Run a persisted local run's jobs in a process pool (farm.jobs.local.run_local); returns its RunStats.
    ``starter``: its worker processes, started before the run was written (farm.jobs.local_workers.start_workers).

    Raises:
        KeyboardInterrupt: Ctrl-C (or SIGTERM through the caller): the unfinished jobs ended as cancelled.
    """
    from farm.jobs.local import run_local

    return run_local(
        db,
        run.sweep_id,
        run.to_run,
        artifacts_url=run.artifacts_url,
        jobs=run.workers,
        threads=run.threads,
        on_update=on_update,
        stats=run.stats,
        warm=run.warm,
        starter=starter,
    )
