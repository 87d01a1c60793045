"""Rankings a user can trust: unhealthy results never compete (and the output says how many were left out),
``best`` leaves simulated results out unless asked, and configurations whose 95 % intervals overlap are a tie
broken by simplicity (no QAT, fewer calibration samples, a cheaper observer), which the output says."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from farm.analysis import best_configs, compare, excluded_note, pareto_front, simplicity, unhealthy
from farm.cli import cli
from farm.store.db import Database
from farm.store.migrate import upgrade
from farm.store.models import Job, Metric, Sweep, SweepJob


def row(job_id: int, p50: float, drop: float = 0.0, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        job_id=job_id, model="m", batch_size=1, state="succeeded", simulated=False, health="ok", method="static",
        latency_p50_ms=p50, accuracy=0.98 - drop, accuracy_drop=drop, calibration_size=256, observer="minmax",
    )  # fmt: skip
    return base | extra


def ci(p50: float, half: float) -> dict[str, float]:
    return {"latency_p50_ci_low_ms": p50 - half, "latency_p50_ci_high_ms": p50 + half}


def test_unhealthy_results_never_compete_and_are_counted() -> None:
    rows = [
        row(1, 1.0, health="collapsed"),  # the fastest, but its outputs collapsed
        row(2, 0.5, health="degenerate_reference"),
        row(3, 3.0),
        row(4, 4.0, health=None, observer="histogram"),  # stored before health existed: kept
    ]
    (choice,) = best_configs(rows, max_accuracy_drop=0.01)
    assert choice.best is not None and choice.best["job_id"] == 3
    assert [r["job_id"] for r in pareto_front(rows, "latency_p50_ms", "accuracy")[("m", 1)]] == [3]
    assert unhealthy(rows) == {1: "collapsed", 2: "degenerate_reference"}
    assert excluded_note(rows) == (
        "2 job(s) left out: their figures mean nothing (1 collapsed, 1 degenerate_reference; see the health column)"
    )
    assert excluded_note(rows[2:]) is None
    pairs = compare(rows, rows)
    assert sorted(p.a["job_id"] for p in pairs if p.a) == [3, 4]


def test_best_never_picks_a_simulated_result_unless_asked() -> None:
    rows = [
        row(1, 5.0, size_bytes=1000),
        row(2, 9.0, size_bytes=300, simulated=True, bits=4),  # a packed-size estimate
    ]
    (choice,) = best_configs(rows, max_accuracy_drop=0.01, by="size_bytes")
    assert choice.best is not None and choice.best["job_id"] == 1
    assert choice.notes == ["1 row(s) without size_bytes or simulated not considered"]
    (asked,) = best_configs(rows, max_accuracy_drop=0.01, by="size_bytes", include_simulated=True)
    assert asked.best is not None and asked.best["job_id"] == 2
    # Never on latency: a simulated model's latency is fake quantization on fp32 kernels.
    (latency,) = best_configs(
        [row(1, 5.0), row(2, 1.0, simulated=True)], max_accuracy_drop=0.01, include_simulated=True
    )
    assert latency.best is not None and latency.best["job_id"] == 1


def test_overlapping_intervals_are_a_tie_won_by_the_simplest_recipe() -> None:
    rows = [
        row(1, 0.118, method="qat", calibration_size=32, **ci(0.118, 0.002)),  # the fastest point
        row(2, 0.119, calibration_size=1024, observer="histogram", **ci(0.119, 0.002)),
        row(3, 0.1195, calibration_size=64, observer="histogram", **ci(0.1195, 0.002)),  # fewest samples, not qat
        row(4, 0.130, calibration_size=8, **ci(0.130, 0.001)),  # simplest of all, but clearly slower
    ]
    (choice,) = best_configs(rows, max_accuracy_drop=0.01)
    assert choice.best is not None and choice.best["job_id"] == 3
    assert sorted(r["job_id"] for r in choice.tied) == [1, 2]
    assert choice.notes == [
        "3 configurations tie on latency_p50_ms (their 95 % intervals overlap): picked the simplest "
        "(no QAT, then fewer calibration samples, then a cheaper observer)"
    ]


def test_without_intervals_the_fastest_wins_as_before() -> None:
    rows = [row(1, 0.118, method="qat", calibration_size=32), row(2, 0.119, calibration_size=8)]
    (choice,) = best_configs(rows, max_accuracy_drop=0.01)
    assert choice.best is not None and choice.best["job_id"] == 1 and choice.tied == []


def test_simplicity_orders_qat_last_then_samples_then_observer() -> None:
    recipes = [
        dict(method="qat", calibration_size=8, observer="minmax"),
        dict(method="static", calibration_size=256, observer="percentile"),
        dict(method="static", calibration_size=256, observer="minmax"),
        dict(method="static", calibration_size=64, observer="histogram"),
        dict(method="dynamic", calibration_size=None, observer=None),
    ]
    order = sorted(range(len(recipes)), key=lambda i: simplicity(recipes[i]))
    assert order == [4, 3, 2, 1, 0]


# -- the CLI says what it left out and why it picked what it picked ----------------------------------------------

NOW = datetime(2026, 1, 2, tzinfo=timezone.utc)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    db = Database(url)
    upgrade(db)
    jobs = [  # key, method, calibration size, observer, p50, half CI, health, simulated, recipe
        ("q", "qat", 32, "moving_average", 0.118, 0.002, "ok", False, "qat int8 mavg pc n=32"),
        ("s", "static", 64, "minmax", 0.119, 0.002, "ok", False, "static int8 minmax pc n=64"),
        ("x", "static", 8, "minmax", 0.05, 0.001, "collapsed", False, "static int8 minmax pc n=8"),
        ("f", "static", 8, "minmax", 0.01, 0.001, "ok", True, "static int4 minmax pc n=8"),
    ]
    with db.session() as s:
        s.add(Sweep(id=1, name="trust", spec_text="{}", spec_hash="t" * 64, created_at=NOW, state="succeeded"))
        for i, (key, method, cal, obs, p50, half, health, sim, recipe) in enumerate(jobs, start=1):
            s.add(
                Job(id=i, key=key * 64, model="m", dataset="d", method=method, calibration_size=cal, observer=obs,
                    device="cpu", spec={"method": {"method": method}}, state="succeeded", created_at=NOW,
                    recipe=recipe)
            )  # fmt: skip
            s.flush()
            s.add(SweepJob(sweep_id=1, job_id=i))
            s.add(
                Metric(job_id=i, batch_size=1, accuracy=0.98, accuracy_fp32=0.98, accuracy_drop=0.0, simulated=sim,
                       latency_p50_ms=p50, latency_p50_ci_low_ms=p50 - half, latency_p50_ci_high_ms=p50 + half,
                       size_bytes=100 if sim else 1000, health=health, extra={})
            )  # fmt: skip
    db.dispose()
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FARM_DATABASE_URL", url)


def test_cli_best_says_what_it_left_out_and_that_it_broke_a_tie(env: None) -> None:
    result = CliRunner().invoke(cli, ["results", "best", "--sweep", "1", "--max-accuracy-drop", "0.01"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == ("note: 1 job(s) left out: their figures mean nothing (1 collapsed; see the health column)")
    assert lines[1].startswith(
        "m, batch 1: static int8 minmax pc n=64 (job 2): latency_p50_ms 0.119 (95 % CI 0.117-0.121), accuracy 0.98"
    )
    assert "2 configurations tie on latency_p50_ms (their 95 % intervals overlap): picked the simplest" in result.stdout
    records = json.loads(
        CliRunner()
        .invoke(cli, ["results", "best", "--sweep", "1", "--max-accuracy-drop", "0.01", "--format", "json"])
        .stdout
    )
    assert [(r["job_id"], r["tied_job_ids"]) for r in records] == [(2, [1])]


def test_cli_best_by_size_takes_simulated_results_only_when_asked(env: None) -> None:
    args = ["results", "best", "--sweep", "1", "--max-accuracy-drop", "0.01", "--by", "size_bytes", "--format", "json"]
    default = json.loads(CliRunner().invoke(cli, args).stdout)
    asked = json.loads(CliRunner().invoke(cli, [*args, "--include-simulated"]).stdout)
    assert default[0]["job_id"] != 4 and asked[0]["job_id"] == 4
