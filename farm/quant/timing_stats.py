"""The statistics behind every latency figure: percentiles, a confidence interval for the median, a bootstrap
interval for a speedup, the host's run-to-run spread that widens a p50's interval, and THE rule that calls a
measurement stable.

Timings are skewed and heavy-tailed (a preempted call costs 10x), so nothing here assumes a distribution: the
median's interval comes from order statistics (the number of samples below the true median is Binomial(n, 1/2)),
the speedup's from resampling the pairs of blocks it was timed in, joined with the order statistics of their
ratios. The bootstrap uses a fixed seed, so the same samples always give the same interval. No torch (numpy only
for the pooled bootstrap).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: Two-sided confidence of every interval reported.
CONFIDENCE = 0.95
#: A p50 whose 95 % interval reaches further than this fraction of it on either side is not stable.
MAX_CI_REL = 0.05
#: A p99 more than this many times the p50 is not stable: the median hides a tail a user will hit.
MAX_TAIL_RATIO = 3.0
#: Resamples of the speedup's bootstrap; 2000 keeps the 2.5th and 97.5th percentiles steady to ~0.1 %.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0

#: Fewest recorded runs from which a run-to-run spread is estimated: with two, one difference says nothing of its
#: distribution.
MIN_RUNS = 3

# Exact binomial sums up to this many samples; beyond, the normal approximation is accurate to < 1 rank.
_EXACT_UP_TO = 4000


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` (0-100) of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@functools.lru_cache(maxsize=4096)
def median_ci_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int]:
    """0-based ranks (lo, hi) of the sorted samples that bound the median with at least ``confidence``.

    The interval [x_(j), x_(n-1-j)] misses the true median only when j or fewer samples fall on one side of it,
    which has probability 2 * P(Binomial(n, 1/2) <= j); j is the largest rank that keeps that below
    ``1 - confidence``. Below 6 samples no such rank exists and the whole range is returned.
    """
    if n <= 0:
        return 0, -1
    alpha_half = (1.0 - confidence) / 2.0
    if n > _EXACT_UP_TO:
        z = statistics.NormalDist().inv_cdf(1.0 - alpha_half)
        j = max(0, math.floor(n / 2.0 - z * math.sqrt(n) / 2.0 - 0.5))
        return j, n - 1 - j
    # x_(j) (0-based) lies above the median only when at most j samples fall below it: P(B <= j). Exact in
    # integers (2**n overflows a float past n ~ 1000), alpha scaled to parts per million.
    limit = round(alpha_half * 1_000_000) * (1 << n)
    term, cumulative, j = 1, 0, -1
    for k in range(n // 2 + 1):
        if k > 0:
            term = term * (n - k + 1) // k  # C(n, k), exact
        cumulative += term
        if cumulative * 1_000_000 > limit:
            break
        j = k
    return (0, n - 1) if j < 0 else (j, n - 1 - j)


def median_ci(sorted_values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free ``confidence`` interval of the median of already sorted samples (nan when empty)."""
    if not sorted_values:
        return float("nan"), float("nan")
    lo, hi = median_ci_ranks(len(sorted_values), confidence)
    return sorted_values[lo], sorted_values[hi]


def clustered_median_ci(blocks: Sequence[Sequence[float]], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The median's interval allowing for drift: the union of the order-statistic interval over every sample and
    the one over the per-block medians (blocks in the order they were timed).

    Consecutive timings are not independent: a neighbour's burst or a frequency step moves a whole block, and an
    interval over samples treats those correlated samples as many independent ones, so it comes out too narrow.
    Blocks are the independent units; their medians' interval is wide when the level moved during the measurement
    (below 6 blocks it is their whole range). Taking the union never narrows the per-sample interval.
    """
    flat = sorted(v for block in blocks for v in block)
    low, high = median_ci(flat, confidence)
    medians = sorted(statistics.median(block) for block in blocks if block)
    if len(medians) > 1:
        b_low, b_high = median_ci(medians, confidence)
        low, high = min(low, b_low), max(high, b_high)
    return low, high


def pooled_ratio(base_blocks: Sequence[Sequence[float]], trial_blocks: Sequence[Sequence[float]]) -> float:
    """A side-by-side speedup: the median of every base sample over the median of every trial sample (inf when
    the trial's is 0, nan when either side is empty)."""
    base, trial = flatten(base_blocks), flatten(trial_blocks)
    if not base or not trial:
        return float("nan")
    b, t = statistics.median(base), statistics.median(trial)
    return b / t if t > 0 else float("inf")


def pooled_ratio_ci(
    base_blocks: Sequence[Sequence[float]],
    trial_blocks: Sequence[Sequence[float]],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """The interval of :func:`pooled_ratio`.

    The unit resampled is a pair of blocks (the i-th block of each side, timed back to back): a level shift moves
    both sides of a pair, so resampling pairs keeps what the pairing cancels cancelled, and resampling whole blocks
    keeps the correlation within a block. The percentile interval is then widened about the estimate, on the log
    scale (a ratio's ends stay positive), by :func:`small_sample_factor` over the number of pairs, as a bootstrap
    from few clusters covers less than it claims; it always contains the estimate. Deterministic for a seed; one
    pair gives the estimate itself (no spread to resample), no pairs nan.
    """
    import numpy as np

    n = min(len(base_blocks), len(trial_blocks))
    estimate = pooled_ratio(base_blocks[:n], trial_blocks[:n])
    if n <= 1 or not math.isfinite(estimate) or estimate <= 0 or not all(base_blocks[:n]) or not all(trial_blocks[:n]):
        return estimate, estimate
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(resamples, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = _resampled_medians(base_blocks[:n], picks) / _resampled_medians(trial_blocks[:n], picks)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = (float(v) for v in np.nanpercentile(ratios, [tail, 100.0 - tail]))
    factor = small_sample_factor(n, confidence)
    low = estimate * (min(low, estimate) / estimate) ** factor if low > 0 else 0.0
    high = estimate * (max(high, estimate) / estimate) ** factor
    return low, high


def speedup_ci(
    base_blocks: Sequence[Sequence[float]],
    trial_blocks: Sequence[Sequence[float]],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """The reported interval of a side-by-side speedup: :func:`pooled_ratio_ci` joined with the distribution-free
    interval of the median of the per-pair block ratios.

    The bootstrap sees only what varies inside one measurement. A pair of models in one process also carries an
    offset that changes from process to process (where each model's memory landed, how its first calls went): a
    dynamic ResNet-18, whose true speedup is 1.00, read 0.988-1.027 over five runs with bootstrap intervals of
    +-1-2 %, and one of five missed 1.0. The block ratios' spread shows that offset's order, so their interval (as
    wide as the spread of a few blocks needs) guards the bootstrap's; on a loaded host, where a block of two calls
    is half preempted, it is wide, which is the truth of such a host.
    """
    low, high = pooled_ratio_ci(base_blocks, trial_blocks, resamples=resamples, confidence=confidence)
    pairs = zip(base_blocks, trial_blocks, strict=False)
    medians = [(statistics.median(b), statistics.median(t)) for b, t in pairs if b and t]
    ratios = sorted(b / t for b, t in medians if t > 0)
    if len(ratios) < 2 or not (math.isfinite(low) and math.isfinite(high)):
        return low, high
    o_low, o_high = median_ci(ratios, confidence)
    return min(low, o_low), max(high, o_high)


def _resampled_medians(blocks: Sequence[Sequence[float]], picks: np.ndarray) -> np.ndarray:
    """The median of the pooled samples of each row of block indices ``picks`` (resamples x blocks)."""
    import numpy as np

    lengths = {len(b) for b in blocks}
    if len(lengths) == 1:  # blocks of one length (the usual case): one vectorised median
        data = np.asarray(blocks, dtype=float)
        return np.median(data[picks].reshape(len(picks), -1), axis=1)
    return np.array([np.median(np.concatenate([blocks[i] for i in row])) for row in picks])


def flatten(blocks: Sequence[Sequence[float]]) -> list[float]:
    """The samples of ``blocks``, in order."""
    return [v for block in blocks for v in block]


def run_to_run_spread(p50s: Sequence[float], confidence: float = CONFIDENCE) -> float | None:
    """How far one run's p50 lands from another's on this host: the ``confidence`` percentile of
    ``|a / b - 1|`` over every ordered pair of distinct runs, widened for the few runs it comes from; None below
    :data:`MIN_RUNS`.

    A within-run interval cannot see the host's level moving between jobs (5-13 % over minutes on a shared VM).
    The relative difference of two runs is exactly what a user re-running a job meets, so a p50 widened by this
    spread contains a re-run's p50 with about ``confidence``; no distribution is assumed for the differences.
    From n runs the scale itself is uncertain, and a range of a few runs is no 95 % bound (a new run falls outside
    the range of 6 with probability 2/7): the estimate is multiplied by Student's t over the normal quantile at
    n - 1 degrees of freedom (:func:`small_sample_factor`: 2.2x from 3 runs, 1.2x from 8, 1.04x from 30), as a
    prediction interval from n samples is.

    Outlying runs count: a shared VM's level jumps 7-12 % in one run of five to ten, and a re-run meets those jumps
    as often as the history holds them. (An estimate that set them aside, the median difference scaled to 95 %,
    bounded a 1-thread ResNet-18 re-run at +-4-5 % and missed 2 of 10.) An outlier ages out of the history with
    its last :data:`farm.quant.drift.MAX_ENTRIES` runs or :data:`farm.quant.drift.MAX_AGE_S`.

    Args:
        p50s: the host's recent p50s of one measurement (same model, batch, threads, device, runtime).
        confidence: fraction of run-to-run differences the spread covers.

    Returns:
        A fraction (0.08: +-8 %), or None with fewer than :data:`MIN_RUNS` positive finite values.
    """
    values = [v for v in p50s if v > 0 and math.isfinite(v)]
    if len(values) < MIN_RUNS:
        return None
    diffs = sorted(abs(a / b - 1.0) for i, a in enumerate(values) for j, b in enumerate(values) if i != j)
    return percentile(diffs, confidence * 100.0) * small_sample_factor(len(values), confidence)


#: Student's t at 0.975 (a two-sided 95 % interval) for 1 to 30 degrees of freedom.
_T975 = (
    *(12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228),
    *(2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086),
    *(2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042),
)


def student_t(p: float, df: int) -> float:
    """Student's t quantile ``p`` at ``df`` degrees of freedom: exact (3 decimals) for p = 0.975 up to 30 df, else
    the Cornish-Fisher expansion about the normal quantile (within 1 % from 3 df for p <= 0.975; it falls short
    further out in the tail and at fewer degrees of freedom)."""
    if df < 1:
        raise ValueError("a t quantile needs at least one degree of freedom")
    if abs(p - 0.975) < 1e-12 and df <= len(_T975):
        return _T975[df - 1]
    z = NormalDist().inv_cdf(p)
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def small_sample_factor(n: int, confidence: float = CONFIDENCE) -> float:
    """How much wider a ``confidence`` bound estimated from ``n`` samples must be than the normal one: Student's t
    at n - 1 degrees of freedom over the normal quantile (1.0 as n grows)."""
    p = 0.5 + confidence / 2
    return student_t(p, max(n - 1, 1)) / NormalDist().inv_cdf(p)


def widen_interval(p50: float, low: float, high: float, rel: float | None) -> tuple[float, float]:
    """The interval ``[low, high]`` joined with ``p50 * (1 +- rel)`` (unchanged when ``rel`` is None): never
    narrower than it was, and exactly the spread where the spread is the wider of the two. A spread past 100 %
    (a host whose runs differ twofold) bounds the p50 below by 0, not by a negative time."""
    if rel is None or not math.isfinite(p50):
        return low, high
    return min(low, p50 * max(0.0, 1.0 - rel)), max(high, p50 * (1.0 + rel))


def relative_halfwidth(center: float, low: float, high: float) -> float:
    """The larger distance from ``center`` to either end of its interval, as a fraction of ``center``."""
    if not center > 0 or math.isnan(low) or math.isnan(high):
        return float("inf")
    return max(center - low, high - center) / center


def unstable_reason(
    p50: float,
    ci_low: float,
    ci_high: float,
    p99: float,
    *,
    settled: bool,
    max_ci_rel: float = MAX_CI_REL,
    max_tail_ratio: float = MAX_TAIL_RATIO,
) -> str | None:
    """THE stable rule: why a latency figure is not to be trusted, or None when it is.

    Args:
        p50, ci_low, ci_high: the median and its 95 % interval. A job's interval also holds the host's
            run-to-run drift (:func:`widen_interval`), so a figure on a host whose level wanders is not
            stable however long it was timed.
        p99: the 99th percentile.
        settled: the measurement reached its stopping target (False: it ran out of time or repetitions first,
            or was stopped).

    Returns:
        A short reason (the first that applies: wide interval, heavy tail, not settled), or None.
    """
    if not p50 > 0:
        return "no positive median"
    wide = wide_interval_reason(p50, ci_low, ci_high, max_ci_rel=max_ci_rel)
    if wide:
        return wide
    if p99 / p50 > max_tail_ratio:
        return f"p99 is {p99 / p50:.1f}x the p50 (> {max_tail_ratio:g}x): a heavy tail"
    if not settled:
        return "the time budget ran out before the figures settled"
    return None


def wide_interval_reason(p50: float, ci_low: float, ci_high: float, *, max_ci_rel: float = MAX_CI_REL) -> str | None:
    """The first clause of :func:`unstable_reason`: why the p50's interval is too wide to trust, or None."""
    width = relative_halfwidth(p50, ci_low, ci_high)
    if width > max_ci_rel:
        return f"the p50's 95 % CI reaches ±{width:.1%} of it (> {max_ci_rel:.0%})"
    return None
