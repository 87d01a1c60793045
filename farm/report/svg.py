"""matplotlib figures as inline SVG: no external fonts, scripts, images or DTDs, ids unique across the page.

Figures are built with :class:`matplotlib.figure.Figure` directly (the Agg-free, pyplot-free way that keeps
no global state), rendered with ``savefig(format="svg")`` and cleaned for embedding in HTML.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# Text stays text (small, selectable, escaped by matplotlib) in one font family, measured with matplotlib's
# bundled DejaVu Sans.
_RC: dict[str, Any] = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
}
_PROLOG = re.compile(r"^.*?(?=<svg[\s>])", re.S)  # <?xml ...?> and the DOCTYPE (it names an external DTD)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_COMMENT = re.compile(r"<!--.*?-->\s*", re.S)
_TAG = re.compile(r"<[^<>]+>")  # text content has < and > escaped: this finds tags only, never a label
_ID = re.compile(r'\sid="([^"]*)"')
_REFERENCE = re.compile(r'(?:href="#|url\(#)([^")]*)')
_REFERENCE_AT = re.compile(r'(href="#|url\(#)')

#: Method markers (filled for measured results, hollow for simulated ones).
MARKERS = {"fp32": "*", "fp16": "P", "bf16": "X", "dynamic": "D", "static": "o", "qat": "s"}
#: Where a chart spans runtimes, a runtime's marker instead of its method's.
RUNTIME_MARKERS = {"torch": "o", "onnxruntime": "s", "openvino": "^", "tensorrt": "D"}
#: Methods in the order their colours are taken.
METHOD_ORDER = ("fp32", "fp16", "bf16", "dynamic", "static", "qat")


@contextmanager
def style(chart: str) -> Iterator[None]:
    """matplotlib settings for one chart (``chart`` salts its SVG ids)."""
    import matplotlib

    settings: Any = {**_RC, "svg.hashsalt": f"farm-report-{chart}"}  # the same ids for the same chart: reproducible
    with matplotlib.rc_context(settings):
        yield


def figure(panels: int, *, width: float = 7.5, panel_height: float = 3.6, columns: int = 2) -> tuple[Any, list[Any]]:
    """A figure of ``panels`` axes in a grid (constrained layout); unused grid cells are removed.

    Returns:
        (figure, axes in reading order).
    """
    from matplotlib.figure import Figure

    cols = 1 if panels == 1 else min(columns, panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width, panel_height * rows + 0.9), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[panels:]:
        ax.remove()
    return fig, axes[:panels]


def to_svg(fig: Any, title: str, key: str) -> str:
    """Render ``fig`` as an ``<svg>`` element for inline use, with ``title`` as its accessible name.

    Args:
        fig: a matplotlib Figure.
        title: what the chart shows (escaped here).
        key: the chart's name, prefixed to the ids its SVG references (markers, clip paths) so that they are
            unique in the page; ids nothing references (matplotlib names every group) are dropped.

    Returns:
        The SVG markup: no XML prolog, DOCTYPE, metadata or comments. Its width and height are the figure's
        natural size; CSS shrinks it (through its viewBox) in a narrower window.
    """
    from farm.report.fmt import esc

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = _PROLOG.sub("", text, count=1)
    text = _METADATA.sub("", text, count=1)
    text = _COMMENT.sub("", text)
    text = _ids_prefixed(text, f"{key}-")
    text = text.replace("<svg ", f'<svg class="chart" role="img" aria-label="{esc(title)}" ', 1)
    return text.strip()


def label(text: Any, limit: int = 48) -> str:
    """User text made safe for matplotlib: ``$`` is not mathtext, a leading ``_`` does not hide a legend entry,
    and long model references are shortened (the table has them whole)."""
    s = str(text)
    if len(s) > limit:
        s = s[: limit // 2 - 1] + "…" + s[-(limit // 2) :]
    s = s.replace("$", r"\$")  # matplotlib shows r"\$" as "$" and leaves other backslashes as they are
    return "\u200b" + s if s.startswith("_") else s


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    """A colour per method, stable across charts (known methods first)."""
    known = [m for m in METHOD_ORDER if m in methods]
    rest = sorted(m for m in set(methods) if m not in METHOD_ORDER)
    return {m: f"C{i % 10}" for i, m in enumerate(known + rest)}


def model_colours(models: Sequence[str]) -> dict[str, str]:
    """A colour per model, in the order given (the report's model order)."""
    return {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(models))}


def marker_handle(marker: str, text: str, *, colour: str = "0.35", hollow: bool = False) -> Any:
    """A legend entry for a marker (grey unless ``colour``), filled or hollow."""
    from matplotlib.lines import Line2D

    return Line2D(
        [],
        [],
        linestyle="none",
        marker=marker,
        markersize=7,
        markeredgecolor=colour,
        markerfacecolor="none" if hollow else colour,
        label=label(text),
    )


def line_handle(
    colour: str, text: str, *, linestyle: Any = "-", marker: str | None = None, hollow: bool = False
) -> Any:
    """A legend entry for a line (with a marker, filled or hollow, if given)."""
    from matplotlib.lines import Line2D

    face = "none" if hollow else colour
    return Line2D([], [], color=colour, linestyle=linestyle, marker=marker, markerfacecolor=face, label=label(text))


def legend(fig: Any, handles: Sequence[Any]) -> None:
    """One legend under the panels, as many columns as fit."""
    if handles:
        fig.legend(handles=list(handles), loc="outside lower center", ncols=min(3, len(handles)))


def log_if_wide(ax: Any, axis: str, values: Sequence[float], *, base: int = 10, ratio: float = 20.0) -> None:
    """Use a log scale on ``axis`` when positive ``values`` span more than ``ratio``."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > ratio:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log", base=base)
        which = ax.xaxis if axis == "x" else ax.yaxis
        # Plain numbers at 1, 2 and 5 of each decade, not 2x10^0.
        which.set_major_locator(LogLocator(base=base, subs=(1.0, 2.0, 5.0)))
        which.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        which.set_minor_formatter(NullFormatter())


def integer_ticks(ax: Any, values: Sequence[int], *, log2: bool) -> None:
    """x ticks at exactly ``values`` (batch sizes, bit-widths, calibration sizes), on a log2 axis if asked."""
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ticks = sorted(set(values))
    if log2 and len(ticks) > 1 and ticks[0] > 0:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] * 0.5, ticks[0] * 1.5)


@dataclass(frozen=True)
class Chart:
    """One section's chart: its title, the inline SVG (None when there was nothing to plot) and a caption.

    Attributes:
        key: the section's anchor (``latency``, ``size``, ...).
        title: the chart's title (plain text).
        svg: the ``<svg>`` markup, or None.
        notes: plain-text sentences for the caption: what is drawn, what was left out, or why nothing was.
    """

    key: str
    title: str
    svg: str | None
    notes: tuple[str, ...] = ()


def chart_html(chart: Chart) -> str:
    """A chart as a ``<figure>`` with its caption, or its caption alone (``class="empty"``) when it has no SVG."""
    from farm.report.fmt import esc

    caption = " ".join(esc(n) for n in chart.notes)
    if chart.svg is None:
        return f'<p class="empty">{caption or "nothing to plot."}</p>'
    return f"<figure>{chart.svg}<figcaption>{caption}</figcaption></figure>"


def pick(values: Sequence[Any], limit: int) -> list[Any]:
    """At most ``limit`` of ``values``, evenly spread, the first and last always kept."""
    if len(values) <= limit:
        return list(values)
    step = (len(values) - 1) / (limit - 1)
    return [values[round(i * step)] for i in range(limit)]


def require_matplotlib() -> None:
    """Check that matplotlib imports, before any work that needs it.

    Raises:
        ConfigError: it is not installed (the producer's base install has no matplotlib).
    """
    from farm.errors import ConfigError

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(
            "farm report draws its charts with matplotlib, which is not installed: pip install 'quantfarm[engine]'"
        ) from None


def _ids_prefixed(svg: str, prefix: str) -> str:
    """Prefix the ids that something references (and the references), drop the others; in tags only."""
    tags = _TAG.findall(svg)
    used = {ref for tag in tags for ref in _REFERENCE.findall(tag)}

    def fix(match: re.Match[str]) -> str:
        tag = _ID.sub(lambda m: f' id="{prefix}{m.group(1)}"' if m.group(1) in used else "", match.group(0))
        return _REFERENCE_AT.sub(lambda m: f"{m.group(1)}{prefix}", tag)

    return _TAG.sub(fix, svg)
