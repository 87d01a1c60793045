"""Latency measurement: warm-up, a fixed thread count, repetitions until the median's confidence interval is
narrow, and a trial timed side by side with its fp32 baseline.

Timings on shared machines are noisy and drift (frequency scaling, a neighbour's burst): a figure measured a
minute apart from its comparison says little. :func:`measure_pair` therefore interleaves the two models in ABAB
blocks in one process, so drift hits both alike, and reports the speedup as the ratio of the two sides' medians
with a bootstrap interval over the pairs of blocks. Every median comes with its distribution-free 95 % interval,
which allows for drift between blocks (:mod:`farm.quant.timing_stats`), and
:func:`farm.quant.timing_stats.unstable_reason` decides whether it is stable. On CUDA every repetition is
bracketed by ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import math
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
    pooled_ratio,
    relative_halfwidth,
    speedup_ci,
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
            this (each model gets its share), settled or not.
        block: the most timed repetitions in one block (a block is about ``target_block_s`` of calls, at least 2);
            the stopping rules are checked after each block.
        rel_tol: stop once the p50's 95 % interval (and a pair's speedup interval) is within this fraction of it
            on both sides.
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


@dataclass(frozen=True)
class PairLatency:
    """A trial timed side by side with its fp32 baseline (:func:`measure_pair`).

    Attributes:
        trial, baseline: each side's figures over all its timed repetitions.
        speedup: the baseline's p50 over the trial's, both over every repetition of the interleaved blocks (the
            figures shown beside it divide into it exactly); > 1 is faster. Not the median of per-block ratios: a
            block is a few calls, so its median is near their mean, and on a loaded host one preempted call of
            two moved a block's ratio by 2-4x (ResNet-18 static under a loader: median of block ratios 4.1x,
            ratio of the medians 7.8x, an independent re-timing 7.1x).
        speedup_ci_low, speedup_ci_high: its 95 % interval, a bootstrap over the pairs of blocks (fixed seed) joined
            with the order-statistic interval of the per-pair block ratios (:func:`farm.quant.timing_stats.speedup_ci`).
        blocks: how many pairs of blocks were timed.
        block_reps: the trial's repetitions per block (:func:`_pair_reps`).
    """

    trial: Latency
    baseline: Latency
    speedup: float
    speedup_ci_low: float
    speedup_ci_high: float
    blocks: int
    block_reps: int

    def entry(self) -> dict[str, Any]:
        """The trial's latency entry (``JobResult.latency[i]``) with its side-by-side figures."""
        return {
            **self.trial.to_dict(),
            "baseline_p50_ms": self.baseline.latency_p50_ms,
            "speedup": self.speedup,
            "speedup_ci_low": self.speedup_ci_low,
            "speedup_ci_high": self.speedup_ci_high,
            "blocks": self.blocks,
        }


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


def measure_pair(
    trial_fn: Callable[[], object],
    base_fn: Callable[[], object],
    batch_size: int,
    *,
    device: str = "cpu",
    settings: LatencySettings | None = None,
    should_stop: Callable[[], bool] | None = None,
    clock: Clock = time.perf_counter,
    busy: Callable[[], bool] | None = None,
    paused: Callable[[], float] | None = None,
) -> PairLatency:
    """Time a trial and its baseline side by side: warm both, then pairs of blocks (a block of the slower side,
    then one of the faster side that lasts about as long: :func:`_pair_reps`; the side that goes first alternating
    from pair to pair) until both medians and the speedup are known to ``rel_tol``, or ``2 * max_time_s`` passed
    (``busy_factor`` times that on a busy host; never before ``min_reps`` per side, and never past ``max_reps`` on
    either).

    Each block of a side faster than :data:`REWARM_BELOW_S` a call starts with one untimed call: the other model's
    block evicted this one's weights from the caches and let the thread pool sleep, and a model served back to back
    (what a user deploys) pays neither.

    Args:
        trial_fn, base_fn: each runs one batch of the same inputs on its model.
        batch_size: samples per call.
        device: "cuda" synchronises around every repetition.
        settings: warm-up and stopping rules (``max_time_s`` is each side's share).
        should_stop: polled between pairs; True ends the measurement early (marked unstable).
        clock: seconds (tests pass a fake one).
        busy, paused: as :func:`measure_latency`'s.

    Returns:
        Both sides' figures and the speedup (baseline / trial) with its 95 % interval.
    """
    s = settings or LatencySettings()
    sync = _sync(device)
    with torch.inference_mode():
        per_trial, per_base = _warm(trial_fn, s, sync, clock), _warm(base_fn, s, sync, clock)
        k_trial, k_base = _pair_reps(per_trial, per_base, s)
        sides = ((trial_fn, k_trial, per_trial < REWARM_BELOW_S), (base_fn, k_base, per_base < REWARM_BELOW_S))
        min_pairs = max(MIN_BLOCKS, math.ceil(s.min_reps / min(k_trial, k_base)))
        trial_s: list[list[float]] = []  # the blocks of each side, in order
        base_s: list[list[float]] = []
        settled, check_at = False, min_pairs
        began, busy = clock(), busy or busy_since()
        while len(trial_s) * max(k_trial, k_base) < s.max_reps:
            trial_first = len(trial_s) % 2 == 0
            a, b = (_time_block(fn, k, sync, clock, rewarm=r) for fn, k, r in (sides if trial_first else sides[::-1]))
            trial_s.append(a if trial_first else b)
            base_s.append(b if trial_first else a)
            pairs = len(trial_s)
            if pairs >= check_at and _narrow(trial_s, s.rel_tol) and _narrow(base_s, s.rel_tol):
                # The speedup's own interval (its bootstrap from fewer resamples), checked after 1/8 more pairs each
                # time: a bootstrap per pair would cost a fast model's pair as much again.
                check_at = pairs + max(1, pairs // 8)
                interval = speedup_ci(base_s, trial_s, resamples=SETTLE_RESAMPLES)
                if relative_halfwidth(pooled_ratio(base_s, trial_s), *interval) <= s.rel_tol:
                    settled = True
                    break
            if pairs >= min_pairs and _spent(clock() - began - _waited(paused), 2 * s.max_time_s, s, busy):
                break
            if should_stop and should_stop():
                break
    trial, baseline = (summarize(batch_size, flatten(b), settled=settled, blocks=b) for b in (trial_s, base_s))
    low, high = speedup_ci(base_s, trial_s)
    return PairLatency(
        trial=trial,
        baseline=baseline,
        speedup=_ratio(baseline.latency_p50_ms, trial.latency_p50_ms),
        speedup_ci_low=low,
        speedup_ci_high=high,
        blocks=len(trial_s),
        block_reps=k_trial,
    )


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


def _pair_reps(per_trial_s: float, per_base_s: float, s: LatencySettings) -> tuple[int, int]:
    """Repetitions per block of the trial and of its baseline: the slower side's block is :func:`_block_reps`
    long, the faster side repeats until its block lasts about as long (at most ``block``).

    Each side then gets its share of the time and the faster one many more samples: with equal counts an int8
    ResNet-18 got 2 calls a block beside fp32's 2, 20 in all, and on a loaded host, where a call is preempted or
    not, its median flipped between modes 2x apart from run to run.
    """
    slow, fast = max(per_trial_s, per_base_s), min(per_trial_s, per_base_s)
    k_slow = _block_reps(slow, s)
    k_fast = max(k_slow, min(s.block, round(k_slow * slow / fast))) if fast > 0 else s.block
    return (k_fast, k_slow) if per_trial_s <= per_base_s else (k_slow, k_fast)


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
