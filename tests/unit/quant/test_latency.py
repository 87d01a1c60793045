"""Latency statistics on known samples, and the measuring loop's stopping rules."""

from __future__ import annotations

import math

import pytest

from farm.quant.latency import LatencySettings, measure_latency, summarize, torch_threads
from farm.quant.timing_stats import percentile


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0, 5.0], 50, 3.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 100, 5.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 25, 2.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 90, 4.6),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 99, 4.96),
        ([10.0, 20.0], 50, 15.0),
        ([7.0], 99, 7.0),
    ],
)
def test_percentile_interpolates_linearly(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))


def test_summarize_known_samples() -> None:
    samples_s = [0.004, 0.001, 0.003, 0.002, 0.005]  # unsorted on purpose
    lat = summarize(8, samples_s, settled=True)
    assert lat.latency_p50_ms == pytest.approx(3.0)
    assert lat.latency_p90_ms == pytest.approx(4.6)
    assert lat.latency_p99_ms == pytest.approx(4.96)
    assert (lat.latency_min_ms, lat.latency_max_ms) == (pytest.approx(1.0), pytest.approx(5.0))
    assert lat.latency_mean_ms == pytest.approx(3.0)
    assert lat.latency_iqr_ms == pytest.approx(2.0)
    assert lat.throughput == pytest.approx(8 / 0.003)
    assert (lat.reps, lat.batch_size) == (5, 8)
    # Five samples cannot bound the median at 95 %: the interval is the whole range, so the figure is unstable.
    assert (lat.latency_p50_ci_low_ms, lat.latency_p50_ci_high_ms) == (pytest.approx(1.0), pytest.approx(5.0))
    assert lat.stable is False and "CI" in (lat.unstable_reason or "")
    assert set(lat.to_dict()) >= {"batch_size", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "throughput"}


def test_measure_latency_counts_its_repetitions() -> None:
    calls = []
    settings = LatencySettings(warmup_s=0.0, warmup_reps=3, min_reps=20, max_reps=40, max_time_s=5.0, block=10)
    lat = measure_latency(lambda: calls.append(1), 4, settings=settings)
    assert 20 <= lat.reps <= 40 and lat.reps % 10 == 0
    assert len(calls) == 3 + lat.reps  # warm-up calls are not timed
    assert 0 <= lat.latency_min_ms <= lat.latency_p50_ms <= lat.latency_p99_ms <= lat.latency_max_ms


def test_should_stop_ends_the_measurement_after_one_block() -> None:
    settings = LatencySettings(warmup_s=0.0, warmup_reps=1, min_reps=100, max_time_s=5.0, block=10)
    lat = measure_latency(lambda: None, 1, settings=settings, should_stop=lambda: True)
    assert lat.reps == 10 and lat.stable is False


def test_max_time_bounds_an_unsettled_measurement() -> None:
    import time

    durations = iter([0.001, 0.004] * 1000)  # alternating: the median keeps moving by 2x-4x
    settings = LatencySettings(warmup_s=0.0, warmup_reps=0, min_reps=5, max_time_s=0.05, block=5, rel_tol=0.0001)
    lat = measure_latency(lambda: time.sleep(next(durations)), 1, settings=settings, busy=lambda: False)
    assert lat.reps < 100


def test_time_waited_for_another_jobs_timing_is_not_spent_from_the_budget() -> None:
    """A pinned timing that let an exclusive one go first (its poll between blocks) has not used that wait: with a
    fake clock, each block takes about 0.01 s and each poll waits 1 s; a 0.05 s budget still gets about 5 blocks."""
    now = [0.0]
    waited = [0.0]
    durations = iter([0.001, 0.003] * 1000)  # 5 calls a block, about 0.01 s; the median keeps moving: unsettled

    def call() -> None:
        now[0] += next(durations)

    def poll() -> bool:
        now[0] += 1.0  # another job's exclusive timing
        waited[0] += 1.0
        return False

    settings = LatencySettings(warmup_s=0.0, warmup_reps=0, min_reps=5, max_time_s=0.05, block=5, rel_tol=0.0001)
    common = {"settings": settings, "busy": lambda: False, "clock": lambda: now[0], "should_stop": poll}
    lat = measure_latency(call, 1, paused=lambda: waited[0], **common)  # type: ignore[arg-type]
    assert 4 * 5 <= lat.reps <= 7 * 5  # its own 0.05 s, not one block and a wait
    unpaused = measure_latency(call, 1, **common)  # type: ignore[arg-type]
    assert unpaused.reps == 2 * 5  # the same wait counted as its time: two blocks, then out of budget


def test_torch_threads_restores_the_count() -> None:
    import torch

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
