"""A tune's search lines and what each may spend (farm/jobs/tune_stages.py's expanders read them).

A line is what the search falls layers back along: one runtime, or, where a tune searches several methods, one
runtime and one method (``runtime/method``). Each starts from its base recipe, the global recipe it falls back from
(:func:`base_recipe`), and may take at most ``layers + 2*log2(layers) + 4`` jobs (farm.jobs.tune_plan's
``budget_per_runtime``) within the share of ``--budget-jobs`` left to it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from farm.jobs.contract import JobSpec
from farm.jobs.policy import SUCCEEDED
from farm.jobs.tune_plan import TuneSettings, budget_per_runtime, info
from farm.metric_targets import figure, meets
from farm.runtimes.registry import DEFAULT_RUNTIME


def score(figures: Mapping[str, Any], settings: TuneSettings) -> float | None:
    """The figure a target is about, as "higher is better" (an accuracy drop negated); None when not measured."""
    target = settings.target
    value = figure(figures, target.column)
    if value is None:
        return None
    return -value if target.max_accuracy_drop is not None else value


def speed(figures: Mapping[str, Any], objective: str) -> tuple[float, float, float]:
    """(value, interval low, interval high) of the objective, smaller is better (p50 with its CI, or bytes)."""
    if objective == "size":
        size = float(figures.get("size_bytes") or math.inf)
        return size, size, size
    p50 = float(figures.get("latency_p50_ms") or math.inf)
    low = figures.get("latency_p50_ci_low_ms")
    high = figures.get("latency_p50_ci_high_ms")
    return p50, float(low if low is not None else p50), float(high if high is not None else p50)


def base_recipe(globals_: Sequence[Any], runtime: str, settings: TuneSettings, method: str | None = None) -> Any | None:
    """The global recipe of ``runtime`` (and ``method``, where given) the search falls layers back from, or None when
    nothing there can win.

    When some global recipe (on any runtime) meets the target, only a recipe that may beat the best of them is
    worth searching: the best-scoring global of ``runtime`` that misses it and is not clearly slower (its
    interval starts below the bar's end). When none meets, the best-scoring global of ``runtime``.
    """
    ok = [g for g in globals_ if healthy(g) and info(g)["runtime"] == runtime]
    ok = [g for g in ok if method is None or info(g)["method"] == method]
    meeting = [g for g in globals_ if healthy(g) and meets(g.figures, settings.target)]
    pool = [g for g in ok if not meets(g.figures, settings.target)]
    if meeting:
        bar = min(meeting, key=lambda g: speed(g.figures, settings.objective)[0])
        bar_high = speed(bar.figures, settings.objective)[2]
        pool = [g for g in pool if speed(g.figures, settings.objective)[1] < bar_high]
    elif not pool:
        pool = ok
    scored = [g for g in pool if score(g.figures, settings) is not None]
    if not scored:
        return None
    return max(scored, key=lambda g: (score(g.figures, settings), -g.id))


def methods_of(p: Mapping[str, Any]) -> list[str]:
    """The methods a tune searches (one planned before a tune could search several: its ``method``)."""
    return list(p.get("methods") or [p["method"]])


def line_of(runtime: str, method: str, methods: Sequence[str]) -> str:
    """A search line's key: its runtime; where the tune searches several methods, ``runtime/method``."""
    return runtime if len(methods) < 2 else f"{runtime}/{method}"


def layers_of(p: Mapping[str, Any], method: str) -> list[Any]:
    """The layers ``method``'s lines search: one list where the tune searches one method, else per method (a method
    no line searched: the longest list, a bound on its count)."""
    layers = p["layers"]
    if isinstance(layers, list):
        return layers
    return list(layers.get(method) or max(layers.values(), key=len, default=[]))


def runtime_of(spec: JobSpec) -> str:
    return spec.method.runtime or DEFAULT_RUNTIME


def undominated(bases: Mapping[str, Any], settings: TuneSettings) -> dict[str, Any]:
    """The lines worth searching: not one whose base recipe another line's on the same runtime beats on both counts
    (its interval ends below this one's start, and it scores at least as well): falling back the same layers from
    the better base is the faster way to the target."""

    def beaten(base: Any, other: Any) -> bool:
        return (
            other is not base
            and info(other)["runtime"] == info(base)["runtime"]
            and speed(other.figures, settings.objective)[2] < speed(base.figures, settings.objective)[1]
            and _scored(other, settings) >= _scored(base, settings)
        )

    return {line: b for line, b in bases.items() if not any(beaten(b, o) for o in bases.values())}


def _scored(job: Any, settings: TuneSettings) -> float:
    value = score(job.figures, settings)
    return -math.inf if value is None else value


def healthy(job: Any) -> bool:
    """Succeeded, with figures that mean something (farm.quant.metrics' health)."""
    return job.state == SUCCEEDED and bool(job.figures) and job.figures.get("health") in (None, "ok")


def stage1_jobs(runtime: str, inputs: Sequence[Any] = (), method: str | None = None) -> int:
    """Stage 1's jobs that are ``runtime``'s (and ``method``'s, where given), counted in ``inputs`` (its global
    recipes, and torch's fp32 reference or another runtime's fp32 export); without them, the most there can be (two
    globals and one fp32)."""
    return (
        sum(
            1
            for i in inputs
            if i.role in ("trial", "reference")
            and info(i)["runtime"] == runtime
            and (method is None or info(i)["method"] in (method, "fp32"))
        )
        or 3
    )


def fanout(layers: int) -> int:
    """The candidate and refine jobs one line may still need: 2*log2(layers), rounded up."""
    return math.ceil(2 * math.log2(max(layers, 2)))


def share_of(settings: TuneSettings, spent: int, lines: int, later: int) -> int | None:
    """Each of ``lines`` lines' share of what ``--budget-jobs`` leaves once ``spent`` jobs and the ``later`` stage
    jobs still to come are counted (None: no budget given)."""
    if settings.budget_jobs is None:
        return None
    return max(0, settings.budget_jobs - spent - later) // max(lines, 1)


def room_left(layers: int, used: int, share: int | None) -> int:
    """Jobs a line may still add: its bound (``layers + 2*log2(layers) + 4``) less what it used, within the budget's
    share."""
    left = budget_per_runtime(layers) - used
    return left if share is None else min(left, share)
