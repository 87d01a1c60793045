"""The local run's worker processes: what each runs (its start, its jobs, its end), and how they are started.

A worker process pays for torch and the engine before its first job (1.5-2.8 s measured on the hosts we run on).
:class:`Starter` starts the processes a run will use as early as its caller can: ``farm tune`` and ``farm sweep run``
start them once their input is checked, so that they import the engine while the command writes the run to the
database (0.8-0.9 s of its own work), rather than after. The scheduler (farm/jobs/local.py) then takes each lane's
process from it. A process started for a run that has nothing to run (every job cached) is stopped at once: it holds
no job and has written nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import resource_tracker
from typing import Any

from farm.errors import TransientError
from farm.jobs.execute import Outcome
from farm.jobs.policy import gave_up

RETRIES = 3
#: A job whose worker process dies under it this many times (killed by the OS, a crash in native code) fails.
MAX_WORKER_LOSSES = 3
#: How often a running job renews its lease and checks for cancellation: Ctrl-C stops it within about this.
HEARTBEAT_S = 1.0


def local_name(pid: int | None = None) -> str:
    """The name a local process records on the jobs it holds: ``local:HOST:PID``."""
    return f"local:{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def default_jobs(threads: int) -> int:
    """Worker processes for this machine: one per ``threads`` usable cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, threads))


def artifacts_url() -> str:
    """The artifact store a local run uploads to, checked before anything is written (a bad one would fail
    every job).

    Raises:
        ConfigError: FARM_ARTIFACTS_URL is not a store this machine can use.
    """
    from farm.artifacts import check_store_url
    from farm.settings import Settings

    url = Settings.from_env().artifacts_url
    check_store_url(url)
    return url


def start_workers(plan: Any, jobs: int | None, artifacts: str) -> Starter:
    """Start the worker processes a local run of ``plan`` will use, before it is written to the database: as many
    as it has lanes (``jobs``, default :func:`default_jobs`) and jobs, each importing the engine when a job of
    ``plan`` needs it. The caller passes it to the run (farm.jobs.sweeps.run_locally) and closes it when done."""
    from farm.runtimes.registry import DEFAULT_RUNTIME, RUNTIMES, unavailable
    from farm.settings import Settings

    threads = plan.spec.benchmark.threads
    lanes = min(jobs or default_jobs(threads), len(plan.jobs))
    warm = any(job.spec.method.method != "noop" for job in plan.jobs)
    used = {getattr(job.spec.method, "runtime", None) or DEFAULT_RUNTIME for job in plan.jobs}
    loadable = [r for r in used if r in RUNTIMES and RUNTIMES[r].preloads and not unavailable(r)]
    costliest = tuple(sorted(loadable, key=lambda r: (-RUNTIMES[r].build_cost, r)))
    url = Settings.from_env().database_url
    return Starter(url, artifacts, threads, warm=warm, early=lanes, runtimes=costliest)


class LanePool(ProcessPoolExecutor):
    """A lane's pool: one worker process, and the deploy runtimes it loads before its first job (``preloaded``)."""

    def __init__(self, preloaded: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(1, **kwargs)
        self.preloaded = frozenset(preloaded)


class Starter:
    """Makes the local run's lanes' pools (one process each), the first ``early`` of them started now.

    Args:
        database_url: the results database, as the workers open it (a URL object keeps its password).
        artifacts_url: the artifact store the workers upload to.
        threads: torch threads per job (each process pins that many cores).
        warm: the jobs load the engine: the processes started now import it before their first job.
        early: how many processes to start now (the run's lanes that will have a job at once).
        runtimes: deploy runtimes the run's jobs use that can be preloaded here, costliest to build first. With
            ``warm``, the processes started now after the first each load one of them too
            (farm.runtimes.engine.preload): the first process takes the run's first job (its fp32 reference) while
            the others, which would wait for it, pay for a runtime whose jobs they then take (farm/jobs/lanes.py
            prefers a process that has its runtime).
    """

    def __init__(
        self,
        database_url: Any,
        artifacts_url: str,
        threads: int,
        *,
        warm: bool,
        early: int,
        runtimes: tuple[str, ...] = (),
    ) -> None:
        self.args = (database_url, artifacts_url, threads)
        self.warm = warm
        self.ctx = multiprocessing.get_context("spawn")
        # Ctrl-C and a closed terminal wait from here until the run's scheduler takes over (:meth:`release`): the
        # processes exist before the run is written, and an interrupt meanwhile then cancels the run as one during
        # it does (its jobs end cancelled, the processes are stopped, exit 130), never leaving them behind.
        # multiprocessing's resource tracker unblocks SIGINT once it has started (whatever the mask was): started first.
        resource_tracker.ensure_running()
        self._held = _hold_interrupts()
        loads = [(), *((r,) for r in runtimes)] if warm else []
        self.started: list[LanePool] = []
        try:
            for i in range(max(0, early)):
                self.started.append(self._pool(True, loads[i] if i < len(loads) else ()))
        except BaseException:  # Ctrl-C (delivered as a start unblocks it): none of them is left behind
            self.close()
            raise

    def new_pool(self) -> LanePool:
        """A lane's pool: one started early while any is left, else one whose process starts with its first job."""
        return self.started.pop(0) if self.started else self._pool(False, ())

    def release(self) -> None:
        """Let Ctrl-C and a closed terminal through again (one held meanwhile arrives now): the run's scheduler
        (farm.jobs.local.run_local) calls this once it can cancel the run."""
        if self._held is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._held)
            self._held = None

    def close(self) -> None:
        """Stop the processes started early that no lane took (a run that had nothing to run, or one that never
        began): they hold no job, so they are ended at once rather than after importing the engine. Interrupts go
        through again."""
        stop_unused(list(self.started))
        self.started = []
        self.release()

    def _pool(self, early: bool, preload: tuple[str, ...]) -> LanePool:
        database_url, artifacts_url, threads = self.args
        init_args = (database_url, artifacts_url, threads, early and self.warm, preload)
        pool = LanePool(preload, mp_context=self.ctx, initializer=_init_worker, initargs=init_args)
        if early:
            with sigint_blocked():  # the submit finds no process idle and starts one
                pool.submit(_ready)
        return pool


def stop_unused(pools: list[Any]) -> None:
    """End pools that never ran a job: their processes terminated (mid-import, they would finish it first)."""
    end_pools(pools, stop=True)


def end_pools(pools: list[Any], *, stop: bool = False) -> None:
    """Shut ``pools`` down together and wait until their processes have ended and are reaped, none left for the
    caller to find; with ``stop``, the processes are terminated first (and waited for 5 s at most, all together).

    Each pool's manager thread joins its processes too: it is waited for first, and a pool whose thread is still at
    it when the time is up is left to it, since two threads reaping one process race (the loser reads no exit
    status). Both are taken before the shutdown, which forgets them: a shutdown(wait=True) after one with
    wait=False waits for nothing."""
    held = [
        (getattr(pool, "_executor_manager_thread", None), list((getattr(pool, "_processes", None) or {}).values()))
        for pool in pools
    ]
    deadline = time.monotonic() + 5.0 if stop else None
    if stop:
        for proc in (proc for _, procs in held for proc in procs):
            with contextlib.suppress(Exception):
                proc.terminate()
    for pool in pools:
        pool.shutdown(wait=False, cancel_futures=True)
    for thread, procs in held:
        if thread is not None:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                continue
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


def _hold_interrupts() -> Any:
    """Block SIGINT and SIGHUP in this thread (the main one only); the mask to restore, or None."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGHUP})


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Hold Ctrl-C back while worker processes may be started, and deliver it to this process right after.

    A worker ignores SIGINT only once its initializer runs; a Ctrl-C (sent to the whole process group) while
    it is still starting up would print its KeyboardInterrupt traceback. A process started with SIGINT
    blocked keeps it blocked, so a new worker never sees one: this process alone handles Ctrl-C.
    """
    # SIGHUP too (a closed terminal reaches the whole group): workers inherit both blocked, and the parent
    # alone stops the run, cancelling through the database. SIGTERM stays deliverable: _cancel terminates.
    previous = _hold_interrupts()
    try:
        yield
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# --- in the worker process -------------------------------------------------------------------------------

_worker: dict[str, Any] = {}


def _init_worker(
    database_url: Any, artifacts_url: str, threads: int, warm: bool = False, preload: tuple[str, ...] = ()
) -> None:
    # The parent handles Ctrl-C (and a closed terminal) and cancels through the database; workers finish or
    # stop cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    # Busy-waiting OpenMP threads collapse when jobs share the cores (measured: 2-thread batches 5x slower).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from farm.quant.pinning import pin_process

    # Cores of its own, host-wide (before torch starts a thread): a job calibrating next door can't steal them.
    # None when they ran out: the process shares them, as the run's start said (run_local).
    pin_process(threads)
    from farm.artifacts import open_store
    from farm.store.db import Database

    _worker["db"] = Database(database_url)
    _worker["store"] = open_store(artifacts_url)
    _worker["name"] = local_name()
    atexit.register(_exit_now)
    if warm:  # torch and the engine, while the run is written or its first jobs (its fp32 reference) run elsewhere
        from farm.quant.isolation import compute_step

        with compute_step():  # it computes: never beside another job's exclusive timing
            import farm.jobs.execute  # noqa: F401
            import farm.jobs.steps  # noqa: F401
        from farm.runtimes.engine import preload as load

        for runtime in preload:  # its own holds: the run's first job may time (its reference) in between
            try:
                load(runtime)
            except Exception as e:  # a broken install: the runtime's first job says so, in its own error
                logging.getLogger("farm.local").warning("could not preload %s: %s", runtime, e)


def _ready() -> None:
    """A process started early: its first task only makes the pool start it."""


def _exit_now() -> None:
    """A pool process's end, once the pool shut it down: every job it ran is recorded and its files closed, so
    it closes its database connections, flushes its logs and output, and exits without tearing down the
    interpreter. That teardown (torch, OpenVINO, NNCF and ONNX Runtime loaded) took 1.7 s at the end of every
    local run, which the run waited for (ProcessPoolExecutor.shutdown joins its processes). Registered as the
    process starts, it runs after the atexit handlers the libraries register later (last in, first out) and
    skips only those registered before it (logging's, whose flush it does itself)."""
    with contextlib.suppress(Exception):
        _worker["db"].dispose()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def run_one(job_id: int) -> Outcome:
    """Run job ``job_id`` in this worker process (a transient error retried with backoff, as a Celery task is)."""
    from farm.jobs.execute import execute_job
    from farm.store import execution

    delay = 1.0
    for attempt in range(RETRIES + 1):
        try:
            return execute_job(
                job_id,
                db=_worker["db"],
                store=_worker["store"],
                worker=_worker["name"],
                heartbeat_s=HEARTBEAT_S,
                max_losses=MAX_WORKER_LOSSES,
            )
        except TransientError as e:
            if attempt == RETRIES:
                # As a Celery task gives up: end it here, and the executor (the run's process) decides its end.
                reason = gave_up(RETRIES + 1, e)
                execution.end_job(_worker["db"], job_id, None, "failed", reason)
                return Outcome(job_id, "failed", reason)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")
