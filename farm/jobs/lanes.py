"""The local run's worker processes as lanes: one single-process pool each, and the jobs released to the run that no
lane holds yet, given out as lanes come free (farm/jobs/local.py runs them).

A process pays for each deploy runtime once, on its first job there: importing OpenVINO and NNCF, ONNX Runtime's
quantization tools (0.3-1.3 s a runtime; a torch job's imports come with the engine, before the first job). One
shared queue handed every process every runtime's jobs in turn, so each paid for every runtime: a tune's stage 1
(OpenVINO's, torch's and ONNX Runtime's global recipes) had both processes import OpenVINO and NNCF side by side,
then both ONNX Runtime's tools. Here a free lane takes, in release order (slowest runtime first: farm.jobs.stages),
the first job that costs it nothing to start — a torch job, a job of a runtime it has loaded, or of one no lane has
loaded yet — so at a stage's start the lanes take different runtimes. When nothing pending is such a job, it takes
the first one anyway, unless the only lane that has that runtime loaded is running one of its jobs and will likely
be free before this lane could load it: one job left of that runtime, and that lane's job has run for less than the
runtime's jobs took on average so far in this run (no estimate yet: it does not wait).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

#: Runtimes whose jobs cost nothing extra in any process (the engine imports torch before the first job).
NEUTRAL = (None, "torch")


@dataclass
class Lane:
    """One worker process's pool, what it runs now, and the runtimes it has run a job of."""

    pool: ProcessPoolExecutor
    runtimes: set[str] = field(default_factory=set)
    job: tuple[int, str | None, float] | None = None  # (job id, runtime, started at), while it runs one

    def processes(self) -> list[Any]:
        return list((getattr(self.pool, "_processes", None) or {}).values())  # None once the pool is shut down


class Lanes:
    """The lanes of a local run, the jobs waiting for one, and the futures of the jobs they run."""

    def __init__(self, count: int, new_pool: Callable[[], ProcessPoolExecutor], run: Callable[[int], Any]) -> None:
        self.new_pool, self.run = new_pool, run
        self.lanes = [Lane(new_pool()) for _ in range(max(1, count))]
        self.pending: list[tuple[int, str | None]] = []  # (job id, runtime), in release order
        self.futures: dict[Future[Any], Lane] = {}
        self.took: dict[str, list[float]] = {}  # seconds each finished job of a runtime ran, in this run

    def add(self, job_id: int, runtime: str | None) -> None:
        """A job released to the run: it runs when a lane takes it (:meth:`dispatch`)."""
        self.pending.append((job_id, runtime))

    def dispatch(self, submit: Callable[[Lane, int], Future[Any]] | None = None) -> None:
        """Give each free lane a pending job (:func:`choose`): first every free lane a job that costs it nothing to
        start, then the lanes still free one that does (so a free lane that has a runtime loaded gets its job before
        another free lane loads it); ``submit`` starts a job (default: ``run`` in the lane's pool)."""
        start = submit or (lambda lane, job_id: lane.pool.submit(self.run, job_id))
        for fallback in (False, True):
            for lane in [lane for lane in self.lanes if lane.job is None]:
                index = choose(lane, self.lanes, self.pending, self.took, time.monotonic(), fallback=fallback)
                if index is not None:
                    self._start(lane, index, start)

    def _start(self, lane: Lane, index: int, start: Callable[[Lane, int], Future[Any]]) -> None:
        job_id, runtime = self.pending[index]
        try:
            future = start(lane, job_id)
        except BrokenProcessPool:  # its process died while it had no job: a new one takes this job
            self.replace(lane)
            future = start(lane, job_id)
        del self.pending[index]  # once started: a submit that raises leaves it pending
        lane.job = (job_id, runtime, time.monotonic())
        if runtime not in NEUTRAL:
            lane.runtimes.add(str(runtime))
        self.futures[future] = lane

    def finished(self, future: Future[Any]) -> int:
        """The job of ``future`` ended: its lane is free again. Returns the job's id."""
        lane = self.futures.pop(future)
        assert lane.job is not None
        job_id, runtime, started = lane.job
        lane.job = None
        if runtime not in NEUTRAL:
            self.took.setdefault(str(runtime), []).append(time.monotonic() - started)
        return job_id

    def replace(self, lane: Lane) -> None:
        """A lane whose process died: a new process (the runtimes it had loaded went with the old one)."""
        lane.pool.shutdown(wait=True, cancel_futures=True)
        lane.pool, lane.runtimes, lane.job = self.new_pool(), set(), None

    def processes(self) -> list[Any]:
        return [p for lane in self.lanes for p in lane.processes()]

    def shutdown(self) -> None:
        """Shut every lane's pool down, the processes ending together (then joined)."""
        for lane in self.lanes:
            lane.pool.shutdown(wait=False, cancel_futures=True)
        for lane in self.lanes:
            lane.pool.shutdown(wait=True)


def choose(
    lane: Lane,
    lanes: list[Lane],
    pending: list[tuple[int, str | None]],
    took: dict[str, list[float]],
    now: float,
    *,
    fallback: bool = True,
) -> int | None:
    """The index in ``pending`` of the job free ``lane`` takes, or None when it had better wait (see the module's
    docstring). ``fallback`` False: only a job that costs it nothing to start (:meth:`Lanes.dispatch` asks every
    free lane that first)."""
    others = [other for other in lanes if other is not lane]

    def loaded_elsewhere(runtime: str | None) -> bool:
        return runtime not in NEUTRAL and any(runtime in other.runtimes for other in others)

    for index, (_, runtime) in enumerate(pending):
        if runtime in NEUTRAL or runtime in lane.runtimes or not loaded_elsewhere(runtime):
            return index
    if not pending or not fallback:
        return None
    runtime = pending[0][1]
    left = sum(1 for _, r in pending if r == runtime)
    owners = [other for other in others if runtime in other.runtimes]
    if left == 1 and owners and all(_soon_free(other, runtime, took, now) for other in owners):
        return None
    return 0


def _soon_free(lane: Lane, runtime: str | None, took: dict[str, list[float]], now: float) -> bool:
    """Whether ``lane`` is running a job of ``runtime`` that has run for less than that runtime's jobs took on
    average (a free lane that has it loaded took the job in :meth:`Lanes.dispatch`'s first pass)."""
    if lane.job is None or lane.job[1] != runtime or not took.get(str(runtime)):
        return False
    history = took[str(runtime)]
    return now - lane.job[2] < sum(history) / len(history)
