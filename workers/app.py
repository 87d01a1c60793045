"""The Celery app: the ONE module that configures Celery. ``celery -A workers.app worker`` works as well as
``farm worker``.

Importing this module imports no torch and no engine: the producer (``farm sweep submit``) sends tasks
by name through it from a laptop. The settings follow what experienced Celery users recommend for long
ML tasks; docs/farm.md says which and why.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from farm.errors import ConfigError
from farm.settings import FarmSettings, Settings

RUN_JOB = "farm.run_job"
QAT_TRAIN = "farm.qat_train"
#: The broker transports the farm runs on: it relies on Redis (the visibility timeout, pipelined publishes).
BROKER_SCHEMES = ("redis", "rediss", "redis+socket", "sentinel")


def check_broker_url(url: str) -> None:
    """Refuse a broker URL whose transport the farm does not run on, before kombu fails on it with a traceback.

    Args:
        url: the broker URL (FARM_BROKER_URL).

    Raises:
        ConfigError: an unknown or unsupported scheme; the message names it, the URL shown without its password.
    """
    from kombu.utils.url import maybe_sanitize_url

    scheme = url.partition("://")[0].strip().lower() if "://" in url else ""
    if scheme not in BROKER_SCHEMES:
        shown = maybe_sanitize_url(url)
        supported = ", ".join(f"{s}://" for s in BROKER_SCHEMES)
        what = f"unsupported broker transport {scheme!r} in {shown}" if scheme else f"{shown} is not a broker URL"
        raise ConfigError(f"{what}; supported: {supported}", source="FARM_BROKER_URL")


def make_app(broker_url: str | None = None) -> Celery:
    """A Celery app for FARM_BROKER_URL (or ``broker_url``), configured for long, memory-hungry jobs."""
    app = Celery("quantfarm", broker=broker_url or Settings.from_env().broker_url, include=["workers.tasks"])
    app.conf.update(celery_settings(FarmSettings.from_env()))
    return app


def celery_settings(farm: FarmSettings) -> dict[str, Any]:
    """The Celery configuration (bench/ gives its bare baseline the same, to compare like with like)."""
    visibility = {"visibility_timeout": int(farm.visibility_timeout_s)}
    return dict(
        # The database is the source of truth and tracks every result: no result backend.
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue="cpu",
        # Acknowledge after the job ran, re-deliver when the worker process dies, take one message at a time.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # With late acks, a message unacknowledged for longer than this is handed to another worker: it must
        # exceed the longest job. Redis reads it from the broker transport options (and the result backend
        # ones, were a Redis result backend configured).
        broker_transport_options=visibility,
        result_backend_transport_options=visibility,
        task_soft_time_limit=farm.soft_time_limit_s,
        task_time_limit=farm.time_limit_s,
        # Recycle pool processes: torch keeps memory it has freed, and leaks in user models add up.
        worker_max_tasks_per_child=farm.max_tasks_per_child,
        worker_max_memory_per_child=(farm.max_memory_mb * 1024) or None,
        # A broker connection lost mid-task: let the task finish and record its result. Cancelling it (Celery's
        # option) threw the computed work away and left the job running under a dead process until the reaper
        # re-ran it as a worker loss. The message may be re-delivered (its ack was lost): the claim drops it, the
        # job being running or succeeded by then.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Events for Flower: the workers' (received, started, succeeded, ...). Not a task-sent event per message
        # from the producer: it doubled the publishes of a 10,000-job submit, and the database has the queue.
        worker_send_task_events=True,
        task_send_sent_event=False,
    )


app = make_app()
