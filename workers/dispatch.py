"""Sending jobs to the broker, by task name and queue. Used by the producer, the tasks and the reaper.

The database decides what is runnable; this module only turns database decisions into messages. A
message is a hint: sending one twice, or one for a job that has finished, is harmless (the claim fails).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from kombu.exceptions import KombuError, OperationalError
from kombu.utils.uuid import uuid

from farm.errors import TransientError
from farm.jobs.policy import LOCAL_QUEUE, Message, needs_decision
from farm.store import scheduling
from workers.app import QAT_TRAIN, RUN_JOB, check_broker_url

#: Messages buffered per pipelined publish.
BATCH_SIZE = 1000

log = logging.getLogger("farm.dispatch")


class BrokerUnavailable(TransientError):
    """The broker (Redis) cannot be reached."""


def redact_broker(url: str) -> str:
    """The broker URL without its password."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def check_broker(app: Any, timeout_s: float = 5.0) -> None:
    """Raise BrokerUnavailable (one line, URL without password) unless the broker answers.

    Raises:
        ConfigError: the URL names a transport the farm does not run on (see workers.app.check_broker_url).
        BrokerUnavailable: the broker does not answer.
    """
    check_broker_url(str(app.conf.broker_url))
    url = redact_broker(app.conf.broker_url)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
    except (OSError, KombuError, OperationalError) as e:
        raise BrokerUnavailable(f"broker {url} is unreachable: {_reason(e)}") from None


def send(app: Any, messages: Iterable[Message]) -> int:
    """Publish one task message per job; returns how many were sent.

    Messages go out in pipelined batches where kombu can (>= 5.7, Redis); if a batch fails part way (the
    broker blinked, the connection was replaced mid-batch), everything is sent again one by one with
    Celery's own publish retries. Sending a message twice is harmless: the claim drops the second.

    A message for the local queue is dropped (and logged): a local run's process submits its own jobs to its
    pool, and no worker consumes a broker queue of that name, so such a message would only sit there.

    Raises:
        BrokerUnavailable: the broker went away (messages sent before that stay sent).
    """
    every = list(messages)
    pending = [m for m in every if m.queue != LOCAL_QUEUE]
    if len(pending) < len(every):
        local = sorted(m.job_id for m in every if m.queue == LOCAL_QUEUE)
        log.warning("jobs %s are a local run's (queue %r): not sent; `farm sweep run` runs them", local, LOCAL_QUEUE)
    if not pending:
        return 0
    try:
        return _publish(app, pending, batched=True)
    except (OSError, KombuError, OperationalError, RuntimeError):
        pass
    try:
        return _publish(app, pending, batched=False)
    except (OSError, KombuError, OperationalError) as e:
        raise BrokerUnavailable(f"broker {redact_broker(app.conf.broker_url)} is unreachable: {_reason(e)}") from None


def _publish(app: Any, messages: list[Message], *, batched: bool) -> int:
    count = 0
    with app.producer_or_acquire() as producer:
        # Each queue is declared once here, not once per message: send_task's own declaration re-binds the queue
        # to the channel for every message before finding it declared, a fifth of a 10,000-message submit.
        for name in dict.fromkeys(m.queue for m in messages):
            producer.maybe_declare(app.amqp.queues[name], retry=not batched, **app.conf.task_publish_retry_policy)
        # kombu >= 5.7 pipelines the publishes of a batch (one Redis round trip per BATCH_SIZE messages instead
        # of one each): a 10,000-job submit spent most of its time in round trips without it. Inside a batch,
        # publish retries cannot help (a reconnect would change the batch's channel): the caller retries.
        use_batch = batched and hasattr(producer, "batch")
        if use_batch:
            with producer.batch(BATCH_SIZE):
                return _publish_routed(app, producer, messages)
        for m in messages:
            app.send_task(
                QAT_TRAIN if m.stage == "train" else RUN_JOB,
                args=[m.job_id],
                queue=m.queue,
                routing_key=m.queue,
                producer=producer,
                declare=[],  # declared above
            )
            count += 1
    return count


def _publish_routed(app: Any, producer: Any, messages: list[Message]) -> int:
    """What ``app.send_task`` does for each message, with the routing worked out once per (task, queue).

    send_task looks up the task registry, routes the message and builds an AsyncResult every time: half of a
    10,000-message submit. The messages are the same (Celery's own create_task_message and send_task_message
    write them), linked to the task sending them as send_task links them.
    """
    amqp = app.amqp
    parent = app.current_worker_task
    root_id = (parent.request.root_id or parent.request.id) if parent else None
    parent_id = parent.request.id if parent else None
    routed: dict[tuple[str, str], dict[str, Any]] = {}
    limits: dict[str, tuple[Any, Any]] = {}
    with producer.connection._reraise_as_library_errors():  # as send_task: redis errors as kombu's
        for m in messages:
            name = QAT_TRAIN if m.stage == "train" else RUN_JOB
            options = routed.get((name, m.queue))
            if options is None:
                options = routed[(name, m.queue)] = amqp.router.route({"queue": m.queue, "routing_key": m.queue}, name)
            if name not in limits:  # a worker has the task registered, with its time limits; a laptop has neither
                task = app._tasks.get(name)
                limits[name] = (getattr(task, "time_limit", None), getattr(task, "soft_time_limit", None))
            message = amqp.create_task_message(
                uuid(),
                name,
                [m.job_id],
                {},
                reply_to=app.thread_oid,
                time_limit=limits[name][0],
                soft_time_limit=limits[name][1],
                create_sent_event=app.conf.task_send_sent_event,
                root_id=root_id,
                parent_id=parent_id,
                ignore_result=None,
                argsrepr=f"[{m.job_id}]",  # what Celery's safe repr would write, without its cost
                kwargsrepr="{}",
            )
            amqp.send_task_message(producer, name, message, declare=[], retry=False, **options)
    return len(messages)


def after_job(db: Any, app: Any, job_id: int, state: str, role: str | None, has_dependents: bool = True) -> None:
    """A job ended: ask the one scheduling decision (:func:`farm.store.scheduling.job_ended`) what it releases or
    ends, and send the released jobs.

    ``state`` is the caller's view; the decision reads the job's own from the database. Whether there is anything
    to decide is the policy's rule, the local pool's too (:func:`farm.jobs.policy.needs_decision`).
    """
    if not needs_decision(role, has_dependents):
        return
    send(app, scheduling.decide_ended(db, job_id).messages)


def reap(db: Any, app: Any, max_attempts: int, sweep_id: int | None = None, store: Any = None) -> tuple[int, int]:
    """Re-queue running jobs whose lease expired (their worker died); fail those past ``max_attempts``, ending
    their dependents and settling their sweeps as any other end of a job does (:func:`farm.store.scheduling.reap`).

    Args:
        store: the artifact store; given, the objects the dead attempts of a job failed here left behind are
            deleted (no object outlives a settled sweep without a row).

    Returns:
        (re-queued, failed).
    """
    reaped = scheduling.reap(db, max_attempts, sweep_id)
    send(app, reaped.messages)  # first: released dependents must not wait behind the store
    if store is not None and reaped.failed_keys:
        from farm.artifact_gc import collect_job

        for key in reaped.failed_keys:
            collect_job(db, store, key)
    return reaped.requeued, reaped.failed


def resend_lost(db: Any, app: Any, requeue_after_s: float) -> int:
    """Send again the queued jobs whose message the broker lost (a Redis restarted without persistence).

    Only a queue that holds fewer messages than it has queued jobs lost any, and only jobs sent more than
    ``requeue_after_s`` ago are sent again (see :func:`farm.store.scheduling.take_lost`): a long backlog is left
    alone. A duplicate is harmless: the claim drops it.

    Returns:
        How many messages were sent.

    Raises:
        BrokerUnavailable: the broker did not answer.
    """
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=requeue_after_s)
    stale = scheduling.find_stale_queues(db, cutoff)
    if not stale:
        return 0
    lengths = queue_lengths(app, stale)  # before the database's count: a job claimed meanwhile can't look lost
    return send(app, scheduling.take_lost_messages(db, lengths, cutoff))


def queue_lengths(app: Any, queues: Sequence[str]) -> dict[str, int]:
    """Messages waiting in each of the broker's ``queues`` (on Redis, the LLEN of the queue's lists, through
    kombu's channel). Messages a worker holds (reserved, or waiting for a retry's countdown) are not counted.

    Raises:
        BrokerUnavailable: the broker did not answer.
    """
    try:
        with app.connection_for_read() as conn, conn._reraise_as_library_errors():
            channel = conn.default_channel
            # Not passive: on Redis a passive declare of an empty queue (no key) fails; this one creates nothing.
            return {q: int(channel.queue_declare(queue=q, passive=False).message_count) for q in queues}
    except (OSError, KombuError, OperationalError) as e:
        raise BrokerUnavailable(f"broker {redact_broker(app.conf.broker_url)} is unreachable: {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]
