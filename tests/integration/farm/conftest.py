"""Fixtures for the farm tests: a broker (the shared Redis, or one of the test's own), a PostgreSQL database,
an S3 endpoint (moto), the digits model cache warmed once, and farms whose workers are always stopped.

A service that can't be reached skips the test with the reason, except under CI=true where it fails.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from farm.store.db import Database
from farm.store.migrate import ensure_schema
from tests.integration.farm.farm_support import (
    ALLOWED_MODULES,
    REPO_ROOT,
    Farm,
)

SHARED_REDIS = os.environ.get("FARM_TEST_REDIS_URL", "redis://127.0.0.1:6379")
# The farm tests own these database numbers of the shared Redis. A test takes one that no other test (of this
# session or of another one running beside it) holds, by a lock key inside it, and empties it before and after.
SHARED_REDIS_DBS = range(8, 16)
_LOCK_KEY = "quantfarm-tests:lock"
_LOCK_TTL_S = 900


def unreachable(reason: str) -> None:
    """Skip locally, fail under CI=true (CI never passes by skipping)."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5)


@pytest.fixture(scope="session")
def warm_zoo(farm_home: Path) -> Path:
    """The session's FARM_HOME with the digits models already trained into its cache (workers only load them)."""
    from farm.zoo.models import load_model

    load_model("farm:digits-mlp")
    return farm_home


class SharedRedisDb:
    """A database of the shared Redis, held through a lock key while a test uses it."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(8)
        self.url = ""
        self._client: Any = None

    def acquire(self, timeout_s: float = 120.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            for n in SHARED_REDIS_DBS:
                url = f"{SHARED_REDIS}/{n}"
                client = _redis_client(url)
                try:
                    taken = client.set(_LOCK_KEY, self.token, nx=True, ex=_LOCK_TTL_S)
                except Exception as e:  # noqa: BLE001 - any failure to reach it is the same "unreachable"
                    client.close()
                    unreachable(f"Redis unreachable at {SHARED_REDIS}: {type(e).__name__}: {e}")
                if taken:
                    self.url, self._client = url, client
                    self.empty()
                    return url
                client.close()
            if time.monotonic() > deadline:
                raise AssertionError(f"every Redis database {SHARED_REDIS}/8-15 stayed in use for {timeout_s:.0f} s")
            time.sleep(0.5)

    def empty(self) -> None:
        """Delete every key but the lock (FLUSHDB would drop the lock too)."""
        for key in list(self._client.scan_iter(count=1000)):
            if key != _LOCK_KEY.encode():
                self._client.delete(key)

    def release(self) -> None:
        if self._client is None:
            return
        try:
            self.empty()
            if self._client.get(_LOCK_KEY) == self.token.encode():
                self._client.delete(_LOCK_KEY)
        finally:
            self._client.close()
            self._client = None


@dataclass(frozen=True)
class S3Artifacts:
    url: str
    bucket: str
    prefix: str
    client: Any


@pytest.fixture
def s3_artifacts(s3_env: str, s3_client: Any, s3_bucket: str) -> S3Artifacts:
    """FARM_ARTIFACTS_URL on moto's S3 server (the AWS_* settings are in os.environ, set by s3_env)."""
    return S3Artifacts(f"s3://{s3_bucket}/farm", s3_bucket, "farm", s3_client)


def farm_environment(home: Path, broker_url: str, database_url: str, artifacts_url: str) -> dict[str, str]:
    """The environment of every farm process: no FARM_* setting from outside the test leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.pop("COLUMNS", None)
    env.update(
        {
            "FARM_HOME": str(home),
            "FARM_BROKER_URL": broker_url,
            "FARM_DATABASE_URL": database_url,
            "FARM_ARTIFACTS_URL": artifacts_url,
            "FARM_ALLOWED_MODULES": ALLOWED_MODULES,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
            # Heartbeats every second: `farm workers` and cancellation notice quickly. The lease stays long
            # enough that a loaded 2-core machine never loses one by accident; the tests about dead workers
            # shorten it.
            "FARM_HEARTBEAT_S": "1",
            "FARM_LEASE_S": "30",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture
def make_farm(fresh_pg_url: str, warm_zoo: Path, tmp_path: Path) -> Iterator[Callable[..., Farm]]:
    """``make_farm(artifacts_url=..., broker_url=None, **env)``: a farm on a new PostgreSQL database (schema at
    head) and, unless ``broker_url`` names another, a database of the shared Redis held for this test.

    Every worker it started is stopped at teardown, whether the test passed or not, before the Redis database
    is emptied and handed back.
    """
    farms: list[Farm] = []
    shared: list[SharedRedisDb] = []
    db = Database(fresh_pg_url)

    def make(*, artifacts_url: str, broker_url: str | None = None, **extra_env: str) -> Farm:
        if broker_url is None:
            redis_db = SharedRedisDb()
            shared.append(redis_db)
            broker_url = redis_db.acquire()
        ensure_schema(db)
        env = farm_environment(warm_zoo, broker_url, fresh_pg_url, artifacts_url)
        env.update(extra_env)
        farm = Farm(tmp_path, env, db)
        farms.append(farm)
        return farm

    try:
        yield make
    finally:
        try:
            for farm in farms:
                farm.stop_all()
        finally:
            for redis_db in shared:
                redis_db.release()
            db.dispose()


@pytest.fixture
def farm(make_farm: Callable[..., Farm], s3_artifacts: S3Artifacts) -> Farm:
    """A farm on the shared Redis (a database of its own), PostgreSQL, and S3 (moto)."""
    return make_farm(artifacts_url=s3_artifacts.url)
