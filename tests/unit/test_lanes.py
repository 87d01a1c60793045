"""How a local run gives jobs to its worker processes (farm/jobs/lanes.py): a free process takes a job that costs it
nothing to start before one of a runtime another process has loaded, and never idles while that costs more."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest

from farm.jobs.lanes import History, Lane, Lanes, choose


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
    busy = Lane(FakePool(), {"openvino"}, (1, "openvino", 100.0, False))  # type: ignore[arg-type]
    free = Lane(FakePool())  # type: ignore[arg-type]
    pending: list[tuple[int, str | None]] = [(2, "openvino")]
    usual = History(took={"openvino": [0.5, 0.5]})
    # 0.8 s of OpenVINO work left (this job, and 0.3 s of the running one) < a load (one job's time, unmeasured
    # yet) and a job: it waits.
    assert choose(free, [busy, free], pending, usual, now=100.2) is None
    # 1 s into a 0.5 s job: expected to run as long again, 1.5 s left: it loads OpenVINO and takes the job.
    assert choose(free, [busy, free], pending, usual, now=101.0) == 0
    assert choose(free, [busy, free], pending, History(), now=100.2) == 0  # no estimate yet: it never waits
    two: list[tuple[int, str | None]] = [(2, "openvino"), (3, "openvino")]
    assert choose(free, [busy, free], two, usual, now=100.2) == 0  # 1.3 s left: worth a load and a job


def test_a_measured_load_decides_whether_to_help() -> None:
    busy = Lane(FakePool(), {"openvino"}, (1, "openvino", 100.0, False))  # type: ignore[arg-type]
    free = Lane(FakePool())  # type: ignore[arg-type]
    # The first job of OpenVINO in a process took 1.7 s, the others 0.5 s: a load costs 1.2 s.
    history = History(took={"openvino": [0.5, 0.5]}, loading={"openvino": [1.7]})
    assert history.load("openvino") == pytest.approx(1.2) and history.mean("openvino") == 0.5
    two: list[tuple[int, str | None]] = [(2, "openvino"), (3, "openvino")]
    assert choose(free, [busy, free], two, history, now=100.2) is None  # 1.0 + 0.3 s left < 1.2 + 0.5
    four = [*two, (4, "openvino"), (5, "openvino")]
    assert choose(free, [busy, free], four, history, now=100.2) == 0  # 2.3 s left


def test_a_lane_does_not_wait_out_a_long_job_of_the_process_that_has_the_runtime() -> None:
    """The only OpenVINO process is an hour into a torch job that usually takes 2 s: one OpenVINO job waits for it
    no longer than a load takes."""
    busy = Lane(FakePool(), {"openvino"}, (1, "torch", 100.0, False))  # type: ignore[arg-type]
    free = Lane(FakePool())  # type: ignore[arg-type]
    history = History(took={"torch": [2.0], "openvino": [0.5]}, loading={"openvino": [2.5]})  # a load: 2 s
    pending: list[tuple[int, str | None]] = [(2, "openvino")]
    assert choose(free, [busy, free], pending, history, now=100.5) is None  # 1.5 + 0.5 s left < 2 + 0.5: it waits
    assert choose(free, [busy, free], pending, history, now=3700.0) == 0


def test_a_lane_loads_the_runtime_worth_it_and_skips_one_about_to_be_done() -> None:
    ov = Lane(FakePool(), {"openvino"}, (1, "openvino", 100.0, False))  # type: ignore[arg-type]
    ort = Lane(FakePool(), {"onnxruntime"}, (2, "onnxruntime", 100.0, False))  # type: ignore[arg-type]
    free = Lane(FakePool())  # type: ignore[arg-type]
    history = History(took={"openvino": [0.6], "onnxruntime": [0.4]})
    pending: list[tuple[int, str | None]] = [(3, "openvino"), *((i, "onnxruntime") for i in range(4, 10))]
    # OpenVINO comes first but 0.9 s of it is left; ONNX Runtime has 2.5 s of work left for one lane.
    assert choose(free, [ov, ort, free], pending, history, now=100.3) == 1


def test_a_lane_takes_the_runtime_it_alone_has_loaded_before_a_torch_job() -> None:
    run = lanes(2)
    run.lanes[0].runtimes.add("openvino")
    run.add(5, None)
    run.add(2, "openvino")
    run.dispatch()
    # The torch job goes to the lane that could not start OpenVINO's without loading it.
    assert given(run) == [[2], [5]]


def test_a_job_that_loads_its_runtime_counts_as_a_load_and_a_process_first_job_as_nothing() -> None:
    run = lanes(1)
    for job in [(1, "openvino"), (2, None), (3, "onnxruntime"), (4, "onnxruntime")]:
        run.add(*job)
    for _ in range(4):
        run.dispatch()
        finish(run, 0)
    # Job 1 waited for its process to start (and loaded OpenVINO): neither a job's time nor a load's.
    assert "openvino" not in run.history.took and "openvino" not in run.history.loading
    assert len(run.history.took["None"]) == 1
    assert len(run.history.loading["onnxruntime"]) == 1 and len(run.history.took["onnxruntime"]) == 1


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
