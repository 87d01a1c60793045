"""The trade-off charts: accuracy against latency and against size, with each model's Pareto front.

A model's colour is the same in every chart; a method's marker too. Simulated (fake-quantization) results
are hollow and never appear where latency is plotted: their latency measures fake-quantization overhead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from farm.analysis import pareto_front
from farm.report.fmt import byte_unit
from farm.report.model import measured, ordered, per_job, runtime_of, spans_runtimes
from farm.report.svg import (
    MARKERS,
    RUNTIME_MARKERS,
    Chart,
    figure,
    legend,
    line_handle,
    log_if_wide,
    marker_handle,
    model_colours,
    pick,
    style,
    to_svg,
)

#: Most batch sizes the latency chart draws a panel for.
MAX_BATCH_PANELS = 4
_ACCURACY = "top-1 accuracy (fraction)"
_COINCIDENT = "A count beside a point (×6) is how many jobs sit there, one on top of the other: identical figures."
_RUNTIMES = "The jobs ran on several runtimes: a point's marker is its runtime (the tables name each method)."


LATENCY_TITLE = "Accuracy vs p50 latency"
SIZE_TITLE = "Accuracy vs model size"


def accuracy_vs_latency(rows: Sequence[dict[str, Any]]) -> Chart:
    """Accuracy against p50 latency, one panel per batch size, the Pareto front of each model as a step line.

    Args:
        rows: the sweep's rows of results_flat.

    Returns:
        The chart (``svg`` None when no succeeded job has both figures).
    """
    with style("latency"):
        fig, notes = latency_figure(rows)
        svg = to_svg(fig, LATENCY_TITLE, "latency") if fig is not None else None
    return Chart("latency", LATENCY_TITLE, svg, notes)


def accuracy_vs_size(rows: Sequence[dict[str, Any]]) -> Chart:
    """Accuracy against serialized model size, one point per job, the Pareto front of each model.

    Args:
        rows: the sweep's rows of results_flat.

    Returns:
        The chart (``svg`` None when no succeeded job has both figures).
    """
    with style("size"):
        fig, notes = size_figure(rows)
        svg = to_svg(fig, SIZE_TITLE, "size") if fig is not None else None
    return Chart("size", SIZE_TITLE, svg, notes)


def latency_figure(rows: Sequence[dict[str, Any]]) -> tuple[Any | None, tuple[str, ...]]:
    """The accuracy-vs-latency figure (drawn under the caller's :func:`~farm.report.svg.style`) and its caption.

    The report renders it as SVG, ``farm demo`` as PNG: one drawing of each chart.

    Args:
        rows: the sweep's rows of results_flat.

    Returns:
        (a matplotlib Figure, or None when no succeeded job has both figures; the caption's sentences).
    """
    usable = [r for r in measured(rows, "accuracy", "latency_p50_ms") if not r.get("simulated")]
    notes = _simulated_note(rows, "left out: their latency measures fake-quantization overhead, not a deployment")
    if not usable:
        return None, ("No succeeded job has both an accuracy and a latency.", *notes)
    batches = ordered(r["batch_size"] for r in usable)
    shown = pick(batches, MAX_BATCH_PANELS)
    if len(shown) < len(batches):
        hidden = ", ".join(str(b) for b in batches if b not in shown)
        notes += (f"Batch sizes {hidden} are not drawn (the table has them).",)
    fronts = pareto_front(usable, "latency_p50_ms", "accuracy")
    colours = model_colours([r["model"] for r in rows])
    by_runtime = spans_runtimes(usable)
    fig, axes = figure(len(shown))
    stacked = False
    for ax, batch in zip(axes, shown, strict=True):
        at = [r for r in usable if r["batch_size"] == batch]
        _scatter(ax, at, "latency_p50_ms", colours, by_runtime=by_runtime)
        for model in ordered(r["model"] for r in at):
            front = fronts.get((model, batch), [])
            _front(ax, front, "latency_p50_ms", 1.0, colours[model])
        stacked = _label_coincident(ax, at, "latency_p50_ms") or stacked
        ax.set_title(f"batch size {batch}")
        ax.set_xlabel("p50 latency per call (ms)")
        ax.set_ylabel(_ACCURACY)
        log_if_wide(ax, "x", [r["latency_p50_ms"] for r in at])
        _accuracy_axis(ax)
    fig.suptitle(f"{LATENCY_TITLE} (Pareto front per model)")
    legend(fig, _handles(usable, colours, by_runtime))
    notes = (
        *((_RUNTIMES,) if by_runtime else ()),
        "Each point is one job at one batch size; the line through a model's points is its Pareto front "
        "(no other configuration of that model is both faster and more accurate).",
        *((_COINCIDENT,) if stacked else ()),
        *notes,
    )
    return fig, notes


def size_figure(rows: Sequence[dict[str, Any]]) -> tuple[Any | None, tuple[str, ...]]:
    """The accuracy-vs-size figure (drawn under the caller's :func:`~farm.report.svg.style`) and its caption.

    Args:
        rows: the sweep's rows of results_flat.

    Returns:
        (a matplotlib Figure, or None when no succeeded job has both figures; the caption's sentences).
    """
    usable = per_job(measured(rows, "accuracy", "size_bytes"))
    if not usable:
        return None, ("No succeeded job has both an accuracy and a size.",)
    unit, scale = byte_unit(max(r["size_bytes"] for r in usable))
    fronts = pareto_front(usable, "size_bytes", "accuracy")
    colours = model_colours([r["model"] for r in rows])
    by_runtime = spans_runtimes(usable)
    fig, (ax,) = figure(1, panel_height=4.2)
    _scatter(ax, usable, "size_bytes", colours, scale=scale, by_runtime=by_runtime)
    for (model,), front in fronts.items():
        _front(ax, front, "size_bytes", scale, colours[model])
    stacked = _label_coincident(ax, usable, "size_bytes", scale)
    ax.set_xlabel(f"serialized model size ({unit})")
    ax.set_ylabel(_ACCURACY)
    log_if_wide(ax, "x", [r["size_bytes"] / scale for r in usable])
    _accuracy_axis(ax)
    fig.suptitle(f"{SIZE_TITLE} (Pareto front per model)")
    legend(fig, _handles(usable, colours, by_runtime))
    notes = [
        *((_RUNTIMES,) if by_runtime else ()),
        "Each point is one job; the line through a model's points is its Pareto front (no other configuration "
        "of that model is both smaller and more accurate).",
    ]
    if stacked:
        notes.append(_COINCIDENT)
    if any(r.get("simulated") for r in usable):
        notes.append("Hollow points are simulated (fake quantization): their size is a packed estimate.")
    return fig, tuple(notes)


def _kind(row: dict[str, Any], by_runtime: bool) -> str:
    return runtime_of(row) if by_runtime else str(row["method"])


def _marker(kind: str, by_runtime: bool) -> str:
    return (RUNTIME_MARKERS if by_runtime else MARKERS).get(kind, "o")


def _scatter(
    ax: Any,
    rows: Sequence[dict[str, Any]],
    x: str,
    colours: dict[str, str],
    scale: float = 1.0,
    *,
    by_runtime: bool = False,
) -> None:
    for model in ordered(r["model"] for r in rows):
        for kind in ordered(_kind(r, by_runtime) for r in rows if r["model"] == model):
            for simulated in (False, True):
                pts = [
                    r
                    for r in rows
                    if r["model"] == model and _kind(r, by_runtime) == kind and bool(r.get("simulated")) == simulated
                ]
                if not pts:
                    continue
                marker = _marker(kind, by_runtime)
                ax.scatter(
                    [p[x] / scale for p in pts],
                    [p["accuracy"] for p in pts],
                    marker=marker,
                    s=70 if marker == "*" else 30,
                    facecolors="none" if simulated else colours[model],
                    edgecolors=colours[model],
                    linewidths=1.1,
                    alpha=0.9,
                    zorder=3,
                    clip_on=False,  # a point at accuracy 1.0 sits on the axis' top edge: draw all of it
                )


def _accuracy_axis(ax: Any) -> None:
    # Accuracy is a fraction: matplotlib's margins would add room (and ticks) above 1.0 that no result can reach.
    low, high = ax.get_ylim()
    low, high = max(low, 0.0), min(high, 1.0)
    if low < high:
        ax.set_ylim(low, high)


def _label_coincident(ax: Any, rows: Sequence[dict[str, Any]], x: str, scale: float = 1.0) -> bool:
    """Write the count beside every point where several jobs have the same figures (one marker would hide the
    others: six static recipes that gave the same model look like one). Returns whether any was written."""
    counts = Counter((r[x] / scale, r["accuracy"]) for r in rows)
    for (px, py), n in counts.items():
        if n > 1:
            ax.annotate(f"×{n}", (px, py), xytext=(5, 4), textcoords="offset points", fontsize=8, color="0.2")
    return any(n > 1 for n in counts.values())


def _front(ax: Any, front: Sequence[dict[str, Any]], x: str, scale: float, colour: str) -> None:
    # Best (smallest) x first and accuracy rising: a step that holds each accuracy until a larger x buys more.
    if front:
        ax.step(
            [r[x] / scale for r in front],
            [r["accuracy"] for r in front],
            where="post",
            color=colour,
            linewidth=1.3,
            alpha=0.8,
            zorder=2,
        )


def _handles(rows: Sequence[dict[str, Any]], colours: dict[str, str], by_runtime: bool = False) -> list[Any]:
    models = ordered(r["model"] for r in rows)
    handles = [line_handle(colours[m], f"{m} (front)") for m in models]
    kinds = ordered(_kind(r, by_runtime) for r in rows)
    handles += [marker_handle(_marker(k, by_runtime), k) for k in kinds]
    if any(r.get("simulated") for r in rows):
        handles.append(marker_handle("o", "(simulated)", hollow=True))
    return handles


def _simulated_note(rows: Sequence[dict[str, Any]], why: str) -> tuple[str, ...]:
    jobs = {r["job_id"] for r in measured(rows, "accuracy") if r.get("simulated")}
    return (f"{len(jobs)} simulated job(s) {why}.",) if jobs else ()
