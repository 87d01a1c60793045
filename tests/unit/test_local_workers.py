"""A local run's worker processes start before the run is written (farm/jobs/local_workers.py): as many as it has
lanes and jobs, importing the engine only when a job needs it, and a process no lane took, or that never got a job,
is stopped rather than left to finish importing torch."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from farm.jobs.lanes import Lanes
from farm.jobs.local_workers import Starter, default_jobs, end_pools, start_workers
from tests.sweeps import TOY_DATA, TOY_MLP, describe, farm, write_spec


def plan(methods: list[str], threads: int = 1) -> Any:
    jobs = [SimpleNamespace(spec=SimpleNamespace(method=SimpleNamespace(method=m))) for m in methods]
    return SimpleNamespace(spec=SimpleNamespace(benchmark=SimpleNamespace(threads=threads)), jobs=jobs)


def processes(starter: Starter) -> list[Any]:
    return [p for pool in starter.started for p in pool._processes.values()]  # type: ignore[attr-defined]


def test_a_run_starts_one_process_per_lane_it_can_keep_busy_and_close_stops_them(sweep_home: Path) -> None:
    starter = start_workers(plan(["static", "static", "static"]), 2, "file:///tmp/unused")
    try:
        assert starter.warm and len(starter.started) == 2
        procs = processes(starter)
        assert len(procs) == 2 and all(p.is_alive() for p in procs)  # started now, before any job was submitted
    finally:
        starter.close()
    for proc in procs:
        proc.join(10)
        # Ended by the close (mid-import of the engine), not left to finish it and exit on their own.
        assert proc.exitcode == -signal.SIGTERM
    assert starter.started == []


def test_bookkeeping_jobs_import_nothing_and_a_run_never_starts_more_processes_than_jobs(sweep_home: Path) -> None:
    starter = start_workers(plan(["noop"]), None, "file:///tmp/unused")
    try:
        assert not starter.warm and len(starter.started) == 1 <= default_jobs(1)
        pool = starter.new_pool()  # a lane takes the process started early...
        assert pool._processes and starter.started == []  # type: ignore[attr-defined]
        later = starter.new_pool()  # ...and a lane after that gets one that starts with its first job
        assert not later._processes  # type: ignore[attr-defined]
    finally:
        starter.close()
        for p in (pool, later):
            p.shutdown(wait=True, cancel_futures=True)


class Proc:
    def __init__(self) -> None:
        self.terminated = False
        self.joined = False

    def terminate(self) -> None:
        self.terminated = True

    def join(self, timeout: float | None = None) -> None:
        self.joined = True


class Pool:
    def __init__(self) -> None:
        self._processes = {1: Proc()}
        self.shutdowns: list[bool] = []

    def submit(self, fn: Any, job_id: int) -> Any:
        from concurrent.futures import Future

        return Future()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self.shutdowns.append(wait)


def test_a_failed_run_stops_every_lanes_process_rather_than_wait_for_its_job() -> None:
    run = Lanes(2, Pool, lambda job_id: None)  # type: ignore[arg-type]
    run.add(7, None)
    run.dispatch()
    run.shutdown(stop=True)
    assert all(lane.pool._processes[1].terminated for lane in run.lanes)  # type: ignore[attr-defined]
    assert all(lane.pool._processes[1].joined for lane in run.lanes)  # type: ignore[attr-defined]


def test_a_lane_never_given_a_job_is_stopped_and_one_that_ran_is_shut_down_cleanly() -> None:
    run = Lanes(2, Pool, lambda job_id: None)  # type: ignore[arg-type]
    run.add(7, None)
    run.dispatch()
    used, idle = (lane.pool for lane in run.lanes)
    run.shutdown()
    # Both shut down at once, then waited for: the used one's process ends after its job, the idle one's at once.
    used_proc, idle_proc = used._processes[1], idle._processes[1]  # type: ignore[attr-defined]
    assert not used_proc.terminated and used_proc.joined and used.shutdowns == [False]  # type: ignore[attr-defined]
    assert idle_proc.terminated and idle_proc.joined and idle.shutdowns == [False]  # type: ignore[attr-defined]


@pytest.mark.parametrize("stop", [False, True], ids=["after its jobs", "stopped"])
def test_ended_pools_leave_every_process_reaped_with_its_exit_status(stop: bool) -> None:
    from concurrent.futures import ProcessPoolExecutor

    pools = [ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) for _ in range(2)]
    for pool in pools:
        pool.submit(os.getpid).result(timeout=60)
    procs = [proc for pool in pools for proc in pool._processes.values()]  # type: ignore[attr-defined]
    end_pools(pools, stop=stop)
    # Read at once: a pool shut down twice (wait=False, then wait=True) used to return with its processes
    # still ending, and a reaping race left one with no exit status.
    assert [proc.exitcode for proc in procs] == [-signal.SIGTERM if stop else 0] * 2
    assert not set(procs) & set(multiprocessing.active_children())


def test_a_cached_rerun_leaves_no_worker_process_behind(sweep_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, f"name: again\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\nmethods: [fp32]\n")
    before = set(multiprocessing.active_children())  # another test's, if any: not this one's to judge
    first = farm("sweep", "run", str(spec), "-j", "2")
    assert first.exit_code == 0, describe(first)
    # The process that ran the job ended with the run: joined before the command returned.
    assert set(multiprocessing.active_children()) <= before
    again = farm("sweep", "run", str(spec), "-j", "2")
    assert again.exit_code == 0, describe(again)
    assert "1 cached, 0 to run" in " ".join(again.stderr.split()), again.stderr
    # The processes started for the re-run found nothing to do: stopped, none left running or a zombie.
    assert set(multiprocessing.active_children()) <= before


def test_the_processes_after_the_first_each_preload_a_runtime_of_the_run_and_their_lanes_know_it(
    sweep_home: Path,
) -> None:
    jobs = ["static"] * 5
    p = plan(jobs)
    for job, runtime in zip(p.jobs, ["onnxruntime", "openvino", "torch", "openvino", "tensorrt"], strict=True):
        job.spec.method.runtime = runtime
    starter = start_workers(p, 3, "file:///tmp/unused")
    try:
        # The first process takes the run's first job (its fp32 reference); the next ones load the runtimes whose
        # builds cost most first (OpenVINO's NNCF calibration before ONNX Runtime's quantizer). TensorRT has no
        # preload (and is not installed here): no process is given it.
        assert [pool.preloaded for pool in starter.started] == [
            frozenset(),
            frozenset({"openvino"}),
            frozenset({"onnxruntime"}),
        ]
        run = Lanes(3, starter.new_pool, lambda job_id: None)
        assert [lane.runtimes for lane in run.lanes] == [set(), {"openvino"}, {"onnxruntime"}]
        run.shutdown()  # none was given a job: all stopped
    finally:
        starter.close()
    cold = start_workers(plan(["noop", "noop"]), 2, "file:///tmp/unused")  # nothing to load: nothing preloaded
    try:
        assert [pool.preloaded for pool in cold.started] == [frozenset(), frozenset()]
    finally:
        cold.close()


def test_a_preload_holds_the_measurement_lock_a_step_at_a_time(monkeypatch: Any) -> None:
    """A timing that waits for the host (the run's fp32 reference, exclusive) goes first between two steps, not after
    the whole preload (1 s and more)."""
    import contextlib

    from farm.quant import isolation
    from farm.runtimes import engine

    events: list[str] = []

    @contextlib.contextmanager
    def hold(stop: Any = None) -> Any:
        events.append("hold")
        yield
        events.append("free")

    def steps() -> Any:
        events.append("a")
        yield
        events.append("b")
        yield
        events.append("c")

    monkeypatch.setattr(isolation, "compute_step", hold)
    monkeypatch.setattr(engine, "unavailable", lambda runtime: None)
    monkeypatch.setattr(engine, "_builder", lambda runtime: SimpleNamespace(preload=steps))
    engine.preload("openvino")
    assert events == ["hold", "a", "free", "hold", "b", "free", "hold", "c", "free"]
    events.clear()
    engine.preload("torch")  # torch's imports come with the engine
    assert events == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("runtime", "modules"),
    [
        ("onnxruntime", ["onnxruntime.quantization.shape_inference", "sympy", "torch.onnx"]),
        ("openvino", ["nncf.openvino.quantization.quantize_model", "onnx", "openvino.frontend.pytorch"]),
    ],
)
def test_a_runtime_preload_imports_what_its_first_job_would(runtime: str, modules: list[str], tmp_path: Path) -> None:
    import subprocess
    import sys

    pytest.importorskip(runtime)
    code = (
        "import sys; from farm.runtimes.engine import preload; "
        f"before = {modules!r}; assert not [m for m in before if m in sys.modules]; preload({runtime!r}); "
        "print([m for m in before if m not in sys.modules])"
    )
    env = {
        **os.environ,
        "HOME": str(tmp_path),
    }  # OpenVINO's telemetry would write under HOME: declined, it writes nothing
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert not (tmp_path / "intel").exists()


def test_ctrl_c_while_the_processes_start_leaves_none_behind(sweep_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []
    real = Starter._pool

    def pool(self: Starter, early: bool, preload: tuple[str, ...]) -> Any:
        if made:
            raise KeyboardInterrupt  # delivered as the second start unblocks SIGINT
        started = real(self, early, preload)
        made.extend(started._processes.values())  # type: ignore[attr-defined]
        return started

    monkeypatch.setattr(Starter, "_pool", pool)
    with pytest.raises(KeyboardInterrupt):
        start_workers(plan(["noop", "noop"]), 2, "file:///tmp/unused")
    (first,) = made
    assert first.exitcode == -signal.SIGTERM  # stopped and reaped before the interrupt went on


def test_ctrl_c_while_the_lanes_are_made_stops_the_pools_already_taken() -> None:
    pools: list[Pool] = []

    def new_pool() -> Pool:
        if pools:
            raise KeyboardInterrupt
        pools.append(Pool())
        return pools[-1]

    with pytest.raises(KeyboardInterrupt):
        Lanes(2, new_pool, lambda job_id: None)  # type: ignore[arg-type]
    assert pools[0]._processes[1].terminated and pools[0].shutdowns == [False]


def test_interrupts_wait_from_the_processes_start_until_the_run_can_cancel(sweep_home: Path) -> None:
    """Ctrl-C between the processes' start and the run's scheduler (the run being written) arrives once the run can
    cancel it, not in the middle of writing it. multiprocessing's resource tracker, started by the first spawn,
    unblocks SIGINT whatever the mask: it is started before the hold."""

    def blocked() -> set[int]:
        return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))

    assert signal.SIGINT not in blocked()
    starter = start_workers(plan(["noop", "noop"]), 2, "file:///tmp/unused")
    try:
        assert {signal.SIGINT, signal.SIGHUP} <= blocked()  # after two spawns
        starter.release()
        assert signal.SIGINT not in blocked() and signal.SIGHUP not in blocked()
    finally:
        starter.close()
    assert signal.SIGINT not in blocked()
