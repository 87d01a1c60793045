"""PNG plots of a sweep's results for ``farm demo``: the report's trade-off charts, saved as PNG files.

The charts are drawn once, in :mod:`farm.report.tradeoff` (the HTML report embeds the same figures as SVG), so
the two never disagree on markers, colours or what is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Pixels per inch of the PNG files.
PNG_DPI = 110


def tradeoff_plots(rows: Sequence[dict[str, Any]], directory: Path) -> list[Path]:
    """Accuracy vs size and accuracy vs p50 latency (a panel per batch size), each model's Pareto front drawn.

    Simulated (fake-quant) results are drawn hollow and left off the latency chart: their accuracy approximates
    a low-bit deployment, their latency does not.

    Args:
        rows: the sweep's rows of results_flat.
        directory: where the PNG files go (created when missing).

    Returns:
        The PNG files written; a chart with nothing to draw (no succeeded job) writes none.
    """
    from farm.report.svg import style
    from farm.report.tradeoff import latency_figure, size_figure

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, key, draw in (
        ("accuracy_vs_size.png", "size", size_figure),
        ("accuracy_vs_latency.png", "latency", latency_figure),
    ):
        with style(key):
            fig, _ = draw(rows)
            if fig is None:
                continue
            path = directory / name
            fig.savefig(path, format="png", dpi=PNG_DPI)
        written.append(path)
    return written
