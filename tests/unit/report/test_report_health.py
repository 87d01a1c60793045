"""The report's summary: unhealthy results are listed and never the best configuration; a tie within noise is
said to be one, with the simplest recipe picked."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from farm.report.model import SweepInfo
from farm.report.sections import summary

NOW = datetime(2026, 1, 2, tzinfo=timezone.utc)
SWEEP = SweepInfo(id=3, name="trust", state="succeeded", submitter=None, created_at=NOW, finished_at=NOW)


def row(job_id: int, p50: float, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        job_id=job_id, model="m", batch_size=1, state="succeeded", simulated=False, health="ok", method="static",
        bits=8, calibration_size=256, observer="minmax", accuracy=0.98, accuracy_fp32=0.98, accuracy_drop=0.0,
        latency_p50_ms=p50, latency_p50_ci_low_ms=p50 - 0.002, latency_p50_ci_high_ms=p50 + 0.002,
        speedup=2.0, size_bytes=1000, artifact_uri=None,
    )  # fmt: skip
    return base | extra


def test_unhealthy_jobs_are_listed_and_left_out_of_the_best_configuration() -> None:
    rows = [
        row(1, 0.050, health="collapsed"),
        row(2, 0.040, health="degenerate_reference"),
        row(3, 0.118, method="qat", calibration_size=32),
        row(4, 0.119, calibration_size=64),
    ]
    html = summary(rows, SWEEP, NOW, {}, 1)
    best = html.split("<h3>Best configuration per model</h3>")[1].split("<h3>Notes</h3>")[0]
    assert "(job 4)" in best and "(job 1)" not in best and "(job 2)" not in best
    assert "tie within noise with job(s) 3" in best
    assert "0.119 ±0.002" in best
    notes = html.split("<h3>Notes</h3>")[1]
    assert "<strong>Health</strong>: 2 job(s) have figures that mean nothing" in notes
    assert "collapsed: jobs 1" in notes and "degenerate_reference: jobs 2" in notes
