"""Isolation on a shared host (farm.quant.isolation): the measurement lock excludes across processes and lets a
waiting benchmark in before new readers; pool processes get disjoint cores and torch threads stay within them;
the figures a measurement records.

Real processes hold the lock (file locks are per open file, so a second process is the honest test); nothing is
timed: the order of events is read from the processes' output and from files they write while holding the lock.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from farm.errors import Cancelled
from farm.quant import isolation, pinning
from farm.quant.bench_config import BenchmarkConfig
from farm.quant.hostload import CpuTimes, host_load
from farm.quant.isolation import MeasureLock
from farm.quant.pinning import claim_cores

HOLDER = """
import sys
from pathlib import Path
from farm.quant.isolation import MeasureLock

directory, mode, marker = sys.argv[1:4]
lock = MeasureLock(Path(directory))
print("trying", flush=True)
with getattr(lock, mode)():
    print("in", flush=True)
    sys.stdin.readline()
    Path(marker).write_text("released")  # written while still holding the lock
print("out", flush=True)
"""


class Holder:
    """A process that takes the lock (``shared`` or ``exclusive``), says so, and releases it when told."""

    def __init__(self, directory: Path, mode: str, name: str, env: dict[str, str]) -> None:
        self.marker = directory / f"{name}.released"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(directory), mode, str(self.marker)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def expect(self, line: str) -> None:
        assert self.proc.stdout is not None
        got = self.proc.stdout.readline().strip()
        assert got == line, (got, self.proc.poll())

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        self.expect("out")
        assert self.proc.wait() == 0


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A lock directory of the test's own (the real one is shared with whatever else runs on this host)."""
    root = str(Path(__file__).resolve().parents[3])
    monkeypatch.setenv(isolation.LOCK_DIR_ENV, str(tmp_path))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}


def can_flock(path: Path, how: int) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # drops the probe's lock, if it got one
    return True


def waiting_benchmark(directory: Path, env: dict[str, str], turnstile: Path) -> Holder:
    """A process that asks for the lock exclusively, once it waits for it (holding the turnstile)."""
    bench = Holder(directory, "exclusive", "bench", env)
    bench.expect("trying")
    for _ in range(100_000):
        if not can_flock(turnstile, fcntl.LOCK_EX):
            return bench
    pytest.fail("the waiting benchmark never held the turnstile")


def enter_after(hold: object, marker: Path, seen: list[bool]) -> None:
    with hold:  # type: ignore[attr-defined]
        seen.append(marker.exists())


def test_a_process_holding_it_shared_keeps_a_benchmark_out_until_it_lets_go(
    tmp_path: Path, env: dict[str, str]
) -> None:
    reader = Holder(tmp_path, "shared", "reader", env)
    reader.expect("trying")
    reader.expect("in")
    _, lock_file = MeasureLock(tmp_path).paths
    assert not can_flock(lock_file, fcntl.LOCK_EX)
    assert can_flock(lock_file, fcntl.LOCK_SH)  # other compute phases go on side by side
    seen: list[bool] = []
    writer = threading.Thread(target=enter_after, args=(MeasureLock(tmp_path).exclusive(), reader.marker, seen))
    writer.start()
    reader.release()
    writer.join()
    reader.finish()
    assert seen == [True]  # the benchmark got in only after the reader had let go


def test_a_benchmark_holding_it_pauses_compute_until_it_is_done(tmp_path: Path, env: dict[str, str]) -> None:
    bench = Holder(tmp_path, "exclusive", "bench", env)
    bench.expect("trying")
    bench.expect("in")
    turnstile, lock_file = MeasureLock(tmp_path).paths
    assert not can_flock(lock_file, fcntl.LOCK_SH) and not can_flock(turnstile, fcntl.LOCK_EX)
    seen: list[bool] = []
    compute = threading.Thread(target=enter_after, args=(MeasureLock(tmp_path).shared(), bench.marker, seen))
    compute.start()
    bench.release()
    compute.join()
    bench.finish()
    assert seen == [True]


def test_a_waiting_benchmark_goes_before_readers_that_come_after_it(tmp_path: Path, env: dict[str, str]) -> None:
    turnstile, _ = MeasureLock(tmp_path).paths
    first = Holder(tmp_path, "shared", "first", env)
    first.expect("trying")
    first.expect("in")
    bench = Holder(tmp_path, "exclusive", "bench", env)
    bench.expect("trying")
    for _ in range(100_000):  # until the benchmark waits for the lock, holding the turnstile (no clock involved)
        if not can_flock(turnstile, fcntl.LOCK_EX):
            break
        assert bench.proc.poll() is None
    else:
        pytest.fail("the waiting benchmark never held the turnstile")
    late = Holder(tmp_path, "shared", "late", env)
    late.release()  # lets go as soon as it gets in
    late.expect("trying")
    first.release()
    bench.expect("in")
    # Without the turnstile the late reader would have slipped in beside the first one (and out again).
    assert not late.marker.exists() and late.proc.poll() is None
    bench.release()
    bench.finish()
    late.expect("in")
    late.finish()
    first.finish()


@pytest.mark.parametrize("boundary", ["yield", "nested step"])
def test_a_long_compute_step_lets_a_waiting_benchmark_time_between_its_batches(
    tmp_path: Path, env: dict[str, str], boundary: str
) -> None:
    """A library's calibration loop holds the lock for the whole step (2-3 s of NNCF), and a runtime's build holds
    it around its own steps; a benchmark that asks meanwhile times at the next batch boundary (a yield, or a step
    nested in the build), and the step carries on after it."""
    lock = MeasureLock(tmp_path)
    turnstile, lock_file = lock.paths
    with lock.shared():
        lock.yield_to_benchmark()  # nobody waits: nothing changes
        assert not can_flock(lock_file, fcntl.LOCK_EX)
        bench = waiting_benchmark(tmp_path, env, turnstile)
        done: list[bool] = []
        step = threading.Thread(target=lambda: (lock.yield_to_benchmark(), done.append(bench.marker.exists())))
        # The yield is per thread (flock belongs to the open file): run it in a thread that holds nothing, then
        # in this one, which holds the lock shared.
        step.start()
        step.join()
        assert done == [False]  # a thread that holds nothing has nothing to give up
        releaser = threading.Thread(target=lambda: (bench.expect("in"), bench.release()))
        releaser.start()
        if boundary == "yield":
            lock.yield_to_benchmark()  # lets the benchmark in, waits for it to time, holds the lock again
        else:
            with lock.shared():
                assert bench.marker.exists()  # the nested step began after the benchmark had timed
        releaser.join()
        assert bench.marker.exists()  # it timed while this step waited
        assert not can_flock(lock_file, fcntl.LOCK_EX)  # and the step holds the lock again
    bench.finish()
    assert can_flock(lock_file, fcntl.LOCK_EX)


def test_nncf_and_onnxruntime_calibration_yield_between_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both libraries' calibration loops yield before each calibration batch (4 batches of 8 here), with the job's
    stop function, holding the lock shared as the build step does."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'quantfarm[onnx]')")
    import importlib

    from farm.quant.config import parse_method
    from farm.quant.context import QuantContext
    from farm.runtimes.engine import build
    from farm.zoo.data import calibration_subset, first_batch, load_dataset
    from farm.zoo.models import load_model

    lock = MeasureLock(tmp_path / "locks")
    (tmp_path / "locks").mkdir()
    monkeypatch.setattr(isolation, "_LOCK", lock)
    model, splits = load_model("farm:digits-cnn").module, load_dataset("sklearn:digits")
    loops = {"onnxruntime": "farm.runtimes.ort_calibration"}
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        loops["openvino"] = "farm.runtimes.openvino_quantize"

    def stop() -> bool:
        return False

    seen: list[tuple[str | None, object]] = []
    for runtime, module in loops.items():
        seen.clear()
        monkeypatch.setattr(
            importlib.import_module(module), "yield_to_benchmark", lambda s=None: seen.append((lock._held.mode, s))
        )
        calibration = calibration_subset(splits, 32, 0)
        ctx = QuantContext(
            "farm:digits-cnn", example_input=first_batch(splits.test, 2), calibration=calibration, batch_size=8
        )
        ctx = dataclasses.replace(ctx, should_stop=stop)
        cfg = parse_method("static", {"calibration_size": 32, "runtime": runtime})
        with isolation.compute_step():
            build(model, cfg, ctx, tmp_path / runtime, threads=1, batch_sizes=(8,))
        assert len(seen) >= 4, (runtime, seen)  # one yield per calibration batch, at least
        assert {mode for mode, _ in seen} == {"shared"} and {s for _, s in seen} == {stop}, runtime


def test_a_job_cancelled_while_it_waits_for_the_lock_stops_waiting(tmp_path: Path, env: dict[str, str]) -> None:
    def stop_on_third_check() -> bool:
        checks.append(1)
        return len(checks) >= 3

    lock = MeasureLock(tmp_path)
    turnstile, lock_file = lock.paths
    for mode, other in (("exclusive", "shared"), ("shared", "exclusive")):
        holder = Holder(tmp_path, mode, mode, env)
        holder.expect("trying")
        holder.expect("in")
        checks: list[int] = []
        with pytest.raises(Cancelled):
            with getattr(lock, other)(stop_on_third_check):
                pytest.fail("got in while the other process held the lock")
        assert len(checks) == 3
        holder.release()
        holder.finish()
    assert can_flock(turnstile, fcntl.LOCK_EX) and can_flock(lock_file, fcntl.LOCK_EX)  # the waits left nothing held


def test_a_thread_holding_it_shared_cannot_ask_for_it_exclusively(tmp_path: Path) -> None:
    lock = MeasureLock(tmp_path)
    with lock.shared():
        with pytest.raises(RuntimeError, match="held shared"):
            with lock.exclusive():
                pass
        with lock.shared():  # nested compute: no second acquisition
            pass
    with lock.exclusive():
        with lock.shared():  # a benchmark's own helper computing: no deadlock on itself
            pass
    assert can_flock(lock.paths[1], fcntl.LOCK_EX)  # everything let go


def test_cores_are_claimed_in_disjoint_groups_and_given_back(tmp_path: Path) -> None:
    allowed = [0, 1, 2, 3, 4]
    first = claim_cores(2, allowed, directory=tmp_path)
    second = claim_cores(2, allowed, directory=tmp_path)
    assert first is not None and second is not None
    assert (first[0], second[0]) == ((0, 1), (2, 3))
    assert claim_cores(2, allowed, directory=tmp_path) is None  # core 4 alone is not a group of 2
    for fd in first[1]:
        os.close(fd)
    again = claim_cores(2, allowed, directory=tmp_path)
    assert again is not None and again[0] == (0, 1)
    for fd in second[1] + again[1]:
        os.close(fd)
    preferred = claim_cores(2, allowed, prefer=1, directory=tmp_path)  # a Celery pool process's index
    assert preferred is not None and preferred[0] == (2, 3)


PINNED = """
import json, os, sys, threading
import torch
from farm.quant.pinning import pin_process
from farm.quant.latency import torch_threads

earlier = threading.Thread(target=sys.stdin.readline)  # a thread started before pinning
earlier.start()
cores = pin_process(int(sys.argv[1]))
with torch_threads(8):
    threads = torch.get_num_threads()
print(json.dumps({
    "cores": cores, "affinity": sorted(os.sched_getaffinity(0)),
    "earlier": sorted(os.sched_getaffinity(earlier.native_id)), "threads": threads,
}), flush=True)
earlier.join()  # holds its cores until told
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pinning needs sched_setaffinity")
def test_pool_processes_get_cores_of_their_own_and_torch_threads_stay_within_them(env: dict[str, str]) -> None:
    allowed = pinning.allowed_cpus()
    if len(allowed) < 2:
        pytest.skip("needs two CPUs")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PINNED, "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    seen = []
    for proc in procs:
        assert proc.stdout is not None
        seen.append(json.loads(proc.stdout.readline()))
    for proc in procs:
        proc.communicate("\n")
        assert proc.returncode == 0
    for got in seen:
        assert len(got["cores"]) == 1 and got["affinity"] == got["cores"] == got["earlier"]
        assert got["threads"] == 1  # asked for 8, pinned to 1 core
    assert set(seen[0]["cores"]).isdisjoint(seen[1]["cores"])
    assert {c for got in seen for c in got["cores"]} <= set(allowed)


def test_oversubscription_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pinning, "allowed_cpus", lambda: [0, 1, 2, 3])
    assert pinning.oversubscribed(2, 2) is None
    note = pinning.oversubscribed(3, 2)
    assert note is not None and "6 cores" in note and "4 are available" in note


def test_threads_are_capped_and_isolation_recorded_as_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pinning.pinned_cores() is None  # this test process is never pinned
    assert pinning.cap_threads(4) == 4
    assert [pinning.applied(m) for m in isolation.MODES] == ["exclusive", "none", "none"]
    monkeypatch.setattr(pinning._pinning, "cores", (3, 5))
    assert pinning.cap_threads(4) == 2 and pinning.cap_threads(1) == 1
    assert [pinning.applied(m) for m in isolation.MODES] == ["exclusive", "pinned", "pinned"]
    with isolation.measuring("pinned") as measured:
        pass
    assert measured.figures()["cores"] == [3, 5] and measured.figures()["isolation"] == "pinned"


def test_host_load_is_the_busy_share_of_what_this_process_left() -> None:
    # 20 CPU-seconds passed, 4 of them this process's own: of the other 16, 10 - 4 = 6 were busy.
    assert host_load(CpuTimes(10.0, 40.0, 1.0), CpuTimes(20.0, 60.0, 5.0)) == pytest.approx(0.375)
    assert host_load(CpuTimes(0.0, 0.0, 0.0), CpuTimes(1.0, 1.0, 2.0)) is None  # no capacity left to judge
    assert host_load(CpuTimes(0.0, 0.0, 0.0), CpuTimes(0.03, 0.2, 0.0)) is None  # 20 ticks: 3 of them are noise
    assert host_load(None, CpuTimes(1.0, 2.0, 0.0)) is None
    assert host_load(CpuTimes(0.0, 0.0, 0.0), CpuTimes(0.0, 10.0, 0.0)) == 0.0


def test_an_exclusive_measurement_holds_the_lock_and_samples_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = MeasureLock(tmp_path)
    monkeypatch.setattr(isolation, "_LOCK", lock)
    with isolation.measuring("exclusive") as measured:
        assert not can_flock(lock.paths[1], fcntl.LOCK_SH)
        sum(range(200_000))
    assert can_flock(lock.paths[1], fcntl.LOCK_EX)
    figures = measured.figures()
    assert figures["isolation"] == "exclusive" and figures["cores"] is None
    assert figures["host_load"] is None or 0.0 <= figures["host_load"] <= 1.0
    with isolation.measuring("none") as unlocked:
        assert can_flock(lock.paths[1], fcntl.LOCK_EX)
    assert unlocked.figures()["isolation"] == "none"
    # pinned claims no exclusivity but is compute all the same: it holds the lock shared (others may compute,
    # nobody may time exclusively meanwhile).
    with isolation.measuring("pinned"):
        assert can_flock(lock.paths[1], fcntl.LOCK_SH) and not can_flock(lock.paths[1], fcntl.LOCK_EX)
    assert can_flock(lock.paths[1], fcntl.LOCK_EX)


@pytest.mark.parametrize(("requested", "waits"), [("exclusive", True), ("pinned", False), ("none", False)])
def test_only_an_exclusive_timing_counts_a_busy_host_as_a_reason_to_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, requested: str, waits: bool
) -> None:
    # Others kept 1.0 of the 1.5 CPU-s this process left (67 %): busy. Pinned or unisolated, that load is this
    # host's own other jobs (a pool's sibling), and a longer timing would only stretch the pool's.
    monkeypatch.setattr(isolation, "_LOCK", MeasureLock(tmp_path))
    readings = iter([CpuTimes(0.0, 0.0, 0.0), CpuTimes(1.5, 2.0, 0.5), CpuTimes(1.5, 2.0, 0.5)])
    monkeypatch.setattr(isolation, "cpu_times", lambda: next(readings))
    with isolation.measuring(requested) as measured:
        assert measured.busy() is waits
    assert measured.host_load == pytest.approx(0.667, abs=0.001)


def test_a_pinned_timing_waits_while_another_job_times_exclusively(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(isolation, "_LOCK", MeasureLock(tmp_path))
    bench = Holder(tmp_path, "exclusive", "bench", env)
    bench.expect("trying")
    bench.expect("in")
    seen: list[bool] = []
    pinned = threading.Thread(target=enter_after, args=(isolation.measuring("pinned"), bench.marker, seen))
    pinned.start()
    bench.release()
    pinned.join()
    bench.finish()
    assert seen == [True]  # it began timing only after the exclusive one was done


def test_a_pinned_timing_lets_an_exclusive_one_time_between_its_blocks_and_leaves_the_wait_out(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pinned timing holds the lock shared for all its blocks: an exclusive timing that asks meanwhile goes at
    the next block (its poll), not after the whole timing, and the wait counts neither in the pinned timing's time
    budget nor in its host load."""
    lock = MeasureLock(tmp_path)
    monkeypatch.setattr(isolation, "_LOCK", lock)
    turnstile, lock_file = lock.paths
    with isolation.measuring("pinned") as measured:
        assert measured.poll() is False and measured.waited() == 0.0  # nobody waits, not cancelled: go on
        bench = waiting_benchmark(tmp_path, env, turnstile)
        releaser = threading.Thread(target=lambda: (bench.expect("in"), time.sleep(0.3), bench.release()))
        releaser.start()
        started = measured.started
        assert measured.poll() is False  # it let the benchmark time, then goes on
        releaser.join()
        assert bench.marker.exists()  # the exclusive timing ran during the poll
        assert measured.waited() >= 0.3  # the wait, which its time budget leaves out
        assert started is not None and measured.started is not None and measured.started.total_s > started.total_s
        assert not can_flock(lock_file, fcntl.LOCK_EX)  # it holds the lock shared again
    bench.finish()
    with isolation.measuring("exclusive") as alone:
        assert alone.poll() is False and alone.waited() == 0.0  # an exclusive timing has nobody to let go first


def test_benchmark_isolation_is_validated_and_kept_out_of_the_key_at_its_default() -> None:
    assert BenchmarkConfig().isolation == "exclusive" and "isolation" not in BenchmarkConfig().to_dict()
    pinned = BenchmarkConfig(isolation="pinned")
    assert pinned.to_dict()["isolation"] == "pinned" and BenchmarkConfig.from_dict(pinned.to_dict()) == pinned
    (problem,) = BenchmarkConfig(isolation="sometimes").problems()
    assert problem.path == "isolation" and "exclusive, pinned, none" in problem.message


def test_the_warm_up_runs_before_the_exclusive_hold_and_the_timing_inside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host is exclusive only while figures are taken: the warm-up (first runs compile and profile) computes
    beside other jobs' compute, holding the lock shared; inside the hold each model re-warms briefly."""
    import torch

    from farm.quant.context import QuantOutcome
    from farm.quant.measure import REWARM_S, benchmark
    from farm.quant.reference import Baseline

    lock = MeasureLock(tmp_path)
    monkeypatch.setattr(isolation, "_LOCK", lock)
    calls: list[tuple[str, str]] = []  # (model, the lock's state seen from outside)

    class Probe(torch.nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            held = "exclusive" if not can_flock(lock.paths[1], fcntl.LOCK_SH) else "shared"
            held = held if held == "exclusive" or not can_flock(lock.paths[1], fcntl.LOCK_EX) else "free"
            calls.append((self.name, held))
            return x * 2

    trial, fp32 = QuantOutcome(Probe("trial")), QuantOutcome(Probe("fp32"))
    data = torch.utils.data.TensorDataset(torch.ones(8, 3), torch.zeros(8, dtype=torch.long))
    cfg = BenchmarkConfig(batch_sizes=(4,), warmup_s=0.05, max_time_s=0.05, min_reps=6)
    (entry,) = benchmark(trial, data, cfg, lambda *a: None, lambda: False, Baseline(fp32, "eager"))
    first_timed = next(i for i, (_, held) in enumerate(calls) if held == "exclusive")
    warm = calls[:first_timed]
    assert {held for _, held in warm} == {"shared"}  # warmed holding the lock shared, as compute does
    assert {name for name, _ in warm} == {"trial", "fp32"}  # both sides of the pair
    assert all(held == "exclusive" for _, held in calls[first_timed:])  # then timed, nothing else in between
    assert entry["isolation"] == "exclusive" and entry["speedup"] is not None
    assert REWARM_S < cfg.warmup_s
    none = BenchmarkConfig(batch_sizes=(4,), warmup_s=0.05, max_time_s=0.05, min_reps=6, isolation="none")
    calls.clear()
    benchmark(trial, data, none, lambda *a: None, lambda: False, Baseline(fp32, "eager"))
    assert {held for _, held in calls} == {"free"}  # isolation none leaves the lock alone, warm-up included


def test_every_step_of_a_job_that_computes_holds_the_lock_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_trial: Callable[..., Any]
) -> None:
    """Loading (reading data, building the model, importing what it needs), a runtime's whole build (importing
    OpenVINO and NNCF alone took seconds of CPU beside another job's exclusive timing) and saving compute: a
    benchmark of another job on this host must not time meanwhile."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'quantfarm[onnx]')")
    import farm.quant.artifact
    import farm.runtimes.engine
    import farm.zoo.models

    lock = MeasureLock(tmp_path)
    monkeypatch.setattr(isolation, "_LOCK", lock)
    seen: dict[str, bool] = {}

    def watched(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            seen[name] = can_flock(lock.paths[1], fcntl.LOCK_EX)  # could an exclusive timer get in now?
            return fn(*args, **kwargs)

        return call

    for module, name in ((farm.zoo.models, "load_model"), (farm.quant.artifact, "save_model")):
        monkeypatch.setattr(module, name, watched(name, getattr(module, name)))
    monkeypatch.setattr(farm.runtimes.engine, "build", watched("build", farm.runtimes.engine.build))
    run_trial("farm:digits-cnn", "sklearn:digits", "fp32")  # a torch job: loads and saves
    run_trial("farm:digits-cnn", "sklearn:digits", "dynamic", runtime="onnxruntime")  # a runtime's build
    assert seen == {"load_model": False, "save_model": False, "build": False}
    assert can_flock(lock.paths[1], fcntl.LOCK_EX)  # and let go after
