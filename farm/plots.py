"""PNG plots of a sweep's results (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

_MARKERS = {"fp32": "*", "fp16": "P", "bf16": "P", "dynamic": "D", "static": "o", "qat": "s"}


def tradeoff_plots(rows: Sequence[dict[str, Any]], directory: Path, *, batch_size: int | None = None) -> list[Path]:
    """Accuracy vs size ratio and accuracy vs p50 latency, one point per succeeded job.

    Simulated (fake-quant) results are drawn hollow: their accuracy approximates a low-bit deployment,
    their latency does not.

    Returns:
        The PNG files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    done = [r for r in rows if r["state"] == "succeeded" and r["accuracy"] is not None]
    if batch_size is None:
        sizes = sorted({r["batch_size"] for r in done if r["batch_size"] is not None})
        batch_size = sizes[-1] if sizes else None
    at_batch = [r for r in done if r["batch_size"] == batch_size]
    written = []
    for x, xlabel, name in (
        ("size_ratio", "size / fp32 size", "accuracy_vs_size.png"),
        ("latency_p50_ms", f"p50 latency (ms), batch {batch_size}", "accuracy_vs_latency.png"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
        for color, method in enumerate(sorted({r["method"] for r in at_batch})):
            for simulated in (False, True):
                pts = [r for r in at_batch if r["method"] == method and bool(r["simulated"]) == simulated]
                if not pts or (simulated and x == "latency_p50_ms"):
                    continue  # a simulated model's latency is fake-quant overhead, not a deployment figure
                label = f"{method}{' (simulated)' if simulated else ''}"
                ax.scatter(
                    [p[x] for p in pts],
                    [p["accuracy"] for p in pts],
                    marker=_MARKERS.get(method, "o"),
                    s=60,
                    label=label,
                    facecolors="none" if simulated else f"C{color}",
                    edgecolors=f"C{color}",
                )
        values = [r[x] for r in at_batch if r[x] and (x != "latency_p50_ms" or not r["simulated"])]
        if values and max(values) > 10 * min(values):  # e.g. bf16 without native support: 25x fp32's latency
            ax.set_xscale("log")
            xlabel += " (log scale)"
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{rows[0]['sweep_name'] if rows else ''}: accuracy vs {x.split('_')[0]}")
        fig.tight_layout()
        path = directory / name
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
