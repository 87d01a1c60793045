"""The local run's worker processes as lanes: one single-process pool each, and the jobs released to the run that no
lane holds yet, given out as lanes come free (farm/jobs/local.py runs them).

A process pays for each deploy runtime once, on its first job there: importing OpenVINO and NNCF, ONNX Runtime's
quantization tools (1.0-1.3 s a runtime on digits-cnn; a torch job's imports come with the engine, before the first
job; a process started early may have loaded one already: farm/jobs/local_workers.py). One shared queue handed every
process every runtime's jobs in turn, so each paid for every runtime. Here a free lane takes, in release order
(slowest runtime first: farm.jobs.stages):

1. a job of a runtime it alone has loaded (no other lane can start it as cheaply);
2. else the first job that costs it nothing to start: a torch job, one of a runtime it has loaded, or of one no lane
   has loaded yet — so at a stage's start the lanes take different runtimes;
3. else a job of a runtime only other lanes have loaded, when helping them is worth loading it: the work of that
   runtime still to do (its pending jobs, and what its lanes' current jobs have left, at this run's averages)
   shared among the lanes that have it exceeds what this lane would spend loading it and running one job (the
   load: how much longer this run's first job of that runtime in a lane took than its others; until that is known,
   one job's time; what a running job has left: its runtime's average less its time so far, or as long again once
   past it). The runtimes are tried in release order; none worth it: the lane waits, and is asked again whenever a
   job ends or is released. With no average yet for a runtime it does not wait. A process's first job is left out
   of the averages: its time includes the process's start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from farm.jobs.local_workers import end_pools, stop_unused

#: Runtimes whose jobs cost nothing extra in any process (the engine imports torch before the first job).
NEUTRAL = (None, "torch")


@dataclass
class Lane:
    """One worker process's pool, what it runs now, and the runtimes it has run a job of."""

    pool: ProcessPoolExecutor
    runtimes: set[str] = field(default_factory=set)
    job: tuple[int, str | None, float, bool] | None = None  # (job id, runtime, started at, loads it), while running
    ran: bool = False  # it was given a job (one that never was holds nothing: its process is stopped at the end)
    #: Its process has run no job yet: the first one's time includes the process's start (the engine, a preload).
    cold: bool = True

    def processes(self) -> list[Any]:
        return list((getattr(self.pool, "_processes", None) or {}).values())  # None once the pool is shut down


@dataclass
class History:
    """How long this run's finished jobs of each runtime took: those that loaded it in their lane (``loading``) and
    the others (``took``)."""

    took: dict[str, list[float]] = field(default_factory=dict)
    loading: dict[str, list[float]] = field(default_factory=dict)

    def mean(self, runtime: str) -> float | None:
        """A job's usual time on ``runtime`` (its loading jobs only while there is nothing else), or None."""
        times = self.took.get(runtime) or self.loading.get(runtime)
        return sum(times) / len(times) if times else None

    def load(self, runtime: str) -> float | None:
        """What loading ``runtime`` in a process costs: its loading jobs' mean less the others', or None."""
        first, rest = self.loading.get(runtime), self.took.get(runtime)
        if not first or not rest:
            return None
        return max(0.0, sum(first) / len(first) - sum(rest) / len(rest))


class Lanes:
    """The lanes of a local run, the jobs waiting for one, and the futures of the jobs they run."""

    def __init__(self, count: int, new_pool: Callable[[], ProcessPoolExecutor], run: Callable[[int], Any]) -> None:
        self.new_pool, self.run = new_pool, run
        self.lanes: list[Lane] = []
        try:
            for _ in range(max(1, count)):
                self.lanes.append(self._lane(new_pool()))
        except BaseException:  # Ctrl-C while they are made: the processes started early are not left behind
            stop_unused([lane.pool for lane in self.lanes])
            raise
        self.pending: list[tuple[int, str | None]] = []  # (job id, runtime), in release order
        self.futures: dict[Future[Any], Lane] = {}
        self.history = History()

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
                index = choose(lane, self.lanes, self.pending, self.history, time.monotonic(), fallback=fallback)
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
        loads = runtime not in NEUTRAL and runtime not in lane.runtimes
        lane.job, lane.ran = (job_id, runtime, time.monotonic(), loads), True
        if runtime not in NEUTRAL:
            lane.runtimes.add(str(runtime))
        self.futures[future] = lane

    def finished(self, future: Future[Any]) -> int:
        """The job of ``future`` ended: its lane is free again. Returns the job's id."""
        lane = self.futures.pop(future)
        assert lane.job is not None
        job_id, runtime, started, loaded = lane.job
        lane.job, cold, lane.cold = None, lane.cold, False
        if not cold:  # a process's first job also waited for it to start: it tells neither a job's time nor a load
            times = self.history.loading if loaded else self.history.took
            times.setdefault(str(runtime), []).append(time.monotonic() - started)  # torch's too; "None": stage jobs
        return job_id

    def replace(self, lane: Lane) -> None:
        """A lane whose process died: a new process (the runtimes it had loaded went with the old one)."""
        lane.pool.shutdown(wait=True, cancel_futures=True)
        new = self._lane(self.new_pool())
        lane.pool, lane.runtimes, lane.job, lane.cold = new.pool, new.runtimes, None, True

    @staticmethod
    def _lane(pool: ProcessPoolExecutor) -> Lane:
        """A lane of ``pool``, with the runtimes its process loads before its first job (a Starter's LanePool)."""
        return Lane(pool, runtimes=set(getattr(pool, "preloaded", ())))

    def processes(self) -> list[Any]:
        return [p for lane in self.lanes for p in lane.processes()]

    def shutdown(self, stop: bool = False) -> None:
        """Shut every lane's pool down, the processes ending together (then joined); a lane never given a job has
        its process (started early, maybe still importing the engine) stopped at once, and with ``stop`` (a run
        that failed) every process is: a job still running would otherwise hold the command until it ended."""
        unused = [lane.pool for lane in self.lanes if stop or not lane.ran]
        end_pools(unused, stop=True)
        end_pools([lane.pool for lane in self.lanes if lane.pool not in unused])


def choose(
    lane: Lane,
    lanes: list[Lane],
    pending: list[tuple[int, str | None]],
    history: History,
    now: float,
    *,
    fallback: bool = True,
) -> int | None:
    """The index in ``pending`` of the job free ``lane`` takes, or None when it had better wait (see the module's
    docstring). ``fallback`` False: only a job that costs it nothing to start (:meth:`Lanes.dispatch` asks every
    free lane that first)."""
    others = [other for other in lanes if other is not lane]

    def owners(runtime: str | None) -> list[Lane]:
        return [] if runtime in NEUTRAL else [other for other in others if runtime in other.runtimes]

    for index, (_, runtime) in enumerate(pending):  # 1: its own runtime, which no other lane starts as cheaply
        if runtime not in NEUTRAL and runtime in lane.runtimes and not owners(runtime):
            return index
    for index, (_, runtime) in enumerate(pending):  # 2: free to start
        if runtime in NEUTRAL or runtime in lane.runtimes or not owners(runtime):
            return index
    if not fallback:
        return None
    for runtime in dict.fromkeys(r for _, r in pending):  # 3: worth loading, in release order
        if _worth_loading(str(runtime), owners(runtime), pending, history, now):
            return next(i for i, (_, r) in enumerate(pending) if r == runtime)
    return None


def _worth_loading(
    runtime: str, owners: list[Lane], pending: list[tuple[int, str | None]], history: History, now: float
) -> bool:
    """Whether a free lane should load ``runtime`` to help the lanes that have it (``owners``): their share of its
    work still to do exceeds a load and one job (no average for it yet: yes)."""
    mean = history.mean(runtime)
    if mean is None:
        return True
    left = sum(1 for _, r in pending if r == runtime) * mean
    for owner in owners:  # what their current jobs have left: their runtimes' average less their time so far, or,
        if owner.job is not None:  # past it, as long again (a QAT job an hour in is not about to end)
            usual = history.mean(str(owner.job[1]))
            ran = now - owner.job[2]
            expected = usual if usual is not None else mean
            left += expected - ran if ran < expected else ran
    load = history.load(runtime)
    return left / len(owners) > (mean if load is None else load) + mean
