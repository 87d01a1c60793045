"""The metrics a user can optimise (``farm results best --metric``, ``farm tune``) and the targets set on them.

Stdlib only: the producer checks a target before it plans or reads anything, and the analysis reads rows of
``results_flat`` (or a job result's figures) with the same rules.

Every metric is "higher is better":

- ``accuracy`` against labels (a fraction), targeted by ``--max-accuracy-drop`` (the drop from fp32's accuracy) or
  ``--min-metric`` (an accuracy floor); needs labels.
- ``agreement``: the fraction of samples whose top-1 class matches fp32's, in [0, 1] (class-score outputs only).
- ``cosine``: mean per-sample cosine similarity with fp32's outputs, in [-1, 1] (any output: logits, embeddings).
- ``sqnr_db``: signal-to-quantization-noise ratio of the outputs in dB, any real; a job whose outputs are identical
  to fp32's has no SQNR stored (it is infinite) and meets every SQNR target.
- ``metric``: the value of the sweep's own metric function (``metric: entrypoint:pkg.mod:fn``), any real; the
  function is written so that higher is better.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from farm.errors import ConfigError, Problem

#: Slack on an accuracy budget for floating-point rounding (0.98 - 0.97 = 0.010000000000000009).
DROP_TOLERANCE = 1e-9


@dataclass(frozen=True)
class MetricInfo:
    """One optimisable metric.

    Attributes:
        name: what a user writes after ``--metric``.
        column: the ``results_flat`` column (and job-result key) holding it.
        low, high: its range (None: unbounded); a target outside it can never be met, or always is.
        labels: whether it needs a labelled dataset.
        meaning: one line for help texts and messages.
    """

    name: str
    column: str
    low: float | None
    high: float | None
    labels: bool
    meaning: str

    def in_range(self, value: float) -> bool:
        """Whether ``value`` is a finite number within the metric's range."""
        if not math.isfinite(value):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def range_text(self) -> str:
        """``ranges from -1 to 1``, or ``must be a finite number`` for an unbounded metric."""
        if self.low is None or self.high is None:
            return "must be a finite number"
        return f"ranges from {self.low:g} to {self.high:g}"


#: Every optimisable metric, by name; higher is better for all of them.
METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("accuracy", "accuracy", 0.0, 1.0, True, "top-1 accuracy against the labels, a fraction"),
        MetricInfo("agreement", "agreement", 0.0, 1.0, False, "fraction of samples whose top-1 class is fp32's"),
        MetricInfo("cosine", "cosine", -1.0, 1.0, False, "mean per-sample cosine similarity with fp32's outputs"),
        MetricInfo("sqnr_db", "sqnr_db", None, None, False, "signal-to-quantization-noise ratio of the outputs, dB"),
        MetricInfo("metric", "metric_value", None, None, False, "the value of the sweep's own metric function"),
    )
}
#: The metrics that need no labels.
LABEL_FREE = tuple(name for name, m in METRICS.items() if not m.labels)
#: Job-result keys that hold a metric under another name than its results_flat column.
_RESULT_KEYS = {"metric_value": "metric"}


@dataclass(frozen=True)
class Target:
    """What a configuration must reach: ``metric`` at least ``min_metric``, or for accuracy a drop from fp32 of at
    most ``max_accuracy_drop``. Exactly one of the two is set (:func:`make_target` checks it)."""

    metric: str
    min_metric: float | None = None
    max_accuracy_drop: float | None = None

    @property
    def column(self) -> str:
        """The figure compared with the target: ``accuracy_drop`` for a drop budget, else the metric's column."""
        return "accuracy_drop" if self.max_accuracy_drop is not None else METRICS[self.metric].column

    def describe(self) -> str:
        """``accuracy drop <= 0.01`` / ``cosine >= 0.99``."""
        if self.max_accuracy_drop is not None:
            return f"accuracy drop <= {self.max_accuracy_drop:g}"
        return f"{self.metric} >= {self.min_metric:g}"


def _metric(name: str) -> MetricInfo:
    info = METRICS.get(name)
    if info is None:
        raise ConfigError(f"--metric: unknown metric {name!r}; choose from {', '.join(METRICS)}")
    return info


def _check_drop(drop: float) -> None:
    if math.isfinite(drop) and 0 <= drop < 1:
        return
    # A user writing 1 means one point, but as a fraction it is the whole accuracy: every result would pass.
    points = (
        f": {drop:g} is a drop of {drop * 100:g} points, which every configuration passes; for {drop:g} point(s) "
        f"write {drop / 100:g}"
        if 1 <= drop <= 100
        else ""
    )
    raise ConfigError(
        f"--max-accuracy-drop: a fraction of accuracy from 0 up to, not including, 1 (0.01 is 1 point), got {drop:g}"
        f"{points}"
    )


def check_target(
    metric: str,
    min_metric: float | None,
    max_accuracy_drop: float | None,
    labelled: bool | None = None,
    *,
    offered: Sequence[str] = (),
) -> None:
    """Refuse a target that can't mean what the user wants, in one line.

    Args:
        metric: a name of :data:`METRICS`.
        min_metric: the floor (``--min-metric``), or None.
        max_accuracy_drop: the accuracy budget (``--max-accuracy-drop``), or None.
        labelled: whether the dataset has labels; None when the caller can't know (rows of a finished sweep).
        offered: the metrics the caller takes, where not every one (farm tune has no user metric function).

    Raises:
        ConfigError: an unknown metric; both or neither of the two targets; ``--max-accuracy-drop`` with a metric
            other than accuracy; a target outside the metric's range (or not finite); accuracy on a dataset without
            labels.
    """
    info = _metric(metric)
    if info.labels and labelled is False:
        raise ConfigError(
            f"--metric {metric}: the dataset has no labels; optimise a label-free metric instead "
            f"({', '.join(m for m in LABEL_FREE if not offered or m in offered)}) with --min-metric"
        )
    if min_metric is not None and max_accuracy_drop is not None:
        raise ConfigError("--min-metric and --max-accuracy-drop: give one target, not both")
    if max_accuracy_drop is not None:
        if metric != "accuracy":
            raise ConfigError(
                f"--max-accuracy-drop is a budget on accuracy, not {metric}: write --min-metric X for {metric}"
            )
        _check_drop(max_accuracy_drop)
        return
    if min_metric is None and metric == "accuracy":
        raise ConfigError(
            "Missing option '--max-accuracy-drop' (a fraction: 0.01 is 1 point); or set an accuracy floor with "
            "--min-metric"
        )
    if min_metric is None:
        raise ConfigError(f"Missing option '--min-metric': the floor {metric} must reach ({info.meaning})")
    if not info.in_range(min_metric):
        raise ConfigError(f"--min-metric: {metric} {info.range_text()} ({info.meaning}), got {min_metric:g}")


def make_target(
    metric: str = "accuracy",
    min_metric: float | None = None,
    max_accuracy_drop: float | None = None,
    labelled: bool | None = None,
) -> Target:
    """A checked :class:`Target` (:func:`check_target` says what it refuses).

    Returns:
        The target.

    Raises:
        ConfigError: see :func:`check_target`.
    """
    check_target(metric, min_metric, max_accuracy_drop, labelled)
    return Target(metric, min_metric, max_accuracy_drop)


#: What a metric function reference looks like: entrypoint:package.module:function.
_METRIC_FN = re.compile(r"^entrypoint:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def parse_metric_fn(text: Any, source: str = "metric") -> str:
    """Check the syntax of a metric function reference (whether it may run is the worker's allowlist's call).

    Args:
        text: what the user wrote: ``entrypoint:pkg.module:function``.
        source: the spec key or option it came from, for the message.

    Returns:
        The reference, stripped.

    Raises:
        ConfigError: anything else (one line, naming ``source``).
    """
    ref = text.strip() if isinstance(text, str) else text
    if not isinstance(ref, str) or not _METRIC_FN.match(ref):
        raise ConfigError(
            Problem(
                source,
                "expected a metric function as entrypoint:package.module:function (called with outputs, reference "
                f"outputs and labels or None; returns a float, higher is better), got {text!r}",
            )
        )
    return ref


def figure(figures: Mapping[str, Any], column: str) -> float | None:
    """The value of ``column`` in a row of results_flat or a job result's figures (``metric`` for
    ``metric_value``); None when it was not measured.

    A missing ``sqnr_db`` beside a measured ``cosine`` means the outputs were identical to fp32's: infinite SQNR.
    """
    value = figures.get(column)
    if value is None and column in _RESULT_KEYS:
        value = figures.get(_RESULT_KEYS[column])
    if value is None:
        if column == "sqnr_db" and figures.get("cosine") is not None:
            return math.inf
        return None
    value = float(value)
    return None if math.isnan(value) else value


def meets(figures: Mapping[str, Any], target: Target) -> bool:
    """Whether a row (or a job result's figures) reaches ``target``; a row without the figure does not.

    Args:
        figures: a results_flat row, or a mapping with the same keys (``metric`` stands for ``metric_value``).
        target: from :func:`make_target`.

    Returns:
        True when the figure is measured and within the target (an accuracy drop equal to the budget is within).
    """
    value = figure(figures, target.column)
    if value is None:
        return False
    if target.min_metric is not None:
        return value >= target.min_metric
    return value <= float(target.max_accuracy_drop or 0.0) + DROP_TOLERANCE


def shortfall(figures: Mapping[str, Any], target: Target) -> float | None:
    """How far a row is from ``target`` (0 when it meets it; bigger is farther); None without the figure.

    Ranks the closest miss when no configuration meets a target.
    """
    value = figure(figures, target.column)
    if value is None:
        return None
    if target.min_metric is not None:
        return max(0.0, target.min_metric - value)
    return max(0.0, value - float(target.max_accuracy_drop or 0.0))
