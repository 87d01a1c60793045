"""The sweep-axis charts: accuracy against weight bits (per method), against calibration size (per observer),
and latency against batch size. One panel per model: accuracies and latencies of different models do not share
a scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import fmean
from typing import Any

from farm.report.model import FLOAT_BITS, measured, ordered, per_job
from farm.report.svg import (
    MARKERS,
    Chart,
    figure,
    integer_ticks,
    label,
    legend,
    line_handle,
    log_if_wide,
    marker_handle,
    method_colours,
    style,
    to_svg,
)

#: Most models a per-model chart draws a panel for.
MAX_MODEL_PANELS = 8
_ACCURACY = "top-1 accuracy (fraction)"
_LINESTYLES = ("-", "--", ":", "-.")


def accuracy_vs_bits(rows: Sequence[dict[str, Any]]) -> Chart:
    """Accuracy against weight bit-width, a line per method through its best configuration at each width.

    Float methods sit at 16 (fp16, bf16) and 32 bits (fp32, also drawn as a dashed reference line).

    Args:
        rows: the sweep's rows of results_flat.

    Returns:
        The chart (``svg`` None when no succeeded job has an accuracy).
    """
    title = "Accuracy vs weight bits, per method"
    jobs = [r for r in per_job(measured(rows, "accuracy")) if _bits(r) is not None]
    if not jobs:
        return Chart("bits", title, None, ("No succeeded job has an accuracy.",))
    models, notes = _models(jobs)
    colours = method_colours([r["method"] for r in jobs])
    with style("bits"):
        fig, axes = figure(len(models))
        for ax, model in zip(axes, models, strict=True):
            mine = [r for r in jobs if r["model"] == model]
            for method in ordered(r["method"] for r in mine):
                points = [r for r in mine if r["method"] == method]
                _points(ax, points, _bits, colours[method], MARKERS.get(method, "o"))
                best = {b: max(r["accuracy"] for r in points if _bits(r) == b) for b in ordered(map(_bits, points))}
                if len(best) > 1:
                    ax.plot(list(best), list(best.values()), color=colours[method], linewidth=1.2, zorder=2)
                if method == "fp32":
                    ax.axhline(best[32], color=colours[method], linestyle="--", linewidth=0.9, zorder=1)
            integer_ticks(ax, [b for r in mine if (b := _bits(r)) is not None], log2=True)
            ax.set_title(label(model))
            ax.set_xlabel("weight bit-width (bits)")
            ax.set_ylabel(_ACCURACY)
        fig.suptitle(title)
        handles = [line_handle(colours[m], m, marker=MARKERS.get(m, "o")) for m in ordered(r["method"] for r in jobs)]
        if any(r["method"] == "fp32" for r in jobs):
            handles.append(line_handle(colours["fp32"], "fp32 reference", linestyle="--"))
        if any(r.get("simulated") for r in jobs):
            handles.append(marker_handle("o", "(simulated)", hollow=True))
        legend(fig, handles)
        svg = to_svg(fig, title, "bits")
    notes = (
        "Each point is one job; a method's line joins its most accurate configuration at each bit-width. "
        "Float methods sit at 16 (fp16, bf16) and 32 bits (fp32).",
        *_simulated(jobs, "hollow: fake quantization on fp32 kernels; the accuracy approximates a low-bit deployment"),
        *notes,
    )
    return Chart("bits", title, svg, notes)


def accuracy_vs_calibration(rows: Sequence[dict[str, Any]]) -> Chart:
    """Accuracy against calibration size, a line per activation observer through its mean at each size.

    Args:
        rows: the sweep's rows of results_flat.

    Returns:
        The chart (``svg`` None when no succeeded job was calibrated).
    """
    title = "Accuracy vs calibration size, per observer"
    jobs = per_job(measured(rows, "accuracy", "calibration_size"))
    if not jobs:
        return Chart("calibration", title, None, ("No succeeded job was calibrated (static PTQ or QAT).",))
    models, notes = _models(jobs)
    observers = ordered(r.get("observer") or "default" for r in jobs)
    colours = {o: f"C{i % 10}" for i, o in enumerate(observers)}

    def size(r: dict[str, Any]) -> float:
        return float(r["calibration_size"])

    with style("calibration"):
        fig, axes = figure(len(models))
        for ax, model in zip(axes, models, strict=True):
            mine = [r for r in jobs if r["model"] == model]
            for observer in observers:
                for simulated in (False, True):
                    series = [
                        r
                        for r in mine
                        if (r.get("observer") or "default") == observer and bool(r.get("simulated")) == simulated
                    ]
                    if not series:
                        continue
                    for method in ordered(r["method"] for r in series):
                        points = [r for r in series if r["method"] == method]
                        _points(ax, points, size, colours[observer], MARKERS.get(method, "o"))
                    sizes = ordered(r["calibration_size"] for r in series)
                    means = [fmean(r["accuracy"] for r in series if r["calibration_size"] == c) for c in sizes]
                    ax.plot(sizes, means, color=colours[observer], linestyle="--" if simulated else "-", zorder=2)
            integer_ticks(ax, [r["calibration_size"] for r in mine], log2=True)
            ax.set_title(label(model))
            ax.set_xlabel("calibration size (samples)")
            ax.set_ylabel(_ACCURACY)
        fig.suptitle(title)
        handles = [line_handle(colours[o], o, marker="o") for o in observers]
        if any(r.get("simulated") for r in jobs):
            handles.append(line_handle("0.35", "(simulated)", linestyle="--", marker="o", hollow=True))
        legend(fig, handles)
        svg = to_svg(fig, title, "calibration")
    varying = [k for k in ("method", "bits", "granularity", "backend") if len({r.get(k) for r in jobs}) > 1]
    notes = (
        "Each point is one job; an observer's line joins its mean accuracy at each calibration size"
        + (f" (over {', '.join(varying)})." if varying else "."),
        *_simulated(jobs, "hollow, on dashed lines"),
        *notes,
    )
    return Chart("calibration", title, svg, notes)


def latency_vs_batch(rows: Sequence[dict[str, Any]]) -> Chart:
    """p50 latency against batch size, a line per method and bit-width through its fastest configuration.

    Args:
        rows: the sweep's rows of results_flat.

    Returns:
        The chart (``svg`` None when no succeeded, measured (not simulated) job has a latency).
    """
    title = "p50 latency vs batch size"
    usable = [r for r in measured(rows, "latency_p50_ms", "batch_size") if not r.get("simulated")]
    simulated = _simulated(
        measured(rows, "latency_p50_ms"), "left out: fake-quantization latency is not a deployment's"
    )
    if not usable:
        return Chart("batch", title, None, ("No succeeded job has a measured latency.", *simulated))
    models, notes = _models(usable)
    colours = method_colours([r["method"] for r in usable])
    series_keys = ordered((r["method"], r.get("bits")) for r in usable)
    styles = {k: _LINESTYLES[[s for s in series_keys if s[0] == k[0]].index(k) % 4] for k in series_keys}
    with style("batch"):
        fig, axes = figure(len(models))
        for ax, model in zip(axes, models, strict=True):
            mine = [r for r in usable if r["model"] == model]
            for key in series_keys:
                series = [r for r in mine if (r["method"], r.get("bits")) == key]
                if not series:
                    continue
                fastest = [
                    min((r for r in series if r["batch_size"] == b), key=lambda r: r["latency_p50_ms"])
                    for b in ordered(r["batch_size"] for r in series)
                ]
                p50 = [r["latency_p50_ms"] for r in fastest]
                p90 = [max(r.get("latency_p90_ms") or r["latency_p50_ms"], r["latency_p50_ms"]) for r in fastest]
                ax.errorbar(
                    [r["batch_size"] for r in fastest],
                    p50,
                    yerr=[[0.0] * len(p50), [b - a for a, b in zip(p50, p90, strict=True)]],
                    color=colours[key[0]],
                    linestyle=styles[key],
                    marker=MARKERS.get(key[0], "o"),
                    markersize=5,
                    capsize=2,
                    linewidth=1.2,
                )
            integer_ticks(ax, [r["batch_size"] for r in mine], log2=True)
            log_if_wide(ax, "y", [r["latency_p50_ms"] for r in mine])
            ax.set_title(label(model))
            ax.set_xlabel("batch size (samples per call)")
            ax.set_ylabel("p50 latency per call (ms)")
        fig.suptitle(title)
        handles = [
            line_handle(colours[m], _series_label(m, b), linestyle=styles[(m, b)], marker=MARKERS.get(m, "o"))
            for m, b in series_keys
        ]
        legend(fig, handles)
        svg = to_svg(fig, title, "batch")
    notes = (
        "A line per method and bit-width through its fastest configuration at each batch size; "
        "bars reach that configuration's p90 latency.",
        *simulated,
        *notes,
    )
    return Chart("batch", title, svg, notes)


def _bits(r: dict[str, Any]) -> int | None:
    return FLOAT_BITS.get(r["method"], r.get("bits"))


def _series_label(method: str, bits: int | None) -> str:
    return method if bits is None or method in FLOAT_BITS else f"{method} int{bits}"


def _points(
    ax: Any, points: Sequence[dict[str, Any]], x: Callable[[dict[str, Any]], Any], colour: str, marker: str
) -> None:
    for simulated in (False, True):
        pts = [r for r in points if bool(r.get("simulated")) == simulated]
        if pts:
            ax.scatter(
                [x(r) for r in pts],
                [r["accuracy"] for r in pts],
                marker=marker,
                s=70 if marker == "*" else 30,
                facecolors="none" if simulated else colour,
                edgecolors=colour,
                linewidths=1.1,
                alpha=0.9,
                zorder=3,
            )


def _models(rows: Sequence[dict[str, Any]]) -> tuple[list[Any], tuple[str, ...]]:
    """The models that get a panel (in the rows' order), and a note naming those that do not."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    if len(models) <= MAX_MODEL_PANELS:
        return models, ()
    return models[:MAX_MODEL_PANELS], (
        f"{len(models) - MAX_MODEL_PANELS} more model(s) are not drawn (the table has them).",
    )


def _simulated(rows: Sequence[dict[str, Any]], how: str) -> tuple[str, ...]:
    jobs = {r["job_id"] for r in rows if r.get("simulated")}
    return (f"{len(jobs)} simulated job(s): {how}.",) if jobs else ()
