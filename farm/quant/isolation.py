"""Isolation of a measurement on a shared host: a host-wide measurement lock, pinning of pool processes to their own
cores, and the host's load while a benchmark times.

Jobs that run side by side on one host (a local ``-j N`` pool, ``farm worker --concurrency N``) contaminate each
other's timings: one job calibrating or training on the cores another job is timing on made a static model look
78 % slower. Two remedies, both host-wide and across processes:

- **Pinning** (:mod:`farm.quant.pinning`): each pool process claims ``threads`` cores of its own (a file lock per
  core, held for the process's life, so claims are disjoint whichever executor started the process) and sets its
  affinity to them; torch threads never exceed them. When the cores run out the process shares them, and says so.
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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from farm.errors import Cancelled
from farm.quant.bench_config import ISOLATION_MODES
from farm.quant.hostload import CpuTimes, cpu_times, host_load, is_busy
from farm.quant.lockdir import LOCK_DIR_ENV as LOCK_DIR_ENV
from farm.quant.lockdir import lock_dir as lock_dir
from farm.quant.lockdir import open_lock as _open
from farm.quant.pinning import applied, pinned_cores

log = logging.getLogger("farm.isolation")

#: What ``benchmark.isolation`` may ask for: the lock and pinning, pinning only, or neither.
MODES = ISOLATION_MODES
#: How often a wait for the lock checks whether its job was cancelled.
POLL_S = 0.01


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
        _share(turnstile, lock, stop)
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

    def yield_to_benchmark(
        self, stop: Callable[[], bool] | None = None, on_wait: Callable[[], None] | None = None
    ) -> bool:
        """Between two batches of a compute step held shared: if a benchmark waits for the lock, let go (calling
        ``on_wait`` first), queue behind it on the turnstile while it times, then hold the lock shared again
        (True). A no-op (one non-blocking ``flock``; False) when none waits, or when this thread does not hold the
        lock shared.

        Raises:
            Cancelled: ``stop`` said so while waiting (the lock is then not held again; the step's hold lets go).
        """
        held = self._held
        if held.mode != "shared" or held.files is None or held.files.pid != os.getpid():
            return False  # nothing held here (a forked child's inherited hold is its parent's to give up)
        turnstile, lock = self._fds()
        try:
            fcntl.flock(turnstile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # a benchmark holds it while it waits for the readers in now (or a reader is passing it)
        else:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
            return False
        if on_wait is not None:
            on_wait()
        fcntl.flock(lock, fcntl.LOCK_UN)
        _share(turnstile, lock, stop)  # behind the benchmark: it times, then lets the turnstile go
        return True

    @contextlib.contextmanager
    def _nested(self) -> Iterator[None]:
        self._held.depth += 1
        try:
            yield
        finally:
            self._held.depth -= 1


def _share(turnstile: int, lock: int, stop: Callable[[], bool] | None) -> None:
    """Pass the turnstile (a benchmark waiting for the lock holds it, so new readers queue behind it), then hold
    the lock shared."""
    _flock(turnstile, fcntl.LOCK_EX, stop)
    fcntl.flock(turnstile, fcntl.LOCK_UN)
    _flock(lock, fcntl.LOCK_SH, stop)


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


# --- the figures of one measurement ---------------------------------------------------------------------------


class Measured:
    """The isolation figures of one timed measurement: ``isolation``, ``host_load`` and ``cores``; and, for the
    timing loop, :meth:`poll` between blocks and :meth:`waited`."""

    def __init__(self, requested: str, stop: Callable[[], bool] | None = None) -> None:
        self.requested = requested
        self.stop = stop
        self.host_load: float | None = None
        self.started: CpuTimes | None = None
        self.paused_s = 0.0

    def poll(self) -> bool:
        """Between two blocks (a side-by-side timing: two pairs): a pinned timing (held shared, as compute is) lets a
        benchmark that waits for the lock time first, exclusively, then goes on; the wait is left out of its time
        budget (:meth:`waited`) and of its host load. Without it an exclusive timing waited for the whole of a
        pinned one (2-3 s under a tune's -j 2). Then whether the job was cancelled.

        Raises:
            Cancelled: ``stop`` said so while waiting.
        """
        if self.requested == "pinned":
            before: list[tuple[float, CpuTimes | None]] = []
            if _LOCK.yield_to_benchmark(self.stop, lambda: before.append((time.perf_counter(), cpu_times()))):
                began, counters = before[0]
                self.paused_s += time.perf_counter() - began
                self.started = _skip(self.started, counters, cpu_times())
        return bool(self.stop and self.stop())

    def waited(self) -> float:
        """Seconds :meth:`poll` has given to other jobs' benchmarks so far: not this timing's time."""
        return self.paused_s

    def busy(self) -> bool:
        """Whether other processes have kept the host busy (``hostload.is_busy``) since the timing began: an
        exclusive timing's reason to wait longer for a settled figure. Pinned or unisolated, the load is this host's
        own other jobs (a -j 2 pool's sibling), and waiting for a quieter host would only stretch the pool's timings."""
        return self.requested == "exclusive" and is_busy(host_load(self.started, cpu_times()))

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
    measured = Measured(requested, stop)
    hold: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if requested == "exclusive":
        hold = _LOCK.exclusive(stop)
    elif requested == "pinned":
        hold = _LOCK.shared(stop)
    with hold:
        measured.started = cpu_times()
        try:
            yield measured
        finally:
            measured.host_load = host_load(measured.started, cpu_times())


def _skip(started: CpuTimes | None, before: CpuTimes | None, after: CpuTimes | None) -> CpuTimes | None:
    """``started`` moved on by the counters' moves from ``before`` to ``after``: a wait left out of a host load."""
    if started is None or before is None or after is None:
        return started
    moved = (after.busy_s - before.busy_s, after.total_s - before.total_s, after.own_s - before.own_s)
    return CpuTimes(started.busy_s + moved[0], started.total_s + moved[1], started.own_s + moved[2])
