"""An unstable figure timed while other processes kept the host busy says so (farm.quant.measure.fill_latency)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from farm.quant.hostload import BUSY_HOST
from farm.quant.measure import fill_latency


def _warnings(host_load: float | None, isolation: str = "exclusive") -> list[str]:
    result: Any = SimpleNamespace(method="static", simulated=False, latency=[], warnings=[])
    lat = {"batch_size": 8, "stable": False, "unstable_reason": "the p50's 95 % CI reaches ±59.3% of it (> 5%)"}
    entry = {**lat, "speedup": 4.5, "host_load": host_load, "isolation": isolation}
    fill_latency(result, [entry], SimpleNamespace(latency={8: 1.0}))
    return list(result.warnings)


def test_a_busy_host_is_named_as_the_likely_cause() -> None:
    (warning,) = _warnings(0.98)
    assert warning.startswith("latency at batch 8 is not stable: the p50's 95 % CI reaches ±59.3%")
    assert "other processes kept 98% of the CPU time this job left busy while it timed" in warning
    assert "(the measurement lock pauses farm jobs only)" in warning
    assert warning.endswith("before trusting its p50 and speedup")
    # Timed without exclusivity, other farm jobs may have been the neighbours: the warning does not say otherwise.
    (pinned,) = _warnings(0.98, "pinned")
    assert "isolation pinned: other farm jobs may have run or timed alongside" in pinned
    assert "pauses farm jobs only" not in pinned


def test_a_quiet_host_is_not_blamed() -> None:
    for load in (None, BUSY_HOST / 2):
        (warning,) = _warnings(load)
        assert "other processes" not in warning
