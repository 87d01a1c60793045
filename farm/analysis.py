"""Best configurations from result rows: Pareto fronts, the best config within an accuracy budget, and
sweep-to-sweep comparison. Pure functions over rows of results_flat (dicts); no database, no printing.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from farm.errors import ConfigError
from farm.metric_targets import Target, figure, meets, shortfall

#: Figures that differ by batch size: a front or a choice over them is made per batch size.
PER_BATCH = {"latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "throughput", "speedup", "speedup_vs_best_fp32"}
#: Figures for which bigger is better (the default direction for pareto's y and for best's --by).
MAXIMISE = {
    "accuracy",
    "accuracy_fp32",
    "agreement",
    "sqnr_db",
    "cosine",
    "metric_value",
    "throughput",
    "speedup",
    "speedup_vs_best_fp32",
    "coverage",
}
#: What identifies a recipe across sweeps (the same grid on two pools or two releases); the runtime is part of it.
RECIPE_COLUMNS = (
    "model",
    "dataset",
    "method",
    "runtime",
    "bits",
    "calibration_size",
    "backend",
    "observer",
    "granularity",
)
#: Ratios whose baseline is each job's own runtime's fp32: they rank the jobs of one runtime only.
OWN_RUNTIME_RATIOS = ("speedup", "speedup_ci_low", "speedup_ci_high")


#: The interval columns of the figures that carry one: overlapping intervals are a tie, not a ranking.
INTERVALS = {
    "latency_p50_ms": ("latency_p50_ci_low_ms", "latency_p50_ci_high_ms"),
    "speedup": ("speedup_ci_low", "speedup_ci_high"),
}
#: How much an observer costs to calibrate, cheapest first (ties are broken towards the cheaper one).
OBSERVER_COST = {None: 0, "minmax": 0, "moving_average": 1, "histogram": 2, "percentile": 3}
#: What a tie break says it preferred.
SIMPLICITY = "no QAT, then fewer calibration samples, then a cheaper observer"


def succeeded(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of succeeded jobs whose figures can be trusted (health ok, or unknown for rows before 0006),
    measured on the test split: a tune's sensitivity jobs (split validation) rank layers, never recipes."""
    return [
        r
        for r in rows
        if r.get("state") == "succeeded" and r.get("health") in (None, "ok") and r.get("split") in (None, "test")
    ]


def unhealthy(rows: Iterable[dict[str, Any]]) -> dict[int, str]:
    """The succeeded jobs left out of every ranking because their figures mean nothing, with their health.

    Returns:
        {job_id: health} for jobs whose ``health`` is ``degenerate_reference``, ``collapsed`` or ``nan``.
    """
    return {
        r["job_id"]: str(r["health"])
        for r in rows
        if r.get("state") == "succeeded" and r.get("health") not in (None, "ok")
    }


def excluded_note(rows: Iterable[dict[str, Any]]) -> str | None:
    """One line saying how many jobs a ranking left out for their health, by kind; None when none."""
    bad = unhealthy(rows)
    if not bad:
        return None
    counts: defaultdict[str, int] = defaultdict(int)
    for health in bad.values():
        counts[health] += 1
    kinds = ", ".join(f"{n} {h}" for h, n in sorted(counts.items()))
    return f"{len(bad)} job(s) left out: their figures mean nothing ({kinds}; see the health column)"


def check_comparable(rows: Iterable[dict[str, Any]], *figures: str) -> None:
    """Refuse to rank rows of several runtimes by a ratio whose baseline differs between them.

    ``speedup`` divides each job's fp32 baseline on its own runtime by the job: an onnxruntime job at 2x and a
    torch job at 1.5x say nothing about which is faster. Latency, or ``speedup_vs_best_fp32`` (one baseline for
    every runtime), ranks them.

    Raises:
        ConfigError: a figure of :data:`OWN_RUNTIME_RATIOS` over rows of more than one runtime.
    """
    ratios = [f for f in figures if f in OWN_RUNTIME_RATIOS]
    runtimes = sorted({str(r.get("runtime") or "torch") for r in succeeded(rows)})
    if ratios and len(runtimes) > 1:
        raise ConfigError(
            f"{ratios[0]} compares each job with its own runtime's fp32, so it can't rank jobs of different runtimes "
            f"({', '.join(runtimes)}): rank by latency_p50_ms or speedup_vs_best_fp32, or filter on one runtime"
        )


def simplicity(row: dict[str, Any]) -> tuple[int, int, int]:
    """Sort key of a recipe's cost to produce, simplest first: no QAT, fewer calibration samples, cheaper observer."""
    return (
        1 if row.get("method") == "qat" else 0,
        int(row.get("calibration_size") or 0),
        OBSERVER_COST.get(row.get("observer"), len(OBSERVER_COST)),
    )


def interval(row: dict[str, Any], figure: str) -> tuple[float, float]:
    """The figure's 95 % interval when the row has one, else the figure itself as a zero-width interval."""
    value = float(row[figure])
    columns = INTERVALS.get(figure)
    low, high = (row.get(columns[0]), row.get(columns[1])) if columns else (None, None)
    if low is None or high is None:
        return value, value
    return min(float(low), value), max(float(high), value)


def overlaps(a: dict[str, Any], b: dict[str, Any], figure: str) -> bool:
    """Whether two rows' intervals of ``figure`` overlap: the measurement cannot tell them apart."""
    (lo_a, hi_a), (lo_b, hi_b) = interval(a, figure), interval(b, figure)
    return lo_a <= hi_b and lo_b <= hi_a


def _groups(rows: Sequence[dict[str, Any]], per_batch: bool) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """Rows by model (and batch size when a figure depends on it); one row per job otherwise."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    seen: set[tuple[Any, ...]] = set()
    for r in rows:
        key = (r["model"], r["batch_size"]) if per_batch else (r["model"],)
        ident = (*key, r["job_id"])
        if ident in seen:
            continue
        seen.add(ident)
        groups[key].append(r)
    return dict(groups)


def pareto_front(
    rows: Sequence[dict[str, Any]],
    x: str,
    y: str,
    *,
    maximize_x: bool = False,
    maximize_y: bool = True,
) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """The non-dominated succeeded rows per model (and batch size, when x or y depends on it), noise allowed for.

    Two rows whose 95 % intervals of a figure overlap (:data:`INTERVALS`; a figure without one: equal values) tie
    on it: the measurement cannot rank them. A row is dominated when another is at least as good on both figures
    (better or tied) and better on one, or ties it on both and is the simpler recipe (:func:`simplicity`, then the
    lower job id): of configurations the measurement cannot tell apart, the front keeps the simplest, and lists
    the others in its ``ties`` (job ids). Rows missing either figure are left out; simulated rows are left out
    when x or y is a latency figure (their latency measures fake quantization, not a deployment).

    Returns:
        {(model,) or (model, batch_size): front sorted by x, best first}; each row a copy with ``ties``.
    """
    check_comparable(rows, x, y)
    check_one_metric_function(rows, x, y)
    per_batch = x in PER_BATCH or y in PER_BATCH
    candidates = [
        r
        for r in succeeded(rows)  # health not ok: left out (excluded_note says how many)
        if r.get(x) is not None and r.get(y) is not None and not (per_batch and r.get("simulated"))
    ]
    sx, sy = (1 if maximize_x else -1), (1 if maximize_y else -1)
    fronts: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for key, group in sorted(_groups(candidates, per_batch).items(), key=lambda kv: tuple(map(str, kv[0]))):
        front = []
        for r in group:
            beaten = [o for o in group if o is not r and _dominates(o, r, x, y, sx, sy)]
            if not beaten:
                ties = [o["job_id"] for o in group if o is not r and _ranks(o, r, x, sx) == _ranks(o, r, y, sy) == 0]
                front.append({**r, "ties": sorted(ties)})
        fronts[key] = sorted(front, key=lambda r: (-sx * r[x], -sy * r[y], simplicity(r), r["job_id"]))
    return fronts


def _ranks(a: dict[str, Any], b: dict[str, Any], figure: str, sign: int) -> int:
    """1 when ``a`` is better than ``b`` on ``figure`` beyond the noise, -1 when worse, 0 for a tie."""
    if overlaps(a, b, figure):
        return 0
    return 1 if sign * float(a[figure]) > sign * float(b[figure]) else -1


def _dominates(a: dict[str, Any], b: dict[str, Any], x: str, y: str, sx: int, sy: int) -> bool:
    rx, ry = _ranks(a, b, x, sx), _ranks(a, b, y, sy)
    if rx < 0 or ry < 0:
        return False
    if rx > 0 or ry > 0:
        return True
    return (simplicity(a), a["job_id"]) < (simplicity(b), b["job_id"])  # a tie on both: the simpler one stays


@dataclass
class Choice:
    """The best row of one model (and batch size) within the budget, or the closest miss."""

    group: tuple[Any, ...]
    best: dict[str, Any] | None
    closest_miss: dict[str, Any] | None = None
    candidates: int = 0
    notes: list[str] = field(default_factory=list)
    #: The other qualifying rows whose interval of the figure overlaps the fastest's: a tie, broken by simplicity.
    tied: list[dict[str, Any]] = field(default_factory=list)


def best_configs(
    rows: Sequence[dict[str, Any]],
    *,
    max_accuracy_drop: float | None = None,
    target: Target | None = None,
    by: str = "latency_p50_ms",
    include_simulated: bool = False,
) -> list[Choice]:
    """Per model: the best succeeded row that meets the target, ranked by ``by``.

    Args:
        rows: rows of results_flat.
        max_accuracy_drop: the accuracy budget (the target when ``target`` is not given).
        target: what a row must reach (:func:`farm.metric_targets.make_target`): an accuracy drop, or a floor on
            accuracy, agreement, cosine, sqnr_db or the sweep's own metric.
        by: the figure to optimise.
        include_simulated: let simulated rows compete (never on latency figures).

    ``by`` is minimised (latency, size) unless bigger is better (throughput, speedup). Rows without the target's
    figure or a ``by`` figure can't qualify (for a label-free metric a note counts them), nor can rows whose health
    is not ok; simulated rows can't qualify unless ``include_simulated`` (their size is an estimate), and never on
    latency figures. Where none qualifies, the closest miss is the row nearest the target.

    Rows whose 95 % interval of ``by`` (:data:`INTERVALS`) overlaps the best one's are a tie: the measurement
    cannot rank them, so the simplest recipe (:func:`simplicity`) wins, and :attr:`Choice.tied` and a note say so.

    Raises:
        ConfigError: neither or both of ``max_accuracy_drop`` and ``target``; rows of several metric functions
            ranked by ``metric``; a ratio over rows of several runtimes (:func:`check_comparable`).
    """
    if (target is None) == (max_accuracy_drop is None):
        raise ConfigError("best_configs: give max_accuracy_drop or target, not both or neither")
    goal = target if target is not None else Target("accuracy", max_accuracy_drop=max_accuracy_drop)
    check_comparable(rows, by)
    check_one_metric_function(rows, goal.column, by)
    per_batch = by in PER_BATCH
    sign = -1 if by in MAXIMISE else 1
    choices = []
    for key, group in sorted(_groups(succeeded(rows), per_batch).items(), key=lambda kv: tuple(map(str, kv[0]))):
        usable = [
            r
            for r in group
            if r.get(by) is not None and not (r.get("simulated") and (per_batch or not include_simulated))
        ]
        measured = [r for r in usable if figure(r, goal.column) is not None]
        within = [r for r in measured if meets(r, goal)]
        choice = Choice(key, None, candidates=len(within))
        if within:
            _pick(choice, within, by, sign, goal)
        elif measured:
            choice.closest_miss = min(measured, key=lambda r: (shortfall(r, goal), _loss(r, goal), sign * r[by]))
        skipped = len(group) - len(usable)
        if skipped:
            simulated = " or simulated" if per_batch or not include_simulated else ""
            choice.notes.append(f"{skipped} row(s) without {by}{simulated} not considered")
        lacking = len(usable) - len(measured)
        if lacking and goal.metric != "accuracy":  # rows without a drop were always left out silently
            choice.notes.append(f"{lacking} row(s) without {goal.column} not considered")
        choices.append(choice)
    return choices


def check_one_metric_function(rows: Iterable[dict[str, Any]], *figures: str) -> None:
    """Refuse to rank ``metric_value`` across rows whose metric functions differ: their values don't compare.

    Raises:
        ConfigError: ``metric_value`` among ``figures`` and more than one ``metric_name`` among the succeeded rows.
    """
    if "metric_value" not in figures:
        return
    names = sorted({str(r["metric_name"]) for r in succeeded(rows) if r.get("metric_name") is not None})
    if len(names) > 1:
        raise ConfigError(
            f"the rows carry {len(names)} metric functions ({', '.join(names)}): their values don't compare; "
            "filter on one, e.g. --where \"metric_name = '...'\""
        )


def _loss(row: dict[str, Any], goal: Target) -> float:
    """Smaller is closer to fp32: the accuracy drop for a drop budget, else minus the metric."""
    value = figure(row, goal.column)
    if value is None:
        return math.inf
    return value if goal.max_accuracy_drop is not None else -value


def _pick(choice: Choice, within: list[dict[str, Any]], by: str, sign: int, goal: Target) -> None:
    fastest = min(within, key=lambda r: (sign * r[by], _loss(r, goal)))
    tied = [r for r in within if overlaps(r, fastest, by)]
    choice.best = min(tied, key=lambda r: (simplicity(r), sign * r[by], _loss(r, goal)))
    choice.tied = [r for r in tied if r is not choice.best]
    if choice.tied:
        choice.notes.append(
            f"{len(tied)} configurations tie on {by} (their 95 % intervals overlap): picked the simplest ({SIMPLICITY})"
        )


@dataclass
class Pair:
    """One recipe measured in two sweeps."""

    recipe: dict[str, Any]
    a: dict[str, Any] | None
    b: dict[str, Any] | None

    def delta(self, column: str) -> float | None:
        if self.a is None or self.b is None or self.a.get(column) is None or self.b.get(column) is None:
            return None
        return float(self.b[column]) - float(self.a[column])

    def ratio(self, column: str) -> float | None:
        if self.a is None or self.b is None or not self.a.get(column) or self.b.get(column) is None:
            return None
        return float(self.b[column]) / float(self.a[column])


def recipe_key(row: dict[str, Any], configs: dict[int, str] | None = None) -> tuple[Any, ...]:
    """What makes two rows of different sweeps the same experiment: the parameters and the runtime, the full method
    config (when known: qat epochs, percentile, ...), and the batch size."""
    config = (configs or {}).get(row["job_id"])
    return (*(row.get(c) for c in RECIPE_COLUMNS), config, row.get("batch_size"))


def compare(
    rows_a: Sequence[dict[str, Any]],
    rows_b: Sequence[dict[str, Any]],
    configs: dict[int, str] | None = None,
) -> list[Pair]:
    """Match the rows of two sweeps by recipe (see :func:`recipe_key`); unmatched rows pair with None.

    Rows of jobs whose health is not ok are left out on both sides (:func:`excluded_note` counts them).
    """
    index_a = {recipe_key(r, configs): r for r in rows_a if r.get("health") in (None, "ok")}
    index_b = {recipe_key(r, configs): r for r in rows_b if r.get("health") in (None, "ok")}
    pairs = []
    for key in sorted(set(index_a) | set(index_b), key=lambda k: tuple(map(str, k))):
        a, b = index_a.get(key), index_b.get(key)
        some = a or b
        assert some is not None
        recipe = {c: some.get(c) for c in RECIPE_COLUMNS}
        recipe["batch_size"] = some.get("batch_size")
        if key[len(RECIPE_COLUMNS)]:
            recipe["config"] = json.loads(str(key[len(RECIPE_COLUMNS)]))
        pairs.append(Pair(recipe, a, b))
    return pairs
