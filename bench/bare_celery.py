"""The bare Celery baseline for bench/farm_overhead.py: a no-op task that counts itself in Redis, on an app
with exactly the farm's Celery settings (late acks, prefetch 1, events, ...) but none of its bookkeeping.

The task pushes onto a Redis list that the bench waits on with BLPOP (as it waits on the farm's commits with
LISTEN): each side is observed when its work is done, not polled.
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
    _counter.rpush(key, 1)
