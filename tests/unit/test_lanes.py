"""How a local run gives jobs to its worker processes (farm/jobs/lanes.py): a free process takes a job that costs it
nothing to start before one of a runtime another process has loaded, and never idles while that costs more."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from farm.jobs.lanes import Lane, Lanes, choose


class FakePool:
    """A pool that records what it was given and never runs it."""

    def __init__(self) -> None:
        self.given: list[int] = []

    def submit(self, fn: Any, job_id: int) -> Future[Any]:
        self.given.append(job_id)
        return Future()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def lanes(count: int) -> Lanes:
    return Lanes(count, FakePool, lambda job_id: None)  # type: ignore[arg-type]


def given(run: Lanes) -> list[list[int]]:
    return [lane.pool.given for lane in run.lanes]  # type: ignore[attr-defined]


def finish(run: Lanes, lane: int) -> int:
    future = next(f for f, holder in run.futures.items() if holder is run.lanes[lane])
    return run.finished(future)


def stage_one() -> list[tuple[int, str | None]]:
    """A tune's stage 1 as released (slowest runtime first): OpenVINO's globals and fp32, torch's, ONNX Runtime's."""
    return [(2, "openvino"), (3, "openvino"), (4, "openvino"), (5, None), (6, None), (7, "onnxruntime"),
            (8, "onnxruntime"), (9, "onnxruntime")]  # fmt: skip


def test_at_a_stage_start_the_processes_take_different_runtimes() -> None:
    run = lanes(2)
    for job in stage_one():
        run.add(*job)
    run.dispatch()
    assert given(run) == [[2], [5]]  # not both OpenVINO: the second process starts with torch
    assert run.lanes[0].runtimes == {"openvino"} and run.lanes[1].runtimes == set()
    finish(run, 1)
    run.dispatch()
    assert given(run)[1] == [5, 6]  # torch again, OpenVINO's jobs wait for the process that loaded it
    finish(run, 1)
    run.dispatch()
    assert given(run)[1] == [5, 6, 7]  # a runtime nobody has loaded yet
    finish(run, 0)
    run.dispatch()
    assert given(run)[0] == [2, 3]  # OpenVINO's process keeps to OpenVINO


def test_one_queue_order_when_there_is_one_process() -> None:
    run = lanes(1)
    for job in stage_one():
        run.add(*job)
    order = []
    for _ in stage_one():
        run.dispatch()
        order.append(finish(run, 0))
    assert order == [job for job, _ in stage_one()]


def test_a_free_process_takes_a_loaded_runtime_elsewhere_rather_than_idle() -> None:
    """Several jobs of a runtime only the other process has loaded: this one loads it too and helps."""
    run = lanes(2)
    run.lanes[0].runtimes.add("openvino")
    for job in [(1, "openvino"), (2, "openvino"), (3, "openvino")]:
        run.add(*job)
    run.dispatch()
    assert given(run) == [[1], [2]]


def test_the_last_job_of_a_runtime_waits_for_the_process_that_will_soon_be_free() -> None:
    busy = Lane(FakePool(), {"openvino"}, (1, "openvino", 100.0))  # type: ignore[arg-type]
    free = Lane(FakePool())  # type: ignore[arg-type]
    pending: list[tuple[int, str | None]] = [(2, "openvino")]
    took = {"openvino": [0.5, 0.5]}
    assert choose(free, [busy, free], pending, took, now=100.2) is None  # 0.2 s into a 0.5 s job: it waits
    assert choose(free, [busy, free], pending, took, now=101.0) == 0  # past the runtime's usual time: it takes it
    assert choose(free, [busy, free], pending, {}, now=100.2) == 0  # no estimate yet: it never waits
    two = [(2, "openvino"), (3, "openvino")]
    assert choose(free, [busy, free], two, took, now=100.2) == 0  # two left: one for each


def test_a_lane_whose_process_died_starts_cold() -> None:
    run = lanes(2)
    run.add(1, "openvino")
    run.dispatch()
    lane = run.lanes[0]
    assert lane.runtimes == {"openvino"}
    run.finished(next(iter(run.futures)))
    run.replace(lane)
    assert lane.runtimes == set() and lane.job is None and lane.pool.given == []  # type: ignore[attr-defined]


def test_a_lane_whose_process_died_while_idle_runs_its_next_job_in_a_new_one() -> None:
    from concurrent.futures.process import BrokenProcessPool

    class DeadPool(FakePool):
        def submit(self, fn: Any, job_id: int) -> Future[Any]:
            raise BrokenProcessPool("a child process terminated abruptly")

    pools: list[FakePool] = [DeadPool()]
    run = Lanes(1, lambda: pools.pop() if pools else FakePool(), lambda job_id: None)  # type: ignore[arg-type,return-value]
    run.add(7, "openvino")
    run.dispatch()
    lane = run.lanes[0]
    assert lane.pool.given == [7] and lane.job is not None and lane.job[0] == 7  # type: ignore[attr-defined]
    assert lane.runtimes == {"openvino"} and len(run.futures) == 1


def test_a_free_lane_that_has_the_runtime_loaded_gets_its_job_before_another_free_lane_loads_it() -> None:
    run = lanes(2)
    run.lanes[0].runtimes.add("onnxruntime")
    run.lanes[1].runtimes.add("openvino")
    run.add(2, "openvino")
    run.dispatch()
    assert given(run) == [[], [2]]  # lane 0 is asked first, and would have loaded OpenVINO for it


def test_a_job_whose_start_fails_stays_pending() -> None:
    class Refusing(FakePool):
        def submit(self, fn: Any, job_id: int) -> Future[Any]:
            raise RuntimeError("cannot schedule new futures after shutdown")

    run = Lanes(1, Refusing, lambda job_id: None)  # type: ignore[arg-type]
    run.add(3, None)
    try:
        run.dispatch()
    except RuntimeError:
        pass
    assert run.pending == [(3, None)] and not run.futures and run.lanes[0].job is None
