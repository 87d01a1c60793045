"""Best configurations from result rows: Pareto fronts, the best config within an accuracy budget, and
sweep-to-sweep comparison. Pure functions over rows of results_flat (dicts); no database, no printing.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Figures that differ by batch size: a front or a choice over them is made per batch size.
PER_BATCH = {"latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "throughput", "speedup"}
#: Figures for which bigger is better (the default direction for pareto's y and for best's --by).
MAXIMISE = {"accuracy", "accuracy_fp32", "agreement", "sqnr_db", "throughput", "speedup", "coverage"}
#: Slack on the accuracy budget for floating-point rounding (far below one sample of any test set).
DROP_TOLERANCE = 1e-9
#: What identifies a recipe across sweeps (the same grid on two pools or two releases).
RECIPE_COLUMNS = ("model", "dataset", "method", "bits", "calibration_size", "backend", "observer", "granularity")


def succeeded(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("state") == "succeeded"]


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
    """The non-dominated succeeded rows per model (and batch size, when x or y depends on it).

    A row is dominated when another is at least as good on both figures and better on one. Rows missing
    either figure are left out; simulated rows are left out when x or y is a latency figure (their latency
    measures fake quantization, not a deployment).

    Returns:
        {(model,) or (model, batch_size): front sorted by x, best first}.
    """
    per_batch = x in PER_BATCH or y in PER_BATCH
    candidates = [
        r
        for r in succeeded(rows)
        if r.get(x) is not None and r.get(y) is not None and not (per_batch and r.get("simulated"))
    ]
    sx, sy = (1 if maximize_x else -1), (1 if maximize_y else -1)
    fronts: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for key, group in sorted(_groups(candidates, per_batch).items(), key=lambda kv: tuple(map(str, kv[0]))):
        # Best x first; a row joins the front when it beats every earlier row on y (ties on x: best y first),
        # or ties the last row on the front on both figures (neither is better on one: both are non-dominated).
        ordered = sorted(group, key=lambda r: (-sx * r[x], -sy * r[y]))
        front: list[dict[str, Any]] = []
        best_y = None
        for r in ordered:
            if best_y is None or sy * r[y] > sy * best_y or (r[y] == best_y and r[x] == front[-1][x]):
                front.append(r)
                best_y = r[y]
        fronts[key] = front
    return fronts


@dataclass
class Choice:
    """The best row of one model (and batch size) within the budget, or the closest miss."""

    group: tuple[Any, ...]
    best: dict[str, Any] | None
    closest_miss: dict[str, Any] | None = None
    candidates: int = 0
    notes: list[str] = field(default_factory=list)


def best_configs(
    rows: Sequence[dict[str, Any]], *, max_accuracy_drop: float, by: str = "latency_p50_ms"
) -> list[Choice]:
    """Per model: the best succeeded row whose accuracy drop is within the budget, ranked by ``by``.

    ``by`` is minimised (latency, size) unless bigger is better (throughput, speedup). Rows without an
    accuracy drop or a ``by`` figure can't qualify; simulated rows can't qualify on latency figures. Where
    none qualifies, the closest miss is the row with the smallest accuracy drop.
    """
    per_batch = by in PER_BATCH
    sign = -1 if by in MAXIMISE else 1
    choices = []
    for key, group in sorted(_groups(succeeded(rows), per_batch).items(), key=lambda kv: tuple(map(str, kv[0]))):
        usable = [r for r in group if r.get(by) is not None and not (per_batch and r.get("simulated"))]
        # The stored drop is fp32 - accuracy in floating point (0.98 - 0.97 = 0.010000000000000009): a drop equal
        # to the budget is within it.
        budget = max_accuracy_drop + DROP_TOLERANCE
        within = [r for r in usable if r.get("accuracy_drop") is not None and r["accuracy_drop"] <= budget]
        choice = Choice(key, None, candidates=len(within))
        if within:
            choice.best = min(within, key=lambda r: (sign * r[by], r["accuracy_drop"]))
        else:
            measured = [r for r in usable if r.get("accuracy_drop") is not None]
            choice.closest_miss = min(measured, key=lambda r: (r["accuracy_drop"], sign * r[by])) if measured else None
        skipped = len(group) - len(usable)
        if skipped:
            choice.notes.append(f"{skipped} row(s) without {by}{' or simulated' if per_batch else ''} not considered")
        choices.append(choice)
    return choices


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
    """What makes two rows of different sweeps the same experiment: the parameters, the full method config
    (when known: qat epochs, percentile, ...), and the batch size."""
    config = (configs or {}).get(row["job_id"])
    return (*(row.get(c) for c in RECIPE_COLUMNS), config, row.get("batch_size"))


def compare(
    rows_a: Sequence[dict[str, Any]],
    rows_b: Sequence[dict[str, Any]],
    configs: dict[int, str] | None = None,
) -> list[Pair]:
    """Match the rows of two sweeps by recipe (see :func:`recipe_key`); unmatched rows pair with None."""
    index_a = {recipe_key(r, configs): r for r in rows_a}
    index_b = {recipe_key(r, configs): r for r in rows_b}
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
