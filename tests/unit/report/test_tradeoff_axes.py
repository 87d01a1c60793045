"""The trade-off charts as the demo draws them (issue 12, item 6): accuracy never runs past 1.0 on its axis, and
jobs with identical figures, drawn on one marker, say how many they are.
"""

from __future__ import annotations

from typing import Any

import pytest

from farm.report.svg import style
from farm.report.tradeoff import accuracy_vs_size, latency_figure, size_figure
from farm.store.columns import RESULT_COLUMNS


def row(job_id: int, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(RESULT_COLUMNS)
    base.update(
        sweep_id=1, job_id=job_id, model="farm:digits-cnn", method="static", bits=8, device="cpu", batch_size=1,
        state="succeeded", accuracy=0.97, size_bytes=120_000, latency_p50_ms=0.1 + job_id / 1000, simulated=False,
    )  # fmt: skip
    base.update(values)
    return base


def demo_like() -> list[dict[str, Any]]:
    """fp32 at 100 % accuracy, and six static recipes (3 calibration sizes x 2 observers) that gave one model."""
    rows = [row(1, method="fp32", bits=None, accuracy=1.0, size_bytes=460_000, latency_p50_ms=0.2)]
    rows += [row(job_id, calibration_size=16 * job_id) for job_id in range(2, 8)]
    return rows


@pytest.mark.parametrize("draw", [size_figure, latency_figure])
def test_the_accuracy_axis_stops_at_1(draw: Any) -> None:
    with style("test"):
        fig, _ = draw(demo_like())
        for ax in fig.axes:
            if ax.get_ylabel():
                low, high = ax.get_ylim()
                assert high <= 1.0 and 0.0 <= low < 0.97, (low, high)
                assert max(ax.get_yticks()[(ax.get_yticks() >= low) & (ax.get_yticks() <= high)]) <= 1.0


def test_six_identical_points_are_labelled_with_their_count() -> None:
    with style("size"):
        fig, notes = size_figure(demo_like())
    (ax,) = [a for a in fig.axes if a.get_ylabel()]
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["×6"]  # one label, at the six static jobs; fp32 stands alone
    assert any("×6" in note for note in notes)
    assert "×6" in (accuracy_vs_size(demo_like()).svg or "")


def test_distinct_points_get_no_count() -> None:
    rows = [row(1), row(2, accuracy=0.96), row(3, size_bytes=130_000)]
    with style("size"):
        fig, notes = size_figure(rows)
    assert all(not a.texts for a in fig.axes)
    assert not any("×" in note for note in notes)
