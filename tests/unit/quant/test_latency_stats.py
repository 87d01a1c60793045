"""The statistics behind every latency figure, and side-by-side timing on a fake clock (deterministic: nothing
here depends on how fast the machine is)."""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections.abc import Callable

import pytest

from farm.quant.hostload import CpuTimes
from farm.quant.latency import LatencySettings, measure_latency, summarize
from farm.quant.side_by_side import measure_group, measure_pair
from farm.quant.timing_stats import (
    median_ci,
    median_ci_ranks,
    pooled_ratio,
    pooled_ratio_ci,
    relative_halfwidth,
    speedup_ci,
    unstable_reason,
)


class FakeClock:
    """A clock that only moves when a fake model runs: each call to ``model(cost)`` advances it by ``cost``."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def model(self, cost: Callable[[], float], log: list[str] | None = None, name: str = "") -> Callable[[], None]:
        def run() -> None:
            self.now += cost()
            if log is not None:
                log.append(name)

        return run


# busy_factor 1: a fake clock's budget must not stretch with the real host's load while the tests run.
FAST = LatencySettings(
    warmup_s=0.0, warmup_reps=3, min_reps=20, max_reps=2000, max_time_s=1.0, block=10, busy_factor=1.0
)


# --- the median's interval -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "ranks"), [(6, (0, 5)), (10, (1, 8)), (20, (5, 14)), (100, (39, 60))])
def test_median_ci_ranks_match_the_binomial_table(n: int, ranks: tuple[int, int]) -> None:
    # Published order-statistic bounds (1-based: n=10 -> 2nd and 9th, n=100 -> 40th and 61st).
    assert median_ci_ranks(n) == ranks


def test_median_ci_ranks_exact_and_approximate_agree_where_they_meet() -> None:
    exact_lo, _ = median_ci_ranks(4000)
    approx_lo, _ = median_ci_ranks(4001)
    assert abs(exact_lo - approx_lo) <= 1


def test_fewer_than_six_samples_give_the_whole_range() -> None:
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) == (1.0, 5.0)
    assert all(math.isnan(v) for v in median_ci([]))


def test_median_ci_covers_the_true_median_of_a_skewed_distribution() -> None:
    rng = random.Random(1)
    true_median = math.exp(0.0)  # lognormal(mu=0): heavy right tail, like latencies
    trials, covered = 400, 0
    for _ in range(trials):
        sample = sorted(rng.lognormvariate(0.0, 0.5) for _ in range(60))
        low, high = median_ci(sample)
        covered += low <= true_median <= high
    assert covered / trials >= 0.93  # 95 % nominal; exact ranks are conservative


# --- the speedup's bootstrap -----------------------------------------------------------------------------------


def test_the_pooled_ratio_interval_is_deterministic_and_brackets_the_ratio_of_medians() -> None:
    rng = random.Random(7)
    base = [[10.0 * rng.lognormvariate(0.0, 0.05) for _ in range(3)] for _ in range(20)]
    trial = [[5.0 * rng.lognormvariate(0.0, 0.05) for _ in range(3)] for _ in range(20)]
    first, again = pooled_ratio_ci(base, trial), pooled_ratio_ci(base, trial)
    assert first == again
    estimate = statistics.median(v for b in base for v in b) / statistics.median(v for b in trial for v in b)
    assert first[0] < estimate < first[1]
    assert 1.85 < first[0] and first[1] < 2.15  # 60 samples a side at 5 % noise: a few % either way


def test_the_pooled_ratio_interval_sees_a_level_shift_the_pairs_share_only_through_its_pairs() -> None:
    # The host's level doubles half way; both sides of every pair move together, so the ratio stays 2.
    base = [[20.0 if i >= 10 else 10.0] * 3 for i in range(20)]
    trial = [[10.0 if i >= 10 else 5.0] * 3 for i in range(20)]
    low, high = pooled_ratio_ci(base, trial)
    assert low <= 2.0 <= high


def test_one_preempted_call_per_block_does_not_move_the_speedup() -> None:
    """Under a loader one call in a block of two is preempted: the per-block ratios fall, the pooled medians
    don't (the case that made the median of block ratios read 4x for a 7x speedup)."""
    base = [[300.0, 300.0] for _ in range(10)]
    trial = [[40.0, 40.0 if i % 2 else 140.0] for i in range(10)]
    assert pooled_ratio(base, trial) == 7.5  # the median of the block ratios would read (7.5 + 3.33) / 2 = 5.4
    low, high = pooled_ratio_ci(base, trial)
    assert low <= 7.5 <= high and low > 0


def test_the_reported_interval_holds_both_the_bootstrap_and_the_block_ratios_spread() -> None:
    """A steady per-run offset shows in the block ratios (here 0.97-1.03) more than in the pooled bootstrap."""
    rng = random.Random(11)
    base = [[100.0 * rng.lognormvariate(0.0, 0.002) for _ in range(2)] for _ in range(11)]
    trial = [[100.0 * (1.0 + 0.03 * ((i % 3) - 1)) * rng.lognormvariate(0.0, 0.002)] * 2 for i in range(11)]
    low, high = speedup_ci(base, trial)
    p_low, p_high = pooled_ratio_ci(base, trial)
    ratios = sorted(statistics.median(b) / statistics.median(t) for b, t in zip(base, trial, strict=True))
    o_low, o_high = median_ci(ratios)
    assert (low, high) == (min(p_low, o_low), max(p_high, o_high))
    assert low < 1.0 < high


def test_the_pooled_ratio_of_one_pair_or_none_or_a_zero_trial() -> None:
    assert pooled_ratio_ci([[2.0]], [[1.0]]) == (2.0, 2.0)
    assert all(math.isnan(v) for v in pooled_ratio_ci([], []))
    assert pooled_ratio([[2.0]], [[0.0]]) == math.inf


def test_few_pairs_widen_the_interval_on_the_log_scale_and_it_keeps_the_estimate() -> None:
    base = [[10.0, 10.0], [30.0, 30.0]]  # two pairs whose ratios are 10 and 1: a factor of ~6.5 for 2 pairs
    trial = [[1.0, 1.0], [30.0, 30.0]]
    estimate = pooled_ratio(base, trial)
    low, high = pooled_ratio_ci(base, trial)
    assert 0 < low <= estimate <= high


# --- the stable rule -------------------------------------------------------------------------------------------


def test_the_stable_rule() -> None:
    assert unstable_reason(10.0, 9.9, 10.1, 12.0, settled=True) is None
    assert "CI" in (unstable_reason(10.0, 9.0, 10.1, 12.0, settled=True) or "")  # 10 % below
    assert "heavy tail" in (unstable_reason(10.0, 9.9, 10.1, 31.0, settled=True) or "")
    assert "time budget" in (unstable_reason(10.0, 9.9, 10.1, 12.0, settled=False) or "")
    assert unstable_reason(0.0, 0.0, 0.0, 0.0, settled=True) is not None
    assert relative_halfwidth(10.0, 9.5, 10.2) == pytest.approx(0.05)


def test_summarize_carries_the_interval_and_the_verdict() -> None:
    lat = summarize(1, [0.001] * 40, settled=True)
    assert (lat.latency_p50_ci_low_ms, lat.latency_p50_ci_high_ms) == (pytest.approx(1.0), pytest.approx(1.0))
    assert lat.stable is True and lat.unstable_reason is None
    tail = summarize(1, [0.001] * 95 + [0.05] * 5, settled=True)  # p99 at 50x the median
    assert tail.stable is False and "heavy tail" in (tail.unstable_reason or "")


# --- measuring on a fake clock ---------------------------------------------------------------------------------


def test_a_steady_model_settles_at_min_reps() -> None:
    clock = FakeClock()
    lat = measure_latency(clock.model(lambda: 0.002), 1, settings=FAST, clock=clock)
    assert lat.reps == 60 and lat.stable is True  # 6 blocks (MIN_BLOCKS) of 10: the fewest that may settle
    assert lat.latency_p50_ms == pytest.approx(2.0)


def test_a_model_that_never_settles_says_so() -> None:
    clock = FakeClock()
    costs = iter([0.001, 0.004] * 10_000)
    lat = measure_latency(clock.model(lambda: next(costs)), 1, settings=FAST, clock=clock)
    assert lat.stable is False and lat.unstable_reason
    assert clock.now < 2 * FAST.max_time_s  # the budget bounded it


def _flip_flop(clock: FakeClock) -> Callable[[], None]:
    """A model that never settles: calls of 1 and 4 ms in turn."""
    costs = iter([0.001, 0.004] * 100_000)
    return clock.model(lambda: next(costs))


@pytest.mark.parametrize(("busy", "low", "high"), [(False, 1.0, 1.1), (True, 4.0, 4.1)])
def test_an_unsettled_measurement_on_a_busy_host_takes_up_to_busy_factor_times_its_budget(
    busy: bool, low: float, high: float
) -> None:
    settings, asked = dataclasses.replace(FAST, busy_factor=4.0), list[bool]()

    def probe() -> bool:
        asked.append(busy)
        return busy

    clock = FakeClock()
    lat = measure_latency(_flip_flop(clock), 1, settings=settings, clock=clock, busy=probe)
    assert lat.stable is False and low * settings.max_time_s <= clock.now <= high * settings.max_time_s
    assert asked  # asked once the budget was spent
    clock = FakeClock()
    pair = measure_pair(_flip_flop(clock), clock.model(lambda: 0.002), 1, settings=settings, clock=clock, busy=probe)
    assert pair.trial.stable is False
    assert 2 * low * settings.max_time_s <= clock.now <= 2 * high * settings.max_time_s + 0.1


def test_a_measurement_that_settles_within_its_budget_never_asks_whether_the_host_is_busy() -> None:
    clock, asked = FakeClock(), list[int]()
    settings = dataclasses.replace(FAST, busy_factor=4.0)
    measure_latency(clock.model(lambda: 0.002), 1, settings=settings, clock=clock, busy=lambda: bool(asked.append(1)))
    assert asked == []


def test_busy_since_reads_the_host_load_since_it_was_made(monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.quant import hostload

    readings = iter([CpuTimes(0.0, 0.0, 0.0), CpuTimes(1.5, 2.0, 0.5), CpuTimes(0.6, 2.0, 0.5)])
    monkeypatch.setattr(hostload, "cpu_times", lambda: next(readings))
    busy = hostload.busy_since()
    assert busy() is True  # others kept 1.0 of the 1.5 CPU-s this process left: 67 %
    assert busy() is False  # 0.1 of 1.5: 7 %
    monkeypatch.setattr(hostload, "cpu_times", lambda: None)
    assert hostload.busy_since()() is False  # no /proc/stat: never busy


def test_a_pair_with_a_known_2x_ratio_reports_2x() -> None:
    clock = FakeClock()
    pair = measure_pair(clock.model(lambda: 0.001), clock.model(lambda: 0.002), 8, settings=FAST, clock=clock)
    assert pair.speedup == pytest.approx(2.0)
    assert (pair.speedup_ci_low, pair.speedup_ci_high) == (pytest.approx(2.0), pytest.approx(2.0))
    assert pair.trial.latency_p50_ms == pytest.approx(1.0) and pair.baseline.latency_p50_ms == pytest.approx(2.0)
    assert pair.trial.stable and pair.blocks == 6  # settled as soon as allowed
    entry = pair.entry()
    assert entry["baseline_p50_ms"] == pytest.approx(2.0) and entry["speedup"] == pytest.approx(2.0)
    assert {"speedup_ci_low", "speedup_ci_high", "blocks", "latency_p50_ci_low_ms"} <= set(entry)


def test_a_noisy_pair_recovers_its_ratio_and_the_interval_contains_it() -> None:
    clock, rng = FakeClock(), random.Random(3)
    trial = clock.model(lambda: 0.001 * rng.lognormvariate(0.0, 0.1))
    base = clock.model(lambda: 0.0015 * rng.lognormvariate(0.0, 0.1))
    pair = measure_pair(trial, base, 1, settings=FAST, clock=clock)
    assert pair.speedup == pytest.approx(1.5, rel=0.05)
    assert pair.speedup_ci_low <= 1.5 <= pair.speedup_ci_high


def test_the_faster_side_repeats_until_its_block_lasts_as_long_as_the_slower_ones() -> None:
    """int8 at 20 ms beside fp32 at 200 ms: fp32's blocks are 2 calls, int8's 10 (the cap), so int8's median
    rests on 5x the samples; one preempted int8 call in every block (5x slower) moves neither it nor the speedup."""
    clock, calls = FakeClock(), iter(range(1_000_000))
    trial = clock.model(lambda: 0.1 if next(calls) % 11 == 5 else 0.02)
    pair = measure_pair(trial, clock.model(lambda: 0.2), 8, settings=FAST, clock=clock)
    assert pair.trial.reps == 5 * pair.baseline.reps == 10 * pair.blocks
    # Settled on the speedup's own interval as soon as min_reps allowed (20 fp32 calls in blocks of 2); the trial
    # is marked unstable all the same, for its tail (p99 5x its p50).
    assert pair.baseline.stable and pair.blocks == 10 and "tail" in (pair.trial.unstable_reason or "")
    assert pair.trial.latency_p50_ms == pytest.approx(20.0)
    assert pair.speedup == pytest.approx(10.0) and pair.speedup_ci_low <= 10.0 <= pair.speedup_ci_high


def test_drift_hits_both_sides_alike() -> None:
    # The machine slows down steadily (a neighbour starts, the clock throttles): timed one after the other, the
    # second model would look up to 2x slower; interleaved, the two identical models' ratio stays 1.
    clock = FakeClock()
    slowdown = lambda: 0.001 * (1.0 + clock.now / 2.0)  # noqa: E731
    pair = measure_pair(clock.model(slowdown), clock.model(slowdown), 1, settings=FAST, clock=clock)
    assert pair.speedup == pytest.approx(1.0, rel=0.02)
    assert pair.speedup_ci_low <= 1.0 <= pair.speedup_ci_high


def test_blocks_alternate_which_side_goes_first() -> None:
    clock, log = FakeClock(), list[str]()
    settings = LatencySettings(warmup_s=0.0, warmup_reps=2, min_reps=4, max_time_s=1.0, block=2)
    measure_pair(
        clock.model(lambda: 0.001, log, "T"), clock.model(lambda: 0.001, log, "B"), 1, settings=settings, clock=clock
    )
    assert log[:4] == ["T", "T", "B", "B"]  # warm-up: each side on its own
    timed = "".join(log[4:])
    # Blocks of 2 timed calls (capped by block), each after one untimed call: T B | B T | T B ...
    assert timed.startswith("TTTBBBBBBTTTTTTBBB")
    assert timed.count("T") == timed.count("B")


def test_a_trial_beside_two_baselines_times_its_blocks_once_for_both_speedups() -> None:
    clock = FakeClock()
    trial, fp32, rival = (clock.model(lambda c=c: c) for c in (0.001, 0.002, 0.004))  # type: ignore[misc]
    own, other = measure_group(trial, [fp32, rival], 8, settings=FAST, clock=clock)
    assert (own.speedup, other.speedup) == (pytest.approx(2.0), pytest.approx(4.0))
    assert (other.speedup_ci_low, other.speedup_ci_high) == (pytest.approx(4.0), pytest.approx(4.0))
    # One loop: the same trial figures behind both speedups, settled as soon as allowed (6 rounds). The slowest
    # model's block is 5 calls (0.02 s), the others repeat to last as long (capped at 10).
    assert own.trial is other.trial and own.blocks == other.blocks == 6 and own.trial.stable
    assert (own.trial.reps, own.baseline.reps, other.baseline.reps) == (60, 60, 30)
    assert other.entry()["baseline_p50_ms"] == pytest.approx(4.0)


def test_a_group_times_one_block_of_each_model_a_round_in_an_order_that_rotates() -> None:
    clock, log = FakeClock(), list[str]()
    settings = LatencySettings(warmup_s=0.0, warmup_reps=1, min_reps=2, max_time_s=1.0, block=2, busy_factor=1.0)
    models = [clock.model(lambda: 0.1, log, name) for name in "TAB"]  # slow calls: no untimed call before a block
    measure_group(models[0], models[1:], 1, settings=settings, clock=clock)
    assert log[:3] == ["T", "A", "B"]  # warm-up
    timed = "".join(log[3:])
    assert timed.startswith("TTAABB" + "AABBTT" + "BBTTAA" + "TTAABB")  # the order rotates: no model twice in a row
    assert timed.count("T") == timed.count("A") == timed.count("B")


def test_an_unsettled_group_stops_after_each_models_share_of_the_budget() -> None:
    clock = FakeClock()
    trial = _flip_flop(clock)
    bases = [clock.model(lambda: 0.002) for _ in range(3)]
    group = measure_group(trial, bases, 1, settings=FAST, clock=clock)
    spent = clock.now
    assert not group[0].trial.stable and len(group) == 3
    assert 4 * FAST.max_time_s <= spent < 4 * FAST.max_time_s + 0.1  # 4 models, 1 s each, then one more round
    pair = measure_pair(trial, bases[0], 1, settings=FAST, clock=clock)
    assert not pair.trial.stable and 2 * FAST.max_time_s <= clock.now - spent < 2 * FAST.max_time_s + 0.1


def test_a_slow_side_times_its_blocks_from_the_first_call() -> None:
    """A call of 0.1 s (above REWARM_BELOW_S) gets no untimed call before its blocks; a 1 ms one still does."""
    clock, log = FakeClock(), list[str]()
    settings = LatencySettings(warmup_s=0.0, warmup_reps=2, min_reps=4, max_time_s=1.0, block=2, busy_factor=1.0)
    pair = measure_pair(
        clock.model(lambda: 0.001, log, "T"), clock.model(lambda: 0.1, log, "B"), 1, settings=settings, clock=clock
    )
    timed = "".join(log[4:])
    # fp32 (B, slow): blocks of 2 timed calls; the trial (T, fast): 2 (capped by block) after one untimed call.
    assert timed.startswith("TTTBBBBTTT")
    assert timed.count("B") == pair.baseline.reps and timed.count("T") == pair.trial.reps + pair.blocks


def test_should_stop_ends_a_pair_early_and_marks_it_unstable() -> None:
    clock = FakeClock()
    costs = iter([0.001, 0.004] * 10_000)
    pair = measure_pair(
        clock.model(lambda: next(costs)),
        clock.model(lambda: 0.002),
        1,
        settings=FAST,
        clock=clock,
        should_stop=lambda: True,
    )
    assert pair.blocks == 1 and pair.trial.stable is False


def test_min_reps_outlast_the_time_budget() -> None:
    # A slow model (1 s a call) with a 0.1 s budget: fewer than min_reps samples could not bound its median.
    clock = FakeClock()
    settings = LatencySettings(warmup_s=0.0, warmup_reps=1, min_reps=7, max_time_s=0.1, block=1)
    lat = measure_latency(clock.model(lambda: 1.0), 1, settings=settings, clock=clock)
    assert lat.reps == 7
    pair = measure_pair(clock.model(lambda: 1.0), clock.model(lambda: 2.0), 1, settings=settings, clock=clock)
    assert pair.blocks == 7 and pair.speedup == pytest.approx(2.0)


def test_a_level_that_drifts_between_blocks_widens_the_p50_interval() -> None:
    from farm.quant.timing_stats import clustered_median_ci

    # 20 blocks, each tight, the level creeping up 1 % per block: samples look many and precise, blocks do not.
    blocks = [[100.0 + i + 0.01 * j for j in range(10)] for i in range(20)]
    flat = sorted(v for b in blocks for v in b)
    per_sample = median_ci(flat)
    low, high = clustered_median_ci(blocks)
    assert low <= per_sample[0] and high >= per_sample[1]
    assert (high - low) > 2 * (per_sample[1] - per_sample[0])
    assert low <= 105.1 and high >= 114.0  # ranks 5 and 14 of the 20 block medians (100 + i + 0.045)
    # No drift: the blocks agree and the interval is the per-sample one.
    steady = [[100.0 + 0.01 * ((i * 7 + j) % 10) for j in range(10)] for i in range(20)]
    assert clustered_median_ci(steady) == median_ci(sorted(v for b in steady for v in b))


def test_a_slow_steady_model_settles_in_six_short_blocks_within_min_reps() -> None:
    clock = FakeClock()
    lat = measure_latency(clock.model(lambda: 0.2), 8, settings=FAST, clock=clock)
    assert lat.stable is True and lat.reps == 20  # 10 blocks of 2 (0.2 s calls make 2-call blocks): min_reps
