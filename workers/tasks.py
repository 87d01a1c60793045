"""The Celery tasks: thin. Decode the payload, claim the job, run it, record, map errors to retry or fail.

Registered under explicit names (``farm.run_job``, ``farm.qat_train``) so that the producer sends them
by name without importing this module (or torch).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import Task
from celery.exceptions import TimeLimitExceeded
from celery.signals import task_failure, worker_init, worker_process_init

from farm.errors import TransientError
from farm.jobs.policy import Message, gave_up
from workers import heartbeat  # noqa: F401 - connects the heartbeat to the pool processes' signals
from workers.app import QAT_TRAIN, RUN_JOB, app
from workers.process import pin, resources

log = logging.getLogger("farm.worker")


@worker_init.connect
def _preload(**_: Any) -> None:
    """Import the engine and the store in the master process, before it forks its pool.

    Pool processes are recycled (worker_max_tasks_per_child); a fresh one would otherwise spend seconds
    importing torch and SQLAlchemy before its first job. Importing torch does not initialise CUDA (GPUs are
    counted through NVML), so the forked processes start clean.
    """
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import farm.jobs.execute  # noqa: F401
    import farm.store.execution  # noqa: F401

    try:
        import farm.jobs.steps  # noqa: F401
        import farm.quant.registry  # noqa: F401 - torch and the method handlers
        import farm.zoo.models  # noqa: F401
    except ImportError:  # a worker without the engine extra can still run no-op jobs
        pass


@worker_process_init.connect
def _pin(**_: Any) -> None:
    """Each pool process runs on cores of its own (``farm worker --concurrency N``): see workers.process.pin."""
    try:
        pin()
    except Exception as e:  # noqa: BLE001 - an unpinned process still runs its jobs, and its figures say so
        log.warning("could not pin this pool process: %s", e)


def _run(task: Task, job_id: int) -> str:
    from farm.jobs.execute import execute_job
    from farm.store import execution
    from workers import dispatch

    rt = resources()
    heartbeat.current_job = job_id
    try:
        outcome = execute_job(
            job_id,
            db=rt["db"],
            store=rt["store"],
            worker=rt["name"],
            lease_s=rt["farm"].lease_s,
            heartbeat_s=min(rt["farm"].heartbeat_s, rt["farm"].lease_s / 3),
            max_losses=rt["farm"].max_attempts,
            record_retry_s=rt["farm"].record_retry_s,
        )
    except TransientError as e:
        retries = task.request.retries
        if retries >= rt["farm"].transient_retries:
            # As the local pool gives up: failed (its sweeps settled), then its end decided like any other (a
            # worker dying in between leaves its dependents to the reaper's stale_waiters).
            execution.end_job(rt["db"], job_id, None, "failed", gave_up(retries + 1, e))
            dispatch.after_job(rt["db"], task.app, job_id, "failed", None)
            return "failed"
        log.warning("job %s: %s; retrying in %ss", job_id, e, min(300, 5 * 2**retries))
        raise task.retry(exc=e, countdown=min(300, 5 * 2**retries), max_retries=None) from None
    finally:
        heartbeat.current_job = None
    if outcome.state == "handoff" and outcome.queue:
        dispatch.send(task.app, [Message(job_id, outcome.queue, "finish")])
    elif outcome.state != "skipped":
        dispatch.after_job(rt["db"], task.app, job_id, outcome.state, outcome.role, outcome.has_dependents)
    return outcome.state


@task_failure.connect
def _on_hard_time_limit(sender: Any = None, exception: BaseException | None = None, args: Any = None, **_: Any) -> None:
    """A job whose pool process was killed at the hard time limit ends failed, saying so.

    Celery acknowledges such a message (no re-delivery), but the killed process can't record anything: left
    alone, the job would sit running until its lease ran out and the reaper re-ran it, hours each time, to
    end as "its worker died". This runs in the worker's main process, which holds no database connection of
    its own (its pool forks from it), so it opens one for the purpose and closes it.
    """
    if not isinstance(exception, TimeLimitExceeded) or getattr(sender, "name", None) not in (RUN_JOB, QAT_TRAIN):
        return
    if not args:
        return
    from farm.errors import FarmError
    from farm.settings import FarmSettings
    from farm.store import scheduling
    from farm.store.db import Database
    from workers import dispatch

    job_id = int(args[0])
    limit_s = FarmSettings.from_env().time_limit_s
    reason = (
        f"the job ran past its hard time limit of {limit_s:g} s (FARM_TASK_TIME_LIMIT_S) and its worker process "
        "was killed"
    )
    db = Database()
    try:
        # Only a job a pool process of this host has run for about the limit: one finished meanwhile, or taken
        # over by another worker after a lost lease, is not ours.
        ended = scheduling.fail_past_time_limit(db, job_id, reason, socket.gethostname(), limit_s)
        if ended is None:
            return
        decision, key = ended
        dispatch.send(sender.app, decision.messages)
        # The killed process could not delete what its attempt uploaded: no object may outlive the job's row.
        from farm.artifact_gc import collect_job
        from farm.artifacts import open_store

        collect_job(db, open_store(), key)
    except FarmError as e:  # the reaper ends it later, as a lost worker
        log.error("job %s: could not record its time limit: %s", job_id, e)
    finally:
        db.dispose()


@app.task(name=RUN_JOB, bind=True)
def run_job_task(self: Task, job_id: int) -> str:
    """Run a job (or its finish stage)."""
    return _run(self, job_id)


@app.task(name=QAT_TRAIN, bind=True)
def qat_train_task(self: Task, job_id: int) -> str:
    """Fine-tune a qat job on this (GPU) worker, then hand the finish stage to the CPU pool."""
    return _run(self, job_id)
