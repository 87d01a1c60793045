"""The bare Celery baseline for bench/farm_overhead.py: a no-op task that counts itself in Redis, on an app
with exactly the farm's Celery settings (late acks, prefetch 1, events, ...) but none of its bookkeeping.

The task publishes on a Redis channel the bench subscribes to (as it listens for the farm's commits with
LISTEN): each side is told when its work is done, neither is polled. The bench sends these tasks the way the
farm sends its jobs (bench/farm_overhead.py:bare_send mirrors workers.dispatch).
"""

from __future__ import annotations

import os

import redis
from celery import Celery

from farm.settings import FarmSettings
from workers.app import celery_settings

app = Celery("bare", broker=os.environ["FARM_BROKER_URL"])
app.conf.update(celery_settings(FarmSettings.from_env()), task_default_queue="bare")
_counter = redis.Redis.from_url(os.environ["FARM_BROKER_URL"])


@app.task(name="bare.noop")
def noop(key: str) -> None:
    _counter.publish(key, 1)
