"""Latency measurement: warm-up, a fixed thread count, repetitions until the median's confidence interval is
narrow, and the rules a trial timed side by side with its fp32 baselines follows (:mod:`farm.quant.side_by_side`).

Timings on shared machines are noisy and drift (frequency scaling, a neighbour's burst): a figure measured a
minute apart from its comparison says little. :func:`farm.quant.side_by_side.measure_pair` therefore interleaves
the two models in ABAB blocks in one process, so drift hits both alike, and reports the speedup as the ratio of the
two sides' medians with a bootstrap interval over the pairs of blocks. Every median comes with its
distribution-free 95 % interval, which allows for drift between blocks (:mod:`farm.quant.timing_stats`), and
:func:`farm.quant.timing_stats.unstable_reason` decides whether it is stable. On CUDA every repetition is
bracketed by ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from farm.quant.hostload import busy_since
from farm.quant.pinning import torch_threads as torch_threads  # where callers have always found it
from farm.quant.timing_stats import (
    clustered_median_ci,
    flatten,
    percentile,
    relative_halfwidth,
    unstable_reason,
)

#: A clock in seconds; tests pass a fake one to make timing deterministic.
Clock = Callable[[], float]
#: Fewest blocks (or pairs of blocks) before a measurement may call itself settled: with fewer, the interval of the
#: block medians is their whole range, whose coverage is below 95 %.
MIN_BLOCKS = 6
#: A pair's side faster than this a call starts each block with an untimed call; a slower one times it from its
#: first call, which measured as the rest (fp32 ResNet-18, batch 8: 211 vs 212 ms, under load 635 vs 627 ms).
REWARM_BELOW_S = 0.05
#: Resamples of the bootstrap that decides whether a pair's speedup has settled (the reported one takes 2000).
SETTLE_RESAMPLES = 200


@dataclass(frozen=True)
class LatencySettings:
    """How long and how hard to measure.

    Attributes:
        warmup_s: run untimed for at least this long (and at least ``warmup_reps`` times) first.
        min_reps: never stop before this many timed repetitions (per model), whatever the time: fewer cannot bound
            a median (a slow model then runs past ``max_time_s``; ``should_stop`` still ends it at once).
        max_reps: stop after this many (per model).
        max_time_s: timed wall time per model: one model stops after this long, a side-by-side pair after twice
            this, a trial beside n baselines after n + 1 times this (each model gets its share), settled or not.
        block: the most timed repetitions in one block (a block is about ``target_block_s`` of calls, at least 2);
            the stopping rules are checked after each block.
        rel_tol: stop once the p50's 95 % interval (and a side-by-side timing's speedup intervals) is within this
            fraction of it on both sides.
        target_block_s: a block is as many repetitions as take about this long (2 to ``block``): short
            enough that drift within a block is small, long enough that a fast model's block median is steady.
        busy_factor: on a busy host (:func:`farm.quant.hostload.busy_since`) an unsettled measurement goes on up
            to this many times its budget: beside a loader a static ResNet-18's fp32 side read 566 then 708 ms
            over 20 calls each (its calls spread 556-798 ms between p10 and p90).
    """

    warmup_s: float = 0.2
    warmup_reps: int = 3
    min_reps: int = 20
    max_reps: int = 2000
    max_time_s: float = 3.0
    block: int = 10
    rel_tol: float = 0.02
    target_block_s: float = 0.02
    busy_factor: float = 8.0


@dataclass(frozen=True)
class Latency:
    """Latency of one batch size; times in milliseconds, throughput in samples per second.

    ``latency_p50_ci_low_ms`` .. ``_high_ms`` bound the median with 95 % confidence (order statistics, no
    distribution assumed); a job then widens them by the host's run-to-run drift
    (:func:`farm.quant.drift.allow_for_drift`: ``drift_rel``, the fraction used, ``drift_n``, the runs of this
    measurement, ``drift_from``, what the fraction rests on).
    ``unstable_reason`` says why ``stable`` is False (None when it is True).
    """

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
    latency_p50_ci_low_ms: float
    latency_p50_ci_high_ms: float
    unstable_reason: str | None
    drift_rel: float | None = None
    drift_n: int = 0
    drift_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    batch_size: int, samples_s: list[float], *, settled: bool, blocks: list[list[float]] | None = None
) -> Latency:
    """Turn raw per-repetition seconds into a :class:`Latency`.

    Args:
        settled: the measurement reached its stopping target (see :func:`farm.quant.timing_stats.unstable_reason`).
        blocks: the same seconds in the blocks they were timed in, in order: the p50's interval then allows for
            drift between blocks (:func:`farm.quant.timing_stats.clustered_median_ci`). None: one block.
    """
    ms = sorted(s * 1000.0 for s in samples_s)
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    low, high = clustered_median_ci([[v * 1000.0 for v in b] for b in blocks] if blocks else [ms])
    reason = unstable_reason(p50, low, high, p99, settled=settled)
    return Latency(
        batch_size=batch_size,
        latency_p50_ms=p50,
        latency_p90_ms=percentile(ms, 90),
        latency_p99_ms=p99,
        latency_mean_ms=statistics.fmean(ms) if ms else float("nan"),
        latency_std_ms=statistics.pstdev(ms) if len(ms) > 1 else 0.0,
        latency_min_ms=ms[0] if ms else float("nan"),
        latency_max_ms=ms[-1] if ms else float("nan"),
        latency_iqr_ms=percentile(ms, 75) - percentile(ms, 25),
        throughput=batch_size / (p50 / 1000.0) if p50 > 0 else float("inf"),
        reps=len(ms),
        stable=reason is None,
        latency_p50_ci_low_ms=low,
        latency_p50_ci_high_ms=high,
        unstable_reason=reason,
    )


def measure_latency(
    fn: Callable[[], object],
    batch_size: int,
    *,
    device: str = "cpu",
    settings: LatencySettings | None = None,
    should_stop: Callable[[], bool] | None = None,
    clock: Clock = time.perf_counter,
    busy: Callable[[], bool] | None = None,
    paused: Callable[[], float] | None = None,
) -> Latency:
    """Time ``fn`` (one forward pass of a ``batch_size`` batch) until its median's interval is narrow.

    Args:
        fn: runs one batch; its result is discarded.
        batch_size: samples per call, for the throughput figure.
        device: "cuda" synchronises around every repetition.
        settings: warm-up and stopping rules.
        should_stop: polled between blocks; True ends the measurement early (marked unstable).
        clock: seconds (tests pass a fake one).
        busy: whether the host has been busy since the measurement began, asked once its time budget is spent
            (default: :func:`farm.quant.hostload.busy_since`; see ``LatencySettings.busy_factor``).
        paused: the seconds ``should_stop`` has waited so far for other jobs' timings (a pinned timing lets an
            exclusive one go first): not counted against the time budget.

    Returns:
        Percentiles, spread, the median's 95 % interval and whether the figure is stable.
    """
    s = settings or LatencySettings()
    sync = _sync(device)
    with torch.inference_mode():
        k = _block_reps(_warm(fn, s, sync, clock), s)
        samples: list[float] = []
        blocks: list[list[float]] = []
        settled = False
        began, busy = clock(), busy or busy_since()
        while len(samples) < s.max_reps:
            blocks.append(_time_block(fn, k, sync, clock))
            samples.extend(blocks[-1])
            # Six blocks at least: below that the blocks' interval is their whole range, which covers < 95 %.
            if len(samples) >= s.min_reps and len(blocks) >= MIN_BLOCKS and _narrow(blocks, s.rel_tol):
                settled = True
                break
            if len(samples) >= s.min_reps and _spent(clock() - began - _waited(paused), s.max_time_s, s, busy):
                break
            if should_stop and should_stop():
                break
    return summarize(batch_size, samples, settled=settled, blocks=blocks)


def warm_up(fns: list[Callable[[], object]], seconds: float, *, reps: int = 3, device: str = "cpu") -> None:
    """Run each of ``fns`` untimed for ``seconds`` (and ``reps`` calls at least), as a measurement's warm-up does:
    the part of warming that compiles, allocates and profiles (TorchScript's first runs), done before a measurement
    that then re-warms only briefly (:func:`farm.quant.measure.benchmark` warms outside the host's exclusive
    lock)."""
    s = LatencySettings(warmup_s=seconds, warmup_reps=reps)
    sync = _sync(device)
    with torch.inference_mode():
        for fn in fns:
            _warm(fn, s, sync, time.perf_counter)


def _block_reps(per_call_s: float, s: LatencySettings) -> int:
    """Repetitions per block: about ``target_block_s`` of calls, 2 to ``block`` (a slow model still gets the
    :data:`MIN_BLOCKS` blocks its interval needs within ``min_reps``)."""
    return max(1, min(s.block, max(2, int(s.target_block_s / per_call_s) if per_call_s > 0 else s.block)))


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def _warm(fn: Callable[[], object], s: LatencySettings, sync: Callable[[], None], clock: Clock) -> float:
    """Run ``fn`` untimed for ``warmup_s`` and ``warmup_reps``; the median seconds of the later half of its calls
    (sizes a pair's blocks: a fresh TorchScript module's first calls profile and compile)."""
    start, seconds = clock(), list[float]()
    while len(seconds) < s.warmup_reps or clock() - start < s.warmup_s:
        t0 = clock()
        fn()
        sync()
        seconds.append(clock() - t0)
    return statistics.median(seconds[len(seconds) // 2 :]) if seconds else 0.0


def _time_block(
    fn: Callable[[], object], reps: int, sync: Callable[[], None], clock: Clock, *, rewarm: bool = False
) -> list[float]:
    if rewarm:  # untimed: back to the warm state the model has when it runs back to back
        fn()
        sync()
    out = []
    for _ in range(reps):
        t0 = clock()
        fn()
        sync()
        out.append(clock() - t0)
    return out


def _spent(elapsed: float, budget: float, s: LatencySettings, busy: Callable[[], bool]) -> bool:
    """Whether an unsettled measurement has used its time: ``budget`` seconds, or ``busy_factor`` times that while
    the host is busy (asked only once the budget is spent: a read of /proc/stat)."""
    return elapsed > budget and (elapsed > budget * s.busy_factor or not busy())


def _waited(paused: Callable[[], float] | None) -> float:
    return paused() if paused is not None else 0.0


def _narrow(blocks: list[list[float]], rel_tol: float) -> bool:
    """The median's 95 % interval (allowing for drift between blocks) lies within ``rel_tol`` of it on both sides."""
    low, high = clustered_median_ci(blocks)
    return relative_halfwidth(percentile(sorted(flatten(blocks)), 50), low, high) <= rel_tol


def _ratio(base: float, trial: float) -> float:
    return base / trial if trial > 0 else float("inf")
