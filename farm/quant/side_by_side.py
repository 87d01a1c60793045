"""A trial timed side by side with fp32 baselines in one process: its own runtime's fp32 (:func:`measure_pair`) and,
for a tune's verify job, other runtimes' fp32 exports too (:func:`measure_group`), every model's blocks interleaved
in one loop so that the host's drift hits all of them alike.

The speedup over each baseline is the ratio of the two sides' medians, with a bootstrap interval over the rounds of
blocks (:func:`farm.quant.timing_stats.speedup_ci`). The helpers and rules are :mod:`farm.quant.latency`'s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from farm.quant.hostload import busy_since
from farm.quant.latency import (
    MIN_BLOCKS,
    REWARM_BELOW_S,
    SETTLE_RESAMPLES,
    Clock,
    Latency,
    LatencySettings,
    _block_reps,
    _narrow,
    _ratio,
    _spent,
    _sync,
    _time_block,
    _waited,
    _warm,
    summarize,
)
from farm.quant.timing_stats import flatten, pooled_ratio, relative_halfwidth, speedup_ci


@dataclass(frozen=True)
class PairLatency:
    """A trial timed side by side with one fp32 baseline (:func:`measure_pair`, or one of :func:`measure_group`'s).

    Attributes:
        trial, baseline: each side's figures over all its timed repetitions.
        speedup: the baseline's p50 over the trial's, both over every repetition of the interleaved blocks (the
            figures shown beside it divide into it exactly); > 1 is faster. Not the median of per-block ratios: a
            block is a few calls, so its median is near their mean, and on a loaded host one preempted call of
            two moved a block's ratio by 2-4x (ResNet-18 static under a loader: median of block ratios 4.1x,
            ratio of the medians 7.8x, an independent re-timing 7.1x).
        speedup_ci_low, speedup_ci_high: its 95 % interval, a bootstrap over the pairs of blocks (fixed seed) joined
            with the order-statistic interval of the per-pair block ratios (:func:`farm.quant.timing_stats.speedup_ci`).
        blocks: how many pairs of blocks (rounds) were timed.
        block_reps: the trial's repetitions per block (:func:`_group_reps`).
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
    """Time a trial and its baseline side by side: :func:`measure_group` with one baseline (pairs of blocks, the side
    that goes first alternating from pair to pair: T B, B T, T B, ...; stopped after ``2 * max_time_s`` at most).

    Args:
        trial_fn, base_fn, batch_size, device, settings, should_stop, clock, busy, paused: as
            :func:`measure_group`'s.

    Returns:
        Both sides' figures and the speedup (baseline / trial) with its 95 % interval.
    """
    group = measure_group(
        trial_fn, [base_fn], batch_size, device=device, settings=settings, should_stop=should_stop, clock=clock,
        busy=busy, paused=paused,
    )  # fmt: skip
    return group[0]


def measure_group(
    trial_fn: Callable[[], object],
    base_fns: Sequence[Callable[[], object]],
    batch_size: int,
    *,
    device: str = "cpu",
    settings: LatencySettings | None = None,
    should_stop: Callable[[], bool] | None = None,
    clock: Clock = time.perf_counter,
    busy: Callable[[], bool] | None = None,
    paused: Callable[[], float] | None = None,
) -> list[PairLatency]:
    """Time a trial beside each of ``base_fns`` in one loop: warm every model, then rounds of one block each (the
    slowest model's block :func:`farm.quant.latency._block_reps` long, a faster one's repeating until it lasts about
    as long: :func:`_group_reps`) in an order that rotates from round to round (T A B, A B T, B T A, ...: each model
    in each place equally often, and none twice in a row across a round's end; with one baseline T B, B T), until
    every median and every speedup is known to ``rel_tol``, or ``max_time_s`` per model has passed (``busy_factor``
    times that on a busy host; never before ``min_reps`` per model, and never past ``max_reps`` on any).

    One loop rather than a pair per baseline: the trial's blocks serve every comparison, so each speedup rests on as
    many of its calls as a pair's would, at (n + 1) / 2n of the pairs' time (a tune's verify job beside three fp32s:
    4 models' budgets instead of 6), and all of them were taken over the same minutes of the host.

    Each block of a model faster than :data:`farm.quant.latency.REWARM_BELOW_S` a call starts with one untimed call:
    the other models' blocks evicted its weights from the caches and let the thread pool sleep, and a model served
    back to back (what a user deploys) pays neither.

    Args:
        trial_fn, base_fns: each runs one batch of the same inputs on its model.
        batch_size: samples per call.
        device: "cuda" synchronises around every repetition.
        settings: warm-up and stopping rules (``max_time_s`` is each model's share).
        should_stop: polled between rounds; True ends the measurement early (marked unstable).
        clock: seconds (tests pass a fake one).
        busy, paused: as :func:`farm.quant.latency.measure_latency`'s.

    Returns:
        Per baseline, in order: both sides' figures (the trial's the same in each) and the speedup (baseline /
        trial) with its 95 % interval.
    """
    s = settings or LatencySettings()
    sync = _sync(device)
    fns = [trial_fn, *base_fns]
    with torch.inference_mode():
        per_call = [_warm(fn, s, sync, clock) for fn in fns]
        reps = _group_reps(per_call, s)
        sides = [(fn, k, t < REWARM_BELOW_S) for fn, k, t in zip(fns, reps, per_call, strict=True)]
        min_rounds = max(MIN_BLOCKS, math.ceil(s.min_reps / min(reps)))
        timed: list[list[list[float]]] = [[] for _ in fns]  # per model, its blocks in order
        settled, check_at = False, min_rounds
        began, busy, budget = clock(), busy or busy_since(), len(fns) * s.max_time_s
        while len(timed[0]) * max(reps) < s.max_reps:
            start = len(timed[0]) % len(fns)
            for i in (*range(start, len(fns)), *range(start)):
                fn, k, rewarm = sides[i]
                timed[i].append(_time_block(fn, k, sync, clock, rewarm=rewarm))
            rounds = len(timed[0])
            if rounds >= check_at and all(_narrow(blocks, s.rel_tol) for blocks in timed):
                # Each speedup's own interval (its bootstrap from fewer resamples), checked after 1/8 more rounds
                # each time: a bootstrap per round would cost a fast model's round as much again.
                check_at = rounds + max(1, rounds // 8)
                if all(_speedup_narrow(base, timed[0], s.rel_tol) for base in timed[1:]):
                    settled = True
                    break
            if rounds >= min_rounds and _spent(clock() - began - _waited(paused), budget, s, busy):
                break
            if should_stop and should_stop():
                break
    trial = summarize(batch_size, flatten(timed[0]), settled=settled, blocks=timed[0])
    out = []
    for base_s in timed[1:]:
        baseline = summarize(batch_size, flatten(base_s), settled=settled, blocks=base_s)
        low, high = speedup_ci(base_s, timed[0])
        speedup = _ratio(baseline.latency_p50_ms, trial.latency_p50_ms)
        out.append(PairLatency(trial, baseline, speedup, low, high, len(timed[0]), reps[0]))
    return out


def _speedup_narrow(base_s: list[list[float]], trial_s: list[list[float]], rel_tol: float) -> bool:
    interval = speedup_ci(base_s, trial_s, resamples=SETTLE_RESAMPLES)
    return relative_halfwidth(pooled_ratio(base_s, trial_s), *interval) <= rel_tol


def _group_reps(per_call_s: Sequence[float], s: LatencySettings) -> list[int]:
    """Repetitions per block of each model: the slowest model's block is :func:`farm.quant.latency._block_reps`
    long, a faster one repeats until its block lasts about as long (at most ``block``).

    Each model then gets its share of the time and a faster one more samples: with equal counts an int8 ResNet-18
    got 2 calls a block beside fp32's 2, 20 in all, and on a loaded host, where a call is preempted or not, its
    median flipped between modes 2x apart from run to run.
    """
    slow = max(per_call_s)
    k_slow = _block_reps(slow, s)
    return [max(k_slow, min(s.block, round(k_slow * slow / t))) if t > 0 else s.block for t in per_call_s]
