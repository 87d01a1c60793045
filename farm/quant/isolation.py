"""Isolation of a measurement on a shared host: a host-wide measurement lock, pinning of pool processes to their own
cores, and the host's load while a benchmark times.

Jobs that run side by side on one host (a local ``-j N`` pool, ``farm worker --concurrency N``) contaminate each
other's timings: one job calibrating or training on the cores another job is timing on made a static model look
78 % slower. Two remedies, both host-wide and across processes:

- **Pinning**: each pool process claims ``threads`` cores of its own (a file lock per core, held for the process's
  life, so claims are disjoint whichever executor started the process) and sets its affinity to them; torch threads
  never exceed them. When the cores run out the process shares them, and says so.
- **The measurement lock**: a readers-writer lock on a file (``flock``). Compute phases (calibration, training,
  evaluation) take it SHARED for one batch or step at a time; a benchmark takes it EXCLUSIVE for its timing only, so
  other jobs' compute pauses while it times and resumes after. A turnstile lets a waiting benchmark in before new
  readers (a stream of batches never starves it). A thread holding it SHARED never asks EXCLUSIVE (a job's compute
  and its benchmark are sequential), so it never deadlocks; asking anyway raises.

Standard library only, like the rest of the engine's plumbing: no torch here (threads are capped by the caller).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.errors import Cancelled
from farm.quant.bench_config import ISOLATION_MODES
from farm.quant.hostload import cpu_times, host_load

log = logging.getLogger("farm.isolation")

#: What ``benchmark.isolation`` may ask for: the lock and pinning, pinning only, or neither.
MODES = ISOLATION_MODES
#: Where the lock files live (default: a per-user directory under the system's temp dir, which is per host).
LOCK_DIR_ENV = "FARM_LOCK_DIR"
#: How often a wait for the lock checks whether its job was cancelled.
POLL_S = 0.01


def lock_dir() -> Path:
    """The per-host, per-user directory of the lock files (created, private).

    /tmp rather than the farm's home: a home on a network file system would make the lock span hosts.
    """
    configured = os.environ.get(LOCK_DIR_ENV)
    path = Path(configured) if configured else Path(tempfile.gettempdir()) / f"farm-locks-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


# --- the measurement lock -------------------------------------------------------------------------------------


class _Files:
    """A thread's two open lock files, closed when the thread (or a forked child's stale copy) lets go of them."""

    def __init__(self, turnstile: Path, lock: Path) -> None:
        self.pid = os.getpid()
        self.fds = (_open(turnstile), _open(lock))

    def __del__(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class _Held(threading.local):
    """What this thread holds: per thread, since flock locks belong to open files, not to threads."""

    def __init__(self) -> None:
        self.files: _Files | None = None
        self.mode: str | None = None
        self.depth = 0


class MeasureLock:
    """A host-wide readers-writer lock with a turnstile (two ``flock``-ed files in one directory).

    Args:
        directory: where the lock files live (default :func:`lock_dir`, read when first used).
    """

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = directory
        self._held = _Held()

    @property
    def paths(self) -> tuple[Path, Path]:
        """The turnstile file and the lock file."""
        directory = self._directory or lock_dir()
        return directory / "measure.turnstile", directory / "measure.lock"

    def _fds(self) -> tuple[int, int]:
        held = self._held
        # A forked child shares its parent's open files, and with them its locks: it opens its own.
        if held.files is None or held.files.pid != os.getpid():
            held.files = _Files(*self.paths)
        return held.files.fds

    @contextlib.contextmanager
    def shared(self, stop: Callable[[], bool] | None = None) -> Iterator[None]:
        """Hold the lock shared: one batch or step of a compute phase. Nested inside a shared hold of this thread
        (a build's steps inside the whole build): :meth:`yield_to_benchmark` at its start, then nothing more.

        Raises:
            Cancelled: ``stop`` said so while waiting (a job cancelled while another one times).
        """
        held = self._held
        if held.depth:
            if held.mode == "shared":  # a step inside a longer one (a build's convert, quantize, compile): a batch
                self.yield_to_benchmark(stop)  # boundary, where a waiting benchmark goes first
            with self._nested():
                yield
            return
        turnstile, lock = self._fds()
        # Pass the turnstile: a benchmark waiting for the lock holds it, so new readers queue behind the writer.
        _flock(turnstile, fcntl.LOCK_EX, stop)
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        _flock(lock, fcntl.LOCK_SH, stop)
        held.mode, held.depth = "shared", 1
        try:
            yield
        finally:
            held.mode, held.depth = None, 0
            fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self, stop: Callable[[], bool] | None = None) -> Iterator[None]:
        """Hold the lock exclusively: a benchmark's timing. Waits for the readers in now to finish their batch.

        Raises:
            RuntimeError: this thread holds it shared (waiting would deadlock on itself).
            Cancelled: ``stop`` said so while waiting.
        """
        held = self._held
        if held.mode == "shared":
            raise RuntimeError("the measurement lock is held shared by this thread: a compute phase cannot time")
        if held.depth:
            with self._nested():
                yield
            return
        turnstile, lock = self._fds()
        _flock(turnstile, fcntl.LOCK_EX, stop)  # held while timing: readers and other writers queue here
        try:
            _flock(lock, fcntl.LOCK_EX, stop)
            held.mode, held.depth = "exclusive", 1
            try:
                yield
            finally:
                held.mode, held.depth = None, 0
                fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)

    def yield_to_benchmark(self, stop: Callable[[], bool] | None = None) -> None:
        """Between two batches of a compute step held shared: if a benchmark waits for the lock, let go, queue
        behind it on the turnstile while it times, then hold the lock shared again. A no-op (one non-blocking
        ``flock``) when none waits, or when this thread does not hold the lock shared.

        Raises:
            Cancelled: ``stop`` said so while waiting (the lock is then not held again; the step's hold lets go).
        """
        held = self._held
        if held.mode != "shared":
            return
        turnstile, lock = self._fds()
        try:
            fcntl.flock(turnstile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # a benchmark holds it while it waits for the readers in now (or a reader is passing it)
        else:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
            return
        fcntl.flock(lock, fcntl.LOCK_UN)
        _flock(turnstile, fcntl.LOCK_EX, stop)  # the benchmark's turn: it times, then lets the turnstile go
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        _flock(lock, fcntl.LOCK_SH, stop)

    @contextlib.contextmanager
    def _nested(self) -> Iterator[None]:
        self._held.depth += 1
        try:
            yield
        finally:
            self._held.depth -= 1


def _flock(fd: int, how: int, stop: Callable[[], bool] | None) -> None:
    """``flock``, waiting in short naps while ``stop`` is given, so that a cancelled job stops within its check."""
    if stop is None:
        fcntl.flock(fd, how)
        return
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if stop():
                raise Cancelled("cancelled") from None
            time.sleep(POLL_S)


_LOCK = MeasureLock()


def measure_lock() -> MeasureLock:
    """This process's handle on the host's measurement lock."""
    return _LOCK


def yield_to_benchmark(stop: Callable[[], bool] | None = None) -> None:
    """Called between batches of a step that holds the lock for a library's whole loop (NNCF's and ONNX Runtime's
    calibration): a benchmark that asks meanwhile times at the next batch, not after the step (2-3 s of NNCF
    calibration kept a waiting benchmark, and with it the other process, idle). See
    :meth:`MeasureLock.yield_to_benchmark`."""
    _LOCK.yield_to_benchmark(stop)


def compute_step(stop: Callable[[], bool] | None = None) -> contextlib.AbstractContextManager[None]:
    """Wrap one batch or step of a compute phase (calibration, training, evaluation): it waits while a benchmark
    of another job on this host times, and gives up (Cancelled) when ``stop`` says so meanwhile."""
    return _LOCK.shared(stop)


# --- pinning --------------------------------------------------------------------------------------------------


@dataclass
class _Pinning:
    cores: tuple[int, ...] | None = None
    fds: tuple[int, ...] = ()


_pinning = _Pinning()


def allowed_cpus() -> list[int]:
    """The CPU ids this process may run on, sorted."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def claim_cores(
    threads: int, allowed: Sequence[int], *, prefer: int | None = None, directory: Path | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Claim ``threads`` cores of ``allowed`` for this process: group ``i`` is ``allowed[i*threads:(i+1)*threads]``.

    A core is claimed by holding a file lock on ``core-ID.lock`` (released by the kernel when the process ends,
    however it ends), so claims of all processes of this user on this host are disjoint.

    Args:
        prefer: the group to try first (a Celery pool process's index); then the others in order.

    Returns:
        (cores, open lock files to keep) or None when no group is free.
    """
    directory = directory or lock_dir()
    groups = [tuple(allowed[i : i + threads]) for i in range(0, len(allowed) - threads + 1, threads)]
    if prefer is not None and 0 <= prefer < len(groups):
        groups.insert(0, groups.pop(prefer))
    for group in groups:
        fds: list[int] = []
        for cpu in group:
            fd = _open(directory / f"core-{cpu}.lock")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                break
            fds.append(fd)
        if len(fds) == len(group):
            return group, tuple(fds)
        for fd in fds:
            os.close(fd)  # closing the last descriptor of an open file drops its lock
    return None


def oversubscribed(processes: int, threads: int) -> str | None:
    """What to say when ``processes`` x ``threads`` exceed the CPUs this process may use, or None."""
    cpus = len(allowed_cpus())
    if processes * threads <= cpus:
        return None
    return (
        f"{processes} processes x {threads} threads need {processes * threads} cores and {cpus} are available: "
        "processes that find no free cores share them (their latency figures record isolation none, or exclusive "
        "with no cores)"
    )


def pin_process(threads: int, *, prefer: int | None = None, directory: Path | None = None) -> tuple[int, ...] | None:
    """Pin this process (every thread of it) to ``threads`` cores of its own, for the rest of its life.

    Called once in a pool process, before it runs a job. torch threads are capped by :func:`cap_threads`.

    Returns:
        The cores, or None when none were free: the process shares them (its caller says so, once).
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    release_pinning()
    claimed = claim_cores(max(1, threads), allowed_cpus(), prefer=prefer, directory=directory)
    if claimed is None:
        log.debug("process %s: no %d free core(s) on this host: sharing them", os.getpid(), threads)
        return None
    cores, fds = claimed
    for tid in _threads():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, cores)
    _pinning.cores, _pinning.fds = cores, fds
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(len(cores))
    return cores


@contextlib.contextmanager
def pinned_for(threads: int, *, directory: Path | None = None) -> Iterator[tuple[int, ...] | None]:
    """Pin this process to ``threads`` cores of its own for the block only (``farm quantize``: one trial, in a
    process that outlives it); its affinity is restored after. A process already pinned stays as it is."""
    if _pinning.cores is not None or not hasattr(os, "sched_setaffinity"):
        yield _pinning.cores
        return
    previous = os.sched_getaffinity(0)
    env = {var: os.environ.get(var) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cores = pin_process(threads, directory=directory)
    try:
        yield cores
    finally:
        if cores is not None:
            release_pinning()
            for tid in _threads():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(tid, previous)
            for var, value in env.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value


def _threads() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def release_pinning() -> None:
    """Give the claimed cores back (affinity is left as it is: for tests and a process that re-pins)."""
    for fd in _pinning.fds:
        os.close(fd)
    _pinning.cores, _pinning.fds = None, ()


def pinned_cores() -> tuple[int, ...] | None:
    """The cores this process is pinned to, or None."""
    return _pinning.cores


def cap_threads(threads: int) -> int:
    """``threads``, but never more than the cores this process is pinned to."""
    return min(threads, len(_pinning.cores)) if _pinning.cores else threads


def applied(requested: str) -> str:
    """The isolation a measurement really had: exclusive (the lock), pinned (own cores, the lock held shared), or
    none (no cores of its own: a pinned request that found none still held the lock shared)."""
    if requested == "exclusive":
        return "exclusive"
    return "pinned" if _pinning.cores else "none"


# --- the figures of one measurement ---------------------------------------------------------------------------


class Measured:
    """The isolation figures of one timed measurement: ``isolation``, ``host_load`` and ``cores``."""

    def __init__(self, requested: str) -> None:
        self.requested = requested
        self.host_load: float | None = None

    def figures(self) -> dict[str, Any]:
        cores = pinned_cores()
        return {
            "isolation": applied(self.requested),
            "host_load": self.host_load,
            "cores": list(cores) if cores else None,
        }


@contextlib.contextmanager
def measuring(requested: str, stop: Callable[[], bool] | None = None) -> Iterator[Measured]:
    """Time inside: exclusively on this host when ``requested`` is exclusive (waiting until ``stop`` says so at
    most), with the host's load sampled over the timing, not over the wait for the lock.

    ``pinned`` holds the lock shared, as a compute phase does: it claims no exclusivity, but it is compute all the
    same, so it waits while another job times exclusively rather than disturb it. ``none`` leaves the lock alone.
    """
    measured = Measured(requested)
    hold: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if requested == "exclusive":
        hold = _LOCK.exclusive(stop)
    elif requested == "pinned":
        hold = _LOCK.shared(stop)
    with hold:
        before = cpu_times()
        try:
            yield measured
        finally:
            measured.host_load = host_load(before, cpu_times())
