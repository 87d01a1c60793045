"""The farm's broker as the sweep operations see it (farm.jobs.sweeps.Broker): Celery over Redis.

A thin adapter: the sending, the broker check and the reaper are workers/dispatch.py's. It exists so that
farm/jobs never imports ``workers``: the CLI builds one and hands it to the operation it calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from farm.jobs.policy import Message
from workers import dispatch


class CeleryBroker:
    """Messages to the Celery app's broker (FARM_BROKER_URL).

    Args:
        app: the Celery app; default the farm's (workers.app.app).
    """

    def __init__(self, app: Any = None) -> None:
        if app is None:
            from workers.app import app
        self.app = app

    def check(self) -> None:
        """Raises: ConfigError (a transport the farm does not run on), BrokerUnavailable (no answer)."""
        dispatch.check_broker(self.app)

    def send(self, messages: Iterable[Message]) -> int:
        """Raises: BrokerUnavailable: the broker went away (messages sent before that stay sent)."""
        return dispatch.send(self.app, messages)

    def reap(self, db: Any, sweep_id: int, *, max_attempts: int, store: Any) -> tuple[int, int]:
        """Re-queue and send the sweep's expired running jobs; fail those past ``max_attempts``."""
        return dispatch.reap(db, self.app, max_attempts, sweep_id, store=store)
