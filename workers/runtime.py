"""``farm worker``: serve queues on this machine.

It checks what the machine has, refuses queues it can't serve, then runs Celery workers as child
processes: one for the CPU queues (``--concurrency`` pool processes), and one per GPU for the GPU queues
with CUDA_VISIBLE_DEVICES set to that GPU. This process never initialises CUDA (the children fork their
pools), restarts a child that dies, and reaps jobs whose worker stopped heart-beating.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from farm.errors import ConfigError
from farm.routing import required_isa, requires_cuda

log = logging.getLogger("farm.worker")
RESTART_BACKOFF_S = (1, 2, 5, 10, 30)


@dataclass
class Child:
    """One Celery worker process this runtime supervises."""

    name: str
    queues: list[str]
    concurrency: int
    env: dict[str, str]
    #: The deploy runtimes it can serve: installed here, and running on its device (farm.runtimes.registry).
    runtimes: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started: float = field(default=0.0)


def prepare(queues: str, *, concurrency: int | None, gpus: str | None, threads: int, loglevel: str) -> list[Child]:
    """What ``farm worker`` will run, from its options as typed: the settings and every queue checked first.

    Raises:
        ConfigError: a bad broker or artifacts URL, queue name or GPU list, or a queue this machine can't serve.
    """
    from farm.artifacts import check_store_url
    from farm.routing import check_queue_name
    from farm.settings import Settings
    from workers.app import check_broker_url
    from workers.capabilities import detect

    settings = Settings.from_env()
    check_broker_url(settings.broker_url)
    check_store_url(settings.artifacts_url)  # a bad one would fail every job it takes, over and over
    names = [check_queue_name(q.strip(), source="--queues") for q in queues.split(",") if q.strip()]
    try:
        gpu_ids = [int(g) for g in gpus.split(",") if g.strip()] if gpus else None
    except ValueError:
        raise ConfigError(f"--gpus: expected comma-separated GPU indices, got {gpus!r}") from None
    return plan(names, detect(), concurrency=concurrency, gpus=gpu_ids, threads=threads, loglevel=loglevel)


def serve(children: list[Child], loglevel: str) -> int:
    """Run ``children`` until stopped, reaping every quarter lease; returns the exit status."""
    from farm.settings import FarmSettings

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(children, reap_every_s=max(2.0, FarmSettings.from_env().lease_s / 4))


def plan(
    queues: list[str],
    caps: dict[str, Any],
    *,
    concurrency: int | None,
    gpus: list[int] | None,
    threads: int,
    loglevel: str,
) -> list[Child]:
    """The Celery workers to run for ``queues`` on a machine with ``caps``.

    Raises:
        ConfigError: a GPU queue on a machine without CUDA, a GPU index it doesn't have, or a CPU pool named
            after an ISA feature this CPU lacks.
    """
    from workers.capabilities import has_isa

    if not queues:
        raise ConfigError("--queues: name at least one queue")
    available = [g["index"] for g in caps.get("gpus", [])]
    gpu_queues = [q for q in queues if requires_cuda(q)]
    cpu_queues = [q for q in queues if not requires_cuda(q)]
    if gpu_queues and not available:
        raise ConfigError(
            f"queue {gpu_queues[0]} needs CUDA, and this machine has no CUDA device (nvidia-smi lists none); "
            "serve cpu queues here"
        )
    for q in cpu_queues:
        feature = required_isa(q)
        if feature and not has_isa(caps, feature):
            raise ConfigError(
                f"queue {q} needs a CPU with {feature}; this one ({caps.get('cpu_model')}) has "
                f"{' '.join(caps.get('isa', [])) or 'no such flags'}"
            )
    chosen = list(dict.fromkeys(gpus)) if gpus is not None else available  # --gpus 0,0: one worker on GPU 0
    missing = [g for g in chosen if g not in available]
    if missing:
        raise ConfigError(f"--gpus: this machine has no GPU {missing[0]} (it has {available or 'none'})")
    if gpus is not None and not gpu_queues:
        raise ConfigError("--gpus given, but no gpu queue in --queues")
    host = socket.gethostname()
    base = {
        "FARM_WORKER_CAPABILITIES": json.dumps(caps),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        # Busy-waiting OpenMP threads collapse when jobs share the cores.
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    children = []
    if cpu_queues:
        cores = int(caps.get("cpus") or os.cpu_count() or 1)
        n = concurrency or max(1, cores // max(1, threads))
        env = {**base, "FARM_WORKER_QUEUES": ",".join(cpu_queues), "CUDA_VISIBLE_DEVICES": ""}
        children.append(Child(f"cpu@{host}", cpu_queues, n, env, runtimes=_served(caps, "cpu")))
    for g in chosen if gpu_queues else []:
        env = {**base, "FARM_WORKER_QUEUES": ",".join(gpu_queues), "CUDA_VISIBLE_DEVICES": str(g)}
        children.append(Child(f"gpu{g}@{host}", gpu_queues, 1, env, runtimes=_served(caps, "cuda")))
    for child in children:
        child.args = _celery_args(child, loglevel)
    return children


def _celery_args(child: Child, loglevel: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "-Q",
        ",".join(child.queues),
        "-c",
        str(child.concurrency),
        "-P",
        "prefork",
        "-n",
        child.name,
        "--loglevel",
        loglevel,
        "-E",
    ]


def run(children: list[Child], *, reap_every_s: float) -> int:
    """Start the children, supervise them and reap expired jobs until SIGTERM / SIGINT; returns an exit status."""
    from farm.artifacts import open_store
    from farm.settings import FarmSettings
    from farm.store.db import Database
    from farm.store.migrate import ensure_schema
    from workers import dispatch
    from workers.app import app

    farm = FarmSettings.from_env()
    db = Database()
    ensure_schema(db)
    dispatch.check_broker(app)
    store = open_store()
    hold = _ReapHold(farm.lease_s)
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        _start(child)
    last_reap = 0.0
    while not stopping:
        time.sleep(0.5)
        for child in children:
            if child.proc is not None and child.proc.poll() is not None and not stopping:
                delay = RESTART_BACKOFF_S[min(child.restarts, len(RESTART_BACKOFF_S) - 1)]
                log.warning("%s exited with %s; restarting in %ss", child.name, child.proc.returncode, delay)
                time.sleep(delay)
                child.restarts += 1
                _start(child)
        if time.monotonic() - last_reap >= reap_every_s:
            last_reap = time.monotonic()
            _reap_round(db, app, farm, store, hold)
    for child in children:  # warm shutdown: running jobs finish, queued messages go back to the broker
        if child.proc is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    for child in children:
        if child.proc is not None:
            try:
                child.proc.wait(timeout=farm.time_limit_s)
            except subprocess.TimeoutExpired:
                child.proc.kill()
    return 0


class _ReapHold:
    """After the database was unreachable, hold off reaping leases until one lease after it is back.

    During an outage no worker can renew its lease, so every running job looks expired the moment the database
    is back: reaping then would charge live workers a loss and re-run their jobs. One lease after the outage
    ends, every live worker has renewed (it renews every FARM_HEARTBEAT_S), and what is still expired is really
    dead. While holding, each round pings the database: the hold runs from the last failed round, so an outage
    longer than a lease is still held off once it ends.
    """

    def __init__(self, lease_s: float) -> None:
        self.lease_s = lease_s
        self.until = 0.0

    def outage(self) -> None:
        self.until = time.monotonic() + self.lease_s

    def holding(self) -> bool:
        return time.monotonic() < self.until


def _reap_round(db: Any, app: Any, farm: Any, store: Any = None, hold: _ReapHold | None = None) -> None:
    """One round of the reaper: expired leases (dead workers), then queued jobs whose message the broker lost.

    Each part retries next round on its own: a broker that is down doesn't stop the leases being reaped.
    """
    from farm.errors import StoreUnavailable
    from workers import dispatch

    try:
        if hold is not None and hold.holding():
            db.ping()  # still away: the hold goes on from now
        else:
            requeued, failed = dispatch.reap(db, app, farm.max_attempts, store=store)
            if requeued or failed:
                log.warning("reaper: %d job(s) re-queued, %d failed after too many attempts", requeued, failed)
    except StoreUnavailable as e:
        if hold is not None:
            hold.outage()
        log.warning("reaper: %s; leases are left alone until one lease after the database is back", e)
    except Exception as e:  # noqa: BLE001 - the reaper retries next round; the workers go on
        log.warning("reaper: %s", e)
    try:
        resent = dispatch.resend_lost(db, app, farm.requeue_after_s)
        if resent:
            log.warning("reaper: %d queued job(s) had lost their message (a broker restart?); sent again", resent)
    except Exception as e:  # noqa: BLE001 - as above
        log.warning("reaper: %s", e)


def _start(child: Child) -> None:
    child.proc = subprocess.Popen(child.args, env={**os.environ, **child.env})
    child.started = time.monotonic()


def _served(caps: dict[str, Any], device: str) -> list[str]:
    """The runtimes installed here (``caps["runtimes"]``) that run on ``device``."""
    from farm.runtimes.registry import RUNTIMES

    return [r for r in caps.get("runtimes", []) if r in RUNTIMES and device in RUNTIMES[r].devices]
