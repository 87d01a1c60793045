"""Settings read from the environment. Standard library only: every layer may import it.

| variable              | default                                   |
|-----------------------|-------------------------------------------|
| FARM_HOME             | ~/.farm                                   |
| FARM_DATABASE_URL     | sqlite:///$FARM_HOME/farm.db              |
| FARM_ARTIFACTS_URL    | $FARM_HOME/artifacts (or s3://bucket/pfx) |
| FARM_BROKER_URL       | redis://127.0.0.1:6379/0                  |
| FARM_ALLOWED_MODULES  | (empty: no entrypoint may run)            |
| FARM_JOB_LIMIT        | 10000 (jobs a spec may expand to)         |
| FARM_VENDOR_TELEMETRY | (empty: OpenVINO's and NNCF's declined)   |

The farm's reliability knobs (docs/farm.md says why each default):

| variable                       | default |
|--------------------------------|---------|
| FARM_LEASE_S                   | 120     |
| FARM_HEARTBEAT_S               | 10      |
| FARM_MAX_ATTEMPTS              | 3       |
| FARM_TASK_SOFT_TIME_LIMIT_S    | 21600   |
| FARM_TASK_TIME_LIMIT_S         | 22200   |
| FARM_VISIBILITY_TIMEOUT_S      | 25200   |
| FARM_WORKER_MAX_TASKS_PER_CHILD| 500     |
| FARM_WORKER_MAX_MEMORY_MB      | 4096    |
| FARM_TRANSIENT_RETRIES         | 5       |
| FARM_REQUEUE_AFTER_S           | 600     |
| FARM_RECORD_RETRY_S            | 300     |
| FARM_WAIT_RETRY_S              | 600     |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def farm_home() -> Path:
    """FARM_HOME, or ~/.farm."""
    return Path(os.environ.get("FARM_HOME") or Path.home() / ".farm").expanduser()


def cache_dir() -> Path:
    """Where built-in models and other derived files are cached."""
    return farm_home() / "cache"


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        from farm.errors import ConfigError

        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def job_limit() -> int:
    """FARM_JOB_LIMIT: how many jobs a spec may expand to without --force (default 10,000)."""
    limit = _number("FARM_JOB_LIMIT", 10_000)
    if limit < 1 or limit != int(limit):
        from farm.errors import ConfigError

        raise ConfigError(f"FARM_JOB_LIMIT must be a whole number of at least 1, got {limit:g}")
    return int(limit)


@dataclass(frozen=True)
class FarmSettings:
    """How the farm runs jobs: leases, heartbeats, retries, time limits and worker recycling."""

    lease_s: float
    heartbeat_s: float
    max_attempts: int
    soft_time_limit_s: float
    time_limit_s: float
    visibility_timeout_s: float
    max_tasks_per_child: int
    max_memory_mb: int
    transient_retries: int
    #: A queued job sent longer ago than this, in a queue the broker holds fewer messages of than the database has
    #: queued jobs, lost its message (a broker restarted without persistence): the reaper sends it again.
    requeue_after_s: float = 600.0
    #: How long a worker keeps a computed result and retries recording it (or ending / handing back its job) while
    #: the database is unreachable: longer than a database failover, so that an outage costs no work.
    record_retry_s: float = 300.0
    #: How long ``--wait`` / ``sweep status --watch`` keep reconnecting to an unreachable database before giving up.
    wait_retry_s: float = 600.0

    @classmethod
    def from_env(cls) -> FarmSettings:
        soft = _number("FARM_TASK_SOFT_TIME_LIMIT_S", 6 * 3600)
        hard = _number("FARM_TASK_TIME_LIMIT_S", soft + 600)
        return cls(
            lease_s=_number("FARM_LEASE_S", 120),
            heartbeat_s=_number("FARM_HEARTBEAT_S", 10),
            max_attempts=int(_number("FARM_MAX_ATTEMPTS", 3)),
            soft_time_limit_s=soft,
            time_limit_s=hard,
            # Longer than the longest job, or Redis hands a running job's message to a second worker.
            visibility_timeout_s=_number("FARM_VISIBILITY_TIMEOUT_S", hard + 3000),
            # Recycle on memory (what needs bounding); the task count is a backstop. A recycle costs seconds
            # (a process with torch loaded exits slowly), so doing it every few jobs would dominate short jobs.
            max_tasks_per_child=int(_number("FARM_WORKER_MAX_TASKS_PER_CHILD", 500)),
            max_memory_mb=int(_number("FARM_WORKER_MAX_MEMORY_MB", 4096)),
            transient_retries=int(_number("FARM_TRANSIENT_RETRIES", 5)),
            # Longer than the longest transient retry's countdown (5 min), whose message a worker holds out of the
            # broker's queue.
            requeue_after_s=_number("FARM_REQUEUE_AFTER_S", 600),
            record_retry_s=_number("FARM_RECORD_RETRY_S", 300),
            wait_retry_s=_number("FARM_WAIT_RETRY_S", 600),
        )


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    artifacts_url: str
    broker_url: str

    @classmethod
    def from_env(cls) -> Settings:
        home = farm_home()
        return cls(
            home=home,
            database_url=os.environ.get("FARM_DATABASE_URL") or f"sqlite:///{home / 'farm.db'}",
            artifacts_url=os.environ.get("FARM_ARTIFACTS_URL") or str(home / "artifacts"),
            broker_url=os.environ.get("FARM_BROKER_URL") or "redis://127.0.0.1:6379/0",
        )
