"""A tune's charts: each runtime's layer sensitivity as sorted horizontal bars, and the search's trail on the
metric–latency plane (metric–size for ``objective: size``) with the target, each runtime's fp32 and the chosen
recipe marked. Drawn like every report chart (farm/report/svg.py): matplotlib, inline SVG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from farm.report.fmt import byte_unit, sig
from farm.report.svg import (
    RUNTIME_MARKERS,
    Chart,
    figure,
    label,
    legend,
    line_handle,
    log_if_wide,
    marker_handle,
    to_svg,
)
from farm.report.svg import style as chart_style
from farm.report.tune_data import Sensitivity, TuneView, better_sign, target_value

#: Most layers one sensitivity chart draws (the most sensitive; the caption counts the rest).
MAX_BARS = 40
#: The stages whose points the trail draws (sensitivity jobs ran on the validation split: not comparable).
TRAIL_STAGES = ("global", "candidates", "refine", "explore", "verify")
_STAGE_COLOURS = {"global": "C0", "candidates": "C1", "refine": "C2", "explore": "C5", "verify": "C4"}
_FALLBACK = "C3"
_TARGET = "#c62828"
#: Where an infinite figure (an SQNR whose outputs matched fp32's) is drawn: this far past the finite ones.
_INF_MARGIN = 0.12
_AXIS = {"sqnr_db": "SQNR (dB)", "cosine": "cosine similarity with fp32", "agreement": "top-1 agreement with fp32"}
#: A bar's text when the all-quantized recipe has no figure to measure the loss from.
MISSING_LOSS = "?"


def figure_label(settings: Any) -> str:
    """The axis label of the figure a tune's target is about."""
    if settings.target.max_accuracy_drop is not None:
        return "accuracy drop vs fp32 (fraction; axis reversed: better is up/right)"
    return _AXIS.get(settings.metric, str(settings.metric))


def sensitivity_chart(s: Sensitivity, view: TuneView, index: int) -> Chart:
    """One runtime's sensitivity: a bar per measured layer from the all-quantized recipe's figure to the figure
    with that layer alone fallen back (kept in floating point; at int8 over a simulated base), most sensitive on top;
    the chosen recipe's fallback layers marked.

    Args:
        s: the runtime's sensitivity (farm.report.tune_data).
        view: the tune (settings, target).
        index: the chart's place on the page (its SVG ids).

    Returns:
        The chart (``svg`` None when no sensitivity job of the runtime succeeded).
    """
    title = f"Layer sensitivity on {s.runtime}"
    key = f"sensitivity-{index}"
    if not s.layers:
        return Chart(key, title, None, (f"{s.runtime}: no sensitivity job succeeded.",))
    shown = s.layers[:MAX_BARS]
    with chart_style(key):
        fig = _sensitivity_figure(s, shown, view)
        svg = to_svg(fig, title, key)
    notes = [
        f"{s.runtime}: each bar runs from the all-quantized recipe's {view.settings.metric} ({s.recipe}, "
        f"{s.base_split} split) to the {view.settings.metric} with that layer alone {s.kept()} "
        f"(validation split): its length is what the layer loses when it is quantized"
        f"{'' if s.rung == 'fp32' else ' at the base bit-width rather than ' + s.rung}. Most sensitive on top, in "
        "the order the search fell layers back.",
    ]
    if s.base_split != "validation":
        notes.append(
            "The search measured the all-quantized recipe on the test split only: bar lengths include the "
            "difference between the two splits, which can make a layer that barely matters look negative."
        )
    if any(x.fallback for x in s.layers):
        who = "the answer" if view.answer.met else "the closest recipe (none meets the target)"
        notes.append(f"Hatched bars: the layers {who} keeps {s.kept('in floating point')}.")
    if len(s.layers) > len(shown):
        notes.append(f"{len(s.layers) - len(shown)} less sensitive layer(s) are not drawn.")
    if s.unmeasured:
        missing = ", ".join(s.unmeasured)
        notes.append(f"No figure for {len(s.unmeasured)} layer(s) (their job did not succeed): {missing}.")
    return Chart(key, title, svg, tuple(notes))


def _sensitivity_figure(s: Sensitivity, shown: Sequence[Any], view: TuneView) -> Any:
    settings = view.settings
    values = [x.value for x in shown]
    base = s.base if s.base is not None else min(v for v in values if math.isfinite(v))
    target = target_value(settings)
    shown_target = _near(target, [*values, base])
    finite = [v for v in (*values, base, *((target,) if shown_target else ())) if math.isfinite(v)]
    low, high = min(finite), max(finite)
    ceiling = high + _INF_MARGIN * ((high - low) or 1.0)
    drawn = [ceiling if math.isinf(v) else v for v in values]
    fig, (ax,) = figure(1, panel_height=0.28 * len(shown) + 1.2)
    ys = list(range(len(shown)))
    colours = [_FALLBACK if x.fallback else ("C0" if x.loss >= 0 else "0.6") for x in shown]
    ax.barh(
        ys,
        [v - base for v in drawn],
        left=base,
        height=0.7,
        color=colours,
        hatch=["//" if x.fallback else "" for x in shown],
        edgecolor="white",
        zorder=2,
    )
    for y, x, v in zip(ys, shown, drawn, strict=True):
        text = "∞" if math.isinf(x.loss) else (MISSING_LOSS if math.isnan(x.loss) else f"{x.loss:+.3g}")
        right = (v >= base) == (better_sign(settings) > 0)  # an accuracy drop's axis runs right to left
        ax.annotate(
            text,
            (v, y),
            xytext=(3 if right else -3, 0),
            textcoords="offset points",
            ha="left" if right else "right",
            va="center",
            fontsize=7,
            color="0.25",
        )
    ax.set_yticks(ys, [label(x.name, 40) for x in shown])
    ax.invert_yaxis()  # the most sensitive layer on top
    ax.axvline(base, color="0.2", linewidth=1.0, zorder=3)
    if shown_target:
        ax.axvline(target, color=_TARGET, linestyle="--", linewidth=1.0, zorder=3)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel(f"{figure_label(settings)}, one layer {s.kept('in floating point')} (validation split)")
    if better_sign(settings) < 0:
        ax.invert_xaxis()
    ax.margins(x=0.1)  # room for the figures written beside the bars' ends
    ax.set_title(label(f"{s.runtime}: what each layer loses when quantized, from {s.recipe}", 110))
    handles = [
        line_handle("0.2", f"all-quantized ({s.base_split} split)"),
        line_handle(_TARGET, _target_text(settings, shown_target), linestyle="--"),
    ]
    if any(x.fallback for x in shown):
        from matplotlib.patches import Patch

        who = "the answer" if view.answer.met else "the closest recipe"
        kept = f"{s.kept('kept in fp32') if s.rung == 'fp32' else 'raised to ' + s.rung} by {who}"
        handles.append(Patch(facecolor=_FALLBACK, hatch="//", edgecolor="white", label=kept))
    legend(fig, handles)
    return fig


def trail_chart(view: TuneView) -> Chart:
    """The search's trail: every test-split trial (global recipes, candidates, refinements) at its figure against
    its p50 latency with the 95 % interval (or its size), the target, each runtime's fp32, the chosen recipe.

    Args:
        view: the tune.

    Returns:
        The chart (``svg`` None when no test-split trial has both figures).
    """
    title = "The search's trail"
    settings = view.settings
    by_size = settings.objective == "size"
    x_key = "size_bytes" if by_size else "p50"
    points = [e for e in view.answer.trail if _plottable(e, x_key)]
    left_out = [
        e
        for e in view.answer.trail
        if e["stage"] in TRAIL_STAGES and not e["fp32"] and e["split"] == "test" and not _plottable(e, x_key)
    ]
    notes: list[str] = []
    if left_out:
        notes.append(f"{len(left_out)} trial(s) not drawn: failed, unhealthy or unmeasured.")
    if not points:
        return Chart("trail", title, None, ("No test-split trial has both figures yet.", *notes))
    with chart_style("trail"):
        fig, drew_inf = _trail_figure(view, points, by_size)
        svg = to_svg(fig, title, "trail")
    axis = "serialized size" if by_size else "p50 latency per call, with its 95 % interval"
    notes.insert(
        0,
        f"Each point is a trial on the test split: its {settings.metric} against its {axis}; colour is its stage, "
        "marker its runtime (and method, where the tune searched several), filled when it meets the target. The "
        "ring marks the answer (the closest recipe when none meets the target). Global recipes, candidates and "
        "refinements are screened (timed pinned, beside each other; candidates that took their runtime's last jobs "
        "excepted); the verified point is the answer timed again as the tune's benchmark says. How each point was "
        "timed is its trail entry's isolation (farm tune status). Sensitivity jobs (the validation split) are in "
        "the chart above.",
    )
    if view.fp32 and not by_size:
        notes.append("Dotted vertical lines: the fastest fp32 of each runtime.")
    if any(e.get("simulated") for e in points):
        notes.append(
            "Simulated points (below 8 bits, fake quantization): their size is a packed estimate (bits x weights / 8, "
            "plus scales and zero points), not a file's; their metric is not a deployed model's."
        )
    if drew_inf:
        notes.append("An infinite SQNR (outputs identical to fp32's) is drawn at the top edge.")
    return Chart("trail", title, svg, tuple(notes))


def _plottable(e: Mapping[str, Any], x_key: str) -> bool:
    if e["stage"] not in TRAIL_STAGES or e["fp32"] or e["split"] != "test" or e["state"] != "succeeded":
        return False
    if e["health"] not in (None, "ok") or e["value"] is None or math.isnan(e["value"]):
        return False
    return _x(e, x_key) is not None


def _x(e: Mapping[str, Any], x_key: str) -> float | None:
    if x_key == "size_bytes":
        return e.get("size_bytes")
    return (e.get("latency") or {}).get("p50_ms")


def _trail_figure(view: TuneView, points: Sequence[Mapping[str, Any]], by_size: bool) -> tuple[Any, bool]:
    settings = view.settings
    x_key = "size_bytes" if by_size else "p50"
    unit, scale = byte_unit(max(float(e["size_bytes"]) for e in points)) if by_size else ("ms", 1.0)
    target = target_value(settings)
    shown_target = _near(target, [float(e["value"]) for e in points])
    finite = [float(e["value"]) for e in points if math.isfinite(e["value"])] + ([target] if shown_target else [])
    low, high = min(finite), max(finite)
    ceiling = high + _INF_MARGIN * ((high - low) or 1.0)
    drew_inf = any(math.isinf(e["value"]) for e in points)

    def y_of(e: Mapping[str, Any]) -> float:
        return ceiling if math.isinf(e["value"]) else float(e["value"])

    fig, (ax,) = figure(1, panel_height=4.4)
    several = len({e.get("method") for e in points}) > 1
    markers = _line_markers(points, several)
    for stage in TRAIL_STAGES:
        colour = _STAGE_COLOURS[stage]
        for line, marker in markers.items():
            at = [e for e in points if e["stage"] == stage and _line(e, several) == line]
            if not at:
                continue
            xs = [float(_x(e, x_key) or 0.0) / scale for e in at]
            if not by_size:
                lows = [x - float(e["latency"].get("ci_low_ms") or x) for x, e in zip(xs, at, strict=True)]
                highs = [float(e["latency"].get("ci_high_ms") or x) - x for x, e in zip(xs, at, strict=True)]
                ax.errorbar(
                    xs,
                    [y_of(e) for e in at],
                    xerr=[lows, highs],
                    fmt="none",
                    ecolor=colour,
                    alpha=0.5,
                    linewidth=1.0,
                    zorder=2,
                )
            for met in (True, False):
                sub = [(x, e) for x, e in zip(xs, at, strict=True) if bool(e["meets"]) == met]
                if sub:
                    ax.scatter(
                        [x for x, _ in sub],
                        [y_of(e) for _, e in sub],
                        marker=marker,
                        s=34,
                        facecolors=colour if met else "none",
                        edgecolors=colour,
                        linewidths=1.2,
                        zorder=3,
                        clip_on=False,
                    )
    if shown_target:
        ax.axhline(target, color=_TARGET, linestyle="--", linewidth=1.0, zorder=1)
    fp32_handles = []
    if not by_size:
        for i, (runtime, f) in enumerate(view.fp32.items()):
            p50 = float(f["latency_p50_ms"])
            ax.axvline(p50, color=f"C{(i + 4) % 10}", linestyle=":", linewidth=1.2, zorder=1)
            fp32_handles.append(line_handle(f"C{(i + 4) % 10}", f"fp32 on {runtime} ({sig(p50)} ms)", linestyle=":"))
    xs_all = [float(_x(e, x_key) or 0.0) / scale for e in points]
    if not by_size:
        xs_all += [float(f["latency_p50_ms"]) for f in view.fp32.values()]
    _mark_chosen(ax, view, x_key, scale, y_of, (min(xs_all) + max(xs_all)) / 2)
    log_if_wide(ax, "x", xs_all, ratio=8.0)
    ax.set_xlabel(f"serialized size ({unit})" if by_size else "p50 latency per call (ms)")
    ax.set_ylabel(figure_label(settings))
    if better_sign(settings) < 0:
        ax.invert_yaxis()
    fig.suptitle(f"The search: {settings.metric} vs {'size' if by_size else 'latency'}, by stage")
    stages = [s for s in TRAIL_STAGES if any(e["stage"] == s for e in points)]
    handles = [line_handle(_STAGE_COLOURS[s], s, linestyle="none", marker="o") for s in stages]
    handles += [marker_handle(m, line) for line, m in markers.items()]
    handles += [line_handle(_TARGET, _target_text(settings, shown_target), linestyle="--"), *fp32_handles]
    legend(fig, handles)
    return fig, drew_inf


def _near(target: float, values: Sequence[float]) -> bool:
    """Whether the target line belongs on a chart of ``values``: a target far past them (SQNR 100 dB against
    figures near 40) would squeeze every bar or point into a corner, so it is named in the legend instead."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite or not math.isfinite(target):
        return math.isfinite(target)
    low, high = min(finite), max(finite)
    span = (high - low) or abs(high) or 1.0
    return low - 2 * span <= target <= high + 2 * span


def _target_text(settings: Any, shown: bool) -> str:
    return f"target: {settings.target.describe()}" + ("" if shown else " (off the chart)")


#: The markers of a tune's search lines where it searched several methods (one per runtime and method).
_LINE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _line_markers(points: Sequence[Mapping[str, Any]], several: bool) -> dict[str, str]:
    """A marker per search line drawn (:func:`_line`): per runtime (its usual one), or, where the tune searched
    ``several`` methods, per runtime and method, so two methods on one runtime are told apart."""
    lines = list(dict.fromkeys(_line(e, several) for e in points))
    if several:
        return {line: _LINE_MARKERS[i % len(_LINE_MARKERS)] for i, line in enumerate(lines)}
    return {line: RUNTIME_MARKERS.get(line, "o") for line in lines}


def _line(e: Mapping[str, Any], several: bool) -> str:
    """``e``'s search line as the legend names it: its runtime, and its method where the tune searched ``several``
    ("onnxruntime (static)", as the sensitivity charts' titles)."""
    return f"{e['runtime']} ({e.get('method')})" if several else str(e["runtime"])


def _mark_chosen(ax: Any, view: TuneView, x_key: str, scale: float, y_of: Any, middle: float) -> None:
    """A ring around the answer and its recipe beside it ("closest" when it misses the target)."""
    chosen = view.answer.chosen
    if chosen is None or not _plottable(chosen, x_key):
        return
    x, y = float(_x(chosen, x_key) or 0.0) / scale, y_of(chosen)
    ax.scatter(
        [x], [y], marker="o", s=240, facecolors="none", edgecolors="black", linewidths=1.6, zorder=4, clip_on=False
    )
    word = "chosen" if view.answer.met else "closest (misses)"
    ax.annotate(
        label(f"{word}: {chosen['recipe']}", 60),
        (x, y),
        xytext=(14, -18) if x <= middle else (-14, -18),  # towards the middle: the label stays in the figure
        textcoords="offset points",
        ha="left" if x <= middle else "right",
        fontsize=8,
        arrowprops={"arrowstyle": "-", "color": "0.2", "linewidth": 0.8},
        bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "0.6", "alpha": 0.9},
        zorder=5,
    )
