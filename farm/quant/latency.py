"""Latency measurement: warm-up, a fixed thread count, repetitions until the median is stable.

Timings on shared machines are noisy; the spread is reported beside the median so a reader can tell a
real difference from noise. On CUDA every repetition is bracketed by ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class LatencySettings:
    """How long and how hard to measure.

    Attributes:
        warmup_s: run untimed for at least this long (and at least ``warmup_reps`` times) first.
        min_reps: never stop before this many timed repetitions.
        max_reps: stop after this many.
        max_time_s: stop after this much timed wall time, stable or not.
        block: repetitions between stability checks.
        rel_tol: stable when the median moved less than this fraction over the last two blocks.
    """

    warmup_s: float = 0.2
    warmup_reps: int = 3
    min_reps: int = 20
    max_reps: int = 2000
    max_time_s: float = 3.0
    block: int = 10
    rel_tol: float = 0.02


@dataclass(frozen=True)
class Latency:
    """Latency of one batch size; times in milliseconds, throughput in samples per second."""

    batch_size: int
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_mean_ms: float
    latency_std_ms: float
    latency_min_ms: float
    latency_max_ms: float
    latency_iqr_ms: float
    throughput: float
    reps: int
    stable: bool

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` (0-100) of an already sorted list."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(batch_size: int, samples_s: list[float], stable: bool) -> Latency:
    """Turn raw per-repetition seconds into a :class:`Latency`."""
    ms = sorted(s * 1000.0 for s in samples_s)
    p50 = percentile(ms, 50)
    return Latency(
        batch_size=batch_size,
        latency_p50_ms=p50,
        latency_p90_ms=percentile(ms, 90),
        latency_p99_ms=percentile(ms, 99),
        latency_mean_ms=statistics.fmean(ms),
        latency_std_ms=statistics.pstdev(ms) if len(ms) > 1 else 0.0,
        latency_min_ms=ms[0],
        latency_max_ms=ms[-1],
        latency_iqr_ms=percentile(ms, 75) - percentile(ms, 25),
        throughput=batch_size / (p50 / 1000.0) if p50 > 0 else float("inf"),
        reps=len(ms),
        stable=stable,
    )


def measure_latency(
    fn: Callable[[], object],
    batch_size: int,
    *,
    device: str = "cpu",
    settings: LatencySettings | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Latency:
    """Time ``fn`` (one forward pass of a ``batch_size`` batch) until its median is stable.

    Args:
        fn: runs one batch; its result is discarded.
        batch_size: samples per call, for the throughput figure.
        device: "cuda" synchronises around every repetition.
        settings: warm-up and stopping rules.
        should_stop: polled between blocks; True ends the measurement early (marked unstable).

    Returns:
        Percentiles, spread and whether the median settled.
    """
    s = settings or LatencySettings()
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.inference_mode():
        start = time.perf_counter()
        reps = 0
        while reps < s.warmup_reps or time.perf_counter() - start < s.warmup_s:
            fn()
            reps += 1
        sync()
        samples: list[float] = []
        medians: list[float] = []
        stable = False
        began = time.perf_counter()
        while len(samples) < s.max_reps:
            for _ in range(s.block):
                t0 = time.perf_counter()
                fn()
                sync()
                samples.append(time.perf_counter() - t0)
            if len(samples) >= s.min_reps:
                medians.append(statistics.median(samples))
                if len(medians) >= 3 and _settled(medians[-3:], s.rel_tol):
                    stable = True
                    break
            if time.perf_counter() - began > s.max_time_s or (should_stop and should_stop()):
                break
    return summarize(batch_size, samples, stable)


def _settled(medians: list[float], tol: float) -> bool:
    last = medians[-1]
    return last > 0 and all(abs(m - last) / last <= tol for m in medians)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads (None: leave as is)."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
