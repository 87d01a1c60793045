"""``farm results pareto / best / compare`` and the pure functions behind them (farm/analysis.py).

The CLI tests run against an SQLite database seeded here through the real schema (``SWEEPS``, ``JOBS``), whose
fronts, choices and pairs are worked out by hand in each test; the pure functions are tested both on hand-made
rows (ties, missing figures, failed and simulated rows, a job in two sweeps) and on the view's rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from farm.analysis import Pair, best_configs, compare, pareto_front, recipe_key
from farm.cli import cli
from farm.store.db import Database
from farm.store.migrate import upgrade
from farm.store.models import Artifact, Job, Metric, Sweep, SweepJob
from farm.store.results import fetch_results, method_configs, recompute_stored_figures

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
SWEEPS = {1: "pool-a", 2: "pool-b"}

_INT8 = dict(bits=8, calibration_size=128, backend="x86", granularity="per_channel")

# Two sweeps of the same grid on two hardware pools. Sweep 1 ("pool-a", hardware h1):
#   m1: fp32 ref1; static int8 A (minmax), B (histogram), Pa (percentile 99.99); dynamic C; static int4 D;
#       fake int4 E (simulated); a failed F. ref1, A and C also have batch 8.
#   m2: fp32 ref2; static int8 G (also linked to sweep 2); dynamic H.
# Sweep 2 ("pool-b", hardware h3, twice as slow): m1's ref1, A and B again (ref_b, A_b, B_b), a percentile
# job whose config differs from Pa (Pb), and G.
JOBS: list[dict[str, Any]] = [
    dict(key="ref1", sweeps=(1,), role="reference", model="m1", method="fp32", config={"method": "fp32"},
         artifact="file:///a/ref1.pt",
         metrics=[dict(batch_size=1, accuracy=0.98, latency_p50_ms=10.0, size_bytes=4000),
                  dict(batch_size=8, accuracy=0.98, latency_p50_ms=40.0, size_bytes=4000)]),
    dict(key="A", sweeps=(1,), ref="ref1", model="m1", method="static", observer="minmax", **_INT8,
         artifact="file:///a/A.pt",
         metrics=[dict(batch_size=1, accuracy=0.975, latency_p50_ms=4.0, size_bytes=1000),
                  dict(batch_size=8, accuracy=0.975, latency_p50_ms=20.0, size_bytes=1000)]),
    dict(key="B", sweeps=(1,), ref="ref1", model="m1", method="static", observer="histogram", **_INT8,
         artifact="file:///a/B.pt",
         metrics=[dict(batch_size=1, accuracy=0.97, latency_p50_ms=3.0, size_bytes=1000)]),
    dict(key="Pa", sweeps=(1,), ref="ref1", model="m1", method="static", observer="percentile", **_INT8,
         config={"method": "static", "observer": "percentile", "percentile": 99.99}, artifact="file:///a/Pa.pt",
         metrics=[dict(batch_size=1, accuracy=0.965, latency_p50_ms=3.5, size_bytes=1000)]),
    dict(key="C", sweeps=(1,), ref="ref1", model="m1", method="dynamic", bits=8, backend="x86",
         artifact="file:///a/C.pt",
         metrics=[dict(batch_size=1, accuracy=0.96, latency_p50_ms=5.0, size_bytes=1500),
                  dict(batch_size=8, accuracy=0.96, latency_p50_ms=30.0, size_bytes=1500)]),
    dict(key="D", sweeps=(1,), ref="ref1", model="m1", method="static", bits=4, calibration_size=128,
         backend="x86", observer="minmax", granularity="per_tensor", artifact="file:///a/D.pt",
         metrics=[dict(batch_size=1, accuracy=0.90, latency_p50_ms=2.0, size_bytes=600)]),
    dict(key="E", sweeps=(1,), ref="ref1", model="m1", method="fake", bits=4,
         metrics=[dict(batch_size=1, accuracy=0.978, latency_p50_ms=1.0, simulated=True)]),
    dict(key="F", sweeps=(1,), ref="ref1", model="m1", method="static", bits=2, state="failed", error="boom"),
    dict(key="ref2", sweeps=(1,), role="reference", model="m2", method="fp32", config={"method": "fp32"},
         artifact="file:///a/ref2.pt",
         metrics=[dict(batch_size=1, accuracy=0.90, latency_p50_ms=8.0, size_bytes=2000)]),
    dict(key="G", sweeps=(1, 2), ref="ref2", model="m2", method="static", observer="minmax", **_INT8,
         artifact="file:///a/G.pt",
         metrics=[dict(batch_size=1, accuracy=0.85, latency_p50_ms=3.0, size_bytes=500)]),
    dict(key="H", sweeps=(1,), ref="ref2", model="m2", method="dynamic", bits=8, backend="x86",
         artifact="file:///a/H.pt",
         metrics=[dict(batch_size=1, accuracy=0.87, latency_p50_ms=6.0, size_bytes=700)]),
    dict(key="ref_b", sweeps=(2,), role="reference", model="m1", method="fp32", config={"method": "fp32"},
         hw="h3", metrics=[dict(batch_size=1, accuracy=0.98, latency_p50_ms=20.0, size_bytes=4000)]),
    dict(key="A_b", sweeps=(2,), ref="ref_b", model="m1", method="static", observer="minmax", **_INT8, hw="h3",
         artifact="file:///b/A.pt",
         metrics=[dict(batch_size=1, accuracy=0.974, latency_p50_ms=8.0, size_bytes=1000)]),
    dict(key="B_b", sweeps=(2,), ref="ref_b", model="m1", method="static", observer="histogram", **_INT8,
         hw="h3", metrics=[dict(batch_size=1, accuracy=0.97, latency_p50_ms=5.0, size_bytes=1000)]),
    dict(key="Pb", sweeps=(2,), ref="ref_b", model="m1", method="static", observer="percentile", **_INT8,
         config={"method": "static", "observer": "percentile", "percentile": 99.9}, hw="h3",
         metrics=[dict(batch_size=1, accuracy=0.968, latency_p50_ms=6.0, size_bytes=1000)]),
]  # fmt: skip

_JOB_FIELDS = ("role", "model", "method", "bits", "calibration_size", "backend", "observer", "granularity", "error")


def seed(db: Database) -> dict[str, int]:
    """Write :data:`SWEEPS` and :data:`JOBS` (the database must be migrated and empty). Returns job ids by key."""
    ids: dict[str, int] = {}
    with db.session() as s:
        for sweep_id, name in SWEEPS.items():
            s.add(Sweep(id=sweep_id, name=name, spec_text="{}", spec_hash="0" * 64, created_at=NOW, state="succeeded"))
        s.flush()
        for spec in JOBS:
            hw = spec.get("hw", "h1")
            config = spec.get("config") or {k: spec.get(k) for k in ("method", "bits", "observer", "granularity")}
            job = Job(
                key=(spec["key"] + "-" * 64)[:64],
                dataset="builtin:digits",
                device="cpu",
                spec={"method": config},
                state=spec.get("state", "succeeded"),
                created_at=NOW,
                hardware=f"Xeon {hw}",
                reference_job_id=ids[spec["ref"]] if "ref" in spec else None,
                **{f: spec[f] for f in _JOB_FIELDS if f in spec},
            )
            s.add(job)
            s.flush()
            ids[spec["key"]] = job.id
            fp32 = 0.98 if spec["model"] == "m1" else 0.90
            for m in spec.get("metrics", []):
                s.add(Metric(job_id=job.id, accuracy_fp32=fp32, hardware_id=hw, extra={}, **m))
            if "artifact" in spec:
                s.add(Artifact(job_id=job.id, kind="model", uri=spec["artifact"], sha256="0" * 64, size_bytes=1,
                               created_at=NOW))  # fmt: skip
            s.add_all([SweepJob(sweep_id=sweep_id, job_id=job.id) for sweep_id in spec["sweeps"]])
        s.flush()
        recompute_stored_figures(s)  # accuracy_drop and speedup, as workers store them
    return ids


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, int]]]:
    """URL of an SQLite database holding :data:`JOBS`, and its job ids by key."""
    url = f"sqlite:///{tmp_path_factory.mktemp('analysis') / 'farm.db'}"
    db = Database(url)
    upgrade(db)
    ids = seed(db)
    db.dispose()
    yield url, ids


@pytest.fixture
def env(seeded: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, int]:
    """FARM_DATABASE_URL pointing at the seeded database; returns the job ids by key."""
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FARM_DATABASE_URL", seeded[0])
    return seeded[1]


@pytest.fixture
def view(seeded: tuple[str, dict[str, int]]) -> Iterator[dict[int, list[dict[str, Any]]]]:
    """The view's rows of each sweep."""
    db = Database(seeded[0])
    with db.session(write=False) as s:
        rows = {sweep_id: fetch_results(s, sweep_ids=[sweep_id]) for sweep_id in SWEEPS}
    db.dispose()
    yield rows


def farm(*args: str) -> Result:
    return CliRunner().invoke(cli, ["results", *args])


def ok_json(*args: str) -> Any:
    result = farm(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def ok_text(*args: str) -> str:
    result = farm(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def keys_of(ids: dict[str, int]) -> dict[int, str]:
    return {v: k for k, v in ids.items()}


def fronts_by_key(fronts: dict[tuple[Any, ...], list[dict[str, Any]]], ids: dict[str, int]) -> dict[Any, list[str]]:
    names = keys_of(ids)
    return {k: [names[r["job_id"]] for r in front] for k, front in fronts.items()}


def cli_fronts(records: list[dict[str, Any]], ids: dict[str, int], per_batch: bool = True) -> dict[Any, list[str]]:
    """JSON records of ``farm results pareto`` as {(model, batch_size) or model: [job keys in order]}."""
    names = keys_of(ids)
    out: dict[Any, list[str]] = {}
    for r in records:
        out.setdefault((r["model"], r["batch_size"]) if per_batch else r["model"], []).append(names[r["job_id"]])
    return out


# ------------------------------------------------------------------------------------------------ pure: pareto


def row(job_id: int, x: float | None, y: float | None, **extra: Any) -> dict[str, Any]:
    """A result row with figures x (as latency_p50_ms) and y (as accuracy)."""
    base: dict[str, Any] = dict(
        job_id=job_id, model="m", batch_size=1, state="succeeded", simulated=False, latency_p50_ms=x, accuracy=y
    )
    return base | extra


def front_ids(rows: list[dict[str, Any]], **kwargs: Any) -> dict[tuple[Any, ...], list[int]]:
    fronts = pareto_front(rows, "latency_p50_ms", "accuracy", **kwargs)
    return {k: [r["job_id"] for r in front] for k, front in fronts.items()}


def test_pareto_front_keeps_exactly_the_non_dominated_rows_best_x_first() -> None:
    rows = [
        row(1, 10.0, 0.98),
        row(2, 4.0, 0.975),
        row(3, 3.0, 0.97),
        row(4, 5.0, 0.96),  # dominated by 2
        row(5, 2.0, 0.90),
        row(6, 3.5, 0.965),  # dominated by 3
        row(7, 3.0, 0.96),  # same x as 3, worse y: dominated
        row(8, 6.0, 0.975),  # same y as 2, worse x: dominated
    ]
    assert front_ids(rows) == {("m", 1): [5, 3, 2, 1]}


@pytest.mark.parametrize(
    ("maximize_x", "maximize_y", "expected"),
    [
        (False, True, [5, 3, 2, 1]),
        (True, True, [1]),
        (False, False, [5]),
        (True, False, [1, 4, 5]),
    ],
)
def test_pareto_front_directions(maximize_x: bool, maximize_y: bool, expected: list[int]) -> None:
    rows = [row(1, 10.0, 0.98), row(2, 4.0, 0.975), row(3, 3.0, 0.97), row(4, 5.0, 0.96), row(5, 2.0, 0.90)]
    assert front_ids(rows, maximize_x=maximize_x, maximize_y=maximize_y) == {("m", 1): expected}


def test_pareto_front_keeps_the_simplest_of_rows_tied_on_both_figures_and_names_the_others() -> None:
    # Rows 2 and 3 can't be told apart: the front keeps one (the simpler recipe; here the lower id) and says so.
    rows = [row(1, 2.0, 0.9), row(2, 3.0, 0.95), row(3, 3.0, 0.95), row(4, 3.0, 0.94), row(5, 4.0, 0.95)]
    fronts = pareto_front(rows, "latency_p50_ms", "accuracy")
    assert [(r["job_id"], r["ties"]) for r in fronts[("m", 1)]] == [(1, []), (2, [3])]
    rows[1] |= {"method": "qat"}  # now 3 is the simpler of the two
    assert front_ids(rows) == {("m", 1): [1, 3]}


def test_pareto_front_treats_overlapping_latency_intervals_as_a_tie() -> None:
    def timed(job_id: int, p50: float, half: float, accuracy: float, **extra: Any) -> dict[str, Any]:
        ci = {"latency_p50_ci_low_ms": p50 - half, "latency_p50_ci_high_ms": p50 + half}
        return row(job_id, p50, accuracy, **ci, **extra)

    rows = [
        timed(1, 0.118, 0.002, 0.97, calibration_size=512),  # fastest by a hair, but within 2's noise
        timed(2, 0.119, 0.002, 0.97, calibration_size=32),  # simpler: it wins the tie
        timed(3, 0.120, 0.002, 0.98, calibration_size=512),  # tied on latency, better accuracy: it dominates 1, 2
        timed(4, 0.100, 0.001, 0.90),  # clearly faster: on the front
    ]
    fronts = pareto_front(rows, "latency_p50_ms", "accuracy")
    assert [r["job_id"] for r in fronts[("m", 1)]] == [4, 3]
    del rows[2]
    fronts = pareto_front(rows, "latency_p50_ms", "accuracy")
    assert [(r["job_id"], r["ties"]) for r in fronts[("m", 1)]] == [(4, []), (2, [1])]
    # Without intervals the same figures rank: 1 is faster than 2.
    bare = [{k: v for k, v in r.items() if "_ci_" not in k} for r in rows]
    assert front_ids(bare) == {("m", 1): [4, 1]}


def test_pareto_front_leaves_out_failed_simulated_and_incomplete_rows() -> None:
    rows = [
        row(1, 5.0, 0.9),
        row(2, 1.0, 0.99, state="failed"),
        row(3, 1.0, 0.99, simulated=True),  # its latency measures fake quantization
        row(4, None, 0.99),
        row(5, 1.0, None),
    ]
    assert front_ids(rows) == {("m", 1): [1]}
    # A figure that doesn't depend on the deployment keeps simulated rows (size, accuracy).
    sized = [r | {"size_bytes": r["latency_p50_ms"]} for r in rows]
    assert {k: [r["job_id"] for r in f] for k, f in pareto_front(sized, "size_bytes", "accuracy").items()} == {
        ("m",): [3]
    }


def test_pareto_front_is_per_model_and_per_batch_size_for_latency() -> None:
    rows = [
        row(1, 4.0, 0.9),
        row(2, 2.0, 0.8),
        row(1, 10.0, 0.9, batch_size=8),
        row(2, 12.0, 0.8, batch_size=8),  # dominated at batch 8 only
        row(3, 1.0, 0.5, model="other"),  # not compared with model m's rows
    ]
    assert front_ids(rows) == {("m", 1): [2, 1], ("m", 8): [1], ("other", 1): [3]}


def test_pareto_front_lists_a_job_once_when_it_is_in_two_sweeps_or_batch_sizes() -> None:
    rows = [
        row(1, 4.0, 0.9, size_bytes=100, sweep_id=1),
        row(1, 4.0, 0.9, size_bytes=100, sweep_id=2),
        row(1, 9.0, 0.9, size_bytes=100, sweep_id=1, batch_size=8),
        row(2, 3.0, 0.95, size_bytes=200, sweep_id=1),
    ]
    assert front_ids(rows) == {("m", 1): [2], ("m", 8): [1]}
    fronts = pareto_front(rows, "size_bytes", "accuracy")
    assert {k: [r["job_id"] for r in f] for k, f in fronts.items()} == {("m",): [1, 2]}


def test_pareto_front_on_the_view(view: dict[int, list[dict[str, Any]]], seeded: tuple[str, dict[str, int]]) -> None:
    ids = seeded[1]
    fronts = pareto_front(view[1], "latency_p50_ms", "accuracy")
    assert fronts_by_key(fronts, ids) == {
        ("m1", 1): ["D", "B", "A", "ref1"],  # C, Pa dominated; E simulated; F failed
        ("m1", 8): ["A", "ref1"],  # C dominated
        ("m2", 1): ["G", "H", "ref2"],
    }
    by_size = pareto_front(view[1], "size_bytes", "accuracy")
    assert fronts_by_key(by_size, ids) == {("m1",): ["D", "A", "ref1"], ("m2",): ["G", "H", "ref2"]}


# -------------------------------------------------------------------------------------------------- pure: best


def acc_row(job_id: int, drop: float | None, latency: float | None, **extra: Any) -> dict[str, Any]:
    return row(job_id, latency, None if drop is None else 0.98 - drop, accuracy_drop=drop) | extra


def test_best_configs_picks_the_fastest_within_the_budget() -> None:
    rows = [
        acc_row(1, 0.0, 10.0),
        acc_row(2, 0.005, 4.0),
        acc_row(3, 0.02, 1.0),  # faster, but outside the budget
        acc_row(4, 0.009, 5.0),
    ]
    (choice,) = best_configs(rows, max_accuracy_drop=0.01)
    assert choice.group == ("m", 1)
    assert choice.best is not None and choice.best["job_id"] == 2
    assert choice.candidates == 3 and choice.closest_miss is None and choice.notes == []


def test_best_configs_budget_is_inclusive_despite_float_rounding() -> None:
    # 0.98 - 0.97 is 0.010000000000000009 in floating point: still "within 1 point".
    rows = [acc_row(1, 0.0, 10.0), acc_row(2, 0.98 - 0.97, 3.0)]
    (choice,) = best_configs(rows, max_accuracy_drop=0.01)
    assert choice.best is not None and choice.best["job_id"] == 2


def test_best_configs_by_size_is_per_model_and_breaks_ties_by_accuracy_drop() -> None:
    rows = [
        acc_row(1, 0.0, 10.0, size_bytes=4000),
        acc_row(2, 0.008, 9.0, size_bytes=1000),
        acc_row(3, 0.002, 3.0, size_bytes=1000),  # as small as 2, and closer to fp32
        acc_row(3, 0.002, 30.0, size_bytes=1000, batch_size=8),  # the same job: considered once
        acc_row(4, 0.001, 2.0, size_bytes=3000, model="other"),
    ]
    choices = best_configs(rows, max_accuracy_drop=0.01, by="size_bytes")
    assert [(c.group, c.best and c.best["job_id"], c.candidates) for c in choices] == [
        (("m",), 3, 3),
        (("other",), 4, 1),
    ]
    # By latency: per batch size.
    by_latency = best_configs(rows, max_accuracy_drop=0.01)
    assert [(c.group, c.best and c.best["job_id"]) for c in by_latency] == [
        (("m", 1), 3),
        (("m", 8), 3),
        (("other", 1), 4),
    ]


def test_best_configs_maximises_throughput() -> None:
    rows = [acc_row(1, 0.0, 10.0, throughput=100.0), acc_row(2, 0.005, 4.0, throughput=250.0)]
    (choice,) = best_configs(rows, max_accuracy_drop=0.01, by="throughput")
    assert choice.best is not None and choice.best["job_id"] == 2


def test_best_configs_reports_the_closest_miss_when_none_qualifies() -> None:
    rows = [
        acc_row(1, 0.05, 3.0),
        acc_row(2, 0.03, 6.0),  # the smallest drop
        acc_row(3, 0.001, 1.0, simulated=True),  # can't qualify on latency
        acc_row(4, 0.0, 2.0, state="failed"),
        acc_row(5, None, 1.0),  # no accuracy drop
    ]
    (choice,) = best_configs(rows, max_accuracy_drop=0.01)
    assert choice.best is None and choice.candidates == 0
    assert choice.closest_miss is not None and choice.closest_miss["job_id"] == 2
    assert choice.notes == ["1 row(s) without latency_p50_ms or simulated not considered"]


def test_best_configs_with_nothing_measured_has_no_best_and_no_miss() -> None:
    (choice,) = best_configs([acc_row(1, None, 3.0), acc_row(2, 0.0, None)], max_accuracy_drop=0.01)
    assert choice.best is None and choice.closest_miss is None
    assert choice.notes == ["1 row(s) without latency_p50_ms or simulated not considered"]


def test_best_configs_on_the_view(view: dict[int, list[dict[str, Any]]], seeded: tuple[str, dict[str, int]]) -> None:
    names = keys_of(seeded[1])
    choices = best_configs(view[1], max_accuracy_drop=0.01)
    assert [(c.group, names[c.best["job_id"]] if c.best else None, c.candidates) for c in choices] == [
        (("m1", 1), "B", 3),  # ref1, A, B within 0.01; E (simulated) is faster but left out
        (("m1", 8), "A", 2),
        (("m2", 1), "ref2", 1),
    ]
    quantized = [r for r in view[1] if r["method"] != "fp32"]
    m2 = best_configs(quantized, max_accuracy_drop=0.01)[-1]
    assert m2.group == ("m2", 1) and m2.best is None
    assert m2.closest_miss is not None and names[m2.closest_miss["job_id"]] == "H"


# ----------------------------------------------------------------------------------------------- pure: compare


def recipe_row(job_id: int, **extra: Any) -> dict[str, Any]:
    base = dict(
        job_id=job_id, model="m", dataset="d", method="static", bits=8, calibration_size=128, backend="x86",
        observer="minmax", granularity="per_channel", batch_size=1, accuracy=0.9, latency_p50_ms=4.0,
        size_bytes=1000,
    )  # fmt: skip
    return base | extra


def test_compare_matches_by_recipe_and_batch_size_and_pairs_the_rest_with_none() -> None:
    a = [
        recipe_row(1),
        recipe_row(1, batch_size=8, latency_p50_ms=20.0),
        recipe_row(2, observer="histogram"),
        recipe_row(3, bits=4),  # only in a
    ]
    b = [
        recipe_row(11, accuracy=0.88, latency_p50_ms=8.0, size_bytes=900),
        recipe_row(12, observer="histogram", latency_p50_ms=2.0),
        recipe_row(13, batch_size=8, observer="histogram"),  # only in b (a has histogram at batch 1 only)
    ]
    pairs = compare(a, b)
    got = {(p.recipe["observer"], p.recipe["bits"], p.recipe["batch_size"]): p for p in pairs}
    assert {k: (p.a and p.a["job_id"], p.b and p.b["job_id"]) for k, p in got.items()} == {
        ("minmax", 8, 1): (1, 11),
        ("minmax", 8, 8): (1, None),
        ("histogram", 8, 1): (2, 12),
        ("minmax", 4, 1): (3, None),
        ("histogram", 8, 8): (None, 13),
    }
    same = got[("minmax", 8, 1)]
    assert same.delta("accuracy") == pytest.approx(-0.02)
    assert same.delta("size_bytes") == -100
    assert same.ratio("latency_p50_ms") == pytest.approx(2.0)
    assert got[("histogram", 8, 1)].ratio("latency_p50_ms") == pytest.approx(0.5)
    lonely = got[("minmax", 4, 1)]
    assert lonely.delta("accuracy") is None and lonely.ratio("latency_p50_ms") is None


def test_compare_tells_method_configs_apart() -> None:
    a, b = [recipe_row(1, observer="percentile")], [recipe_row(2, observer="percentile")]
    configs = {1: '{"percentile":99.99}', 2: '{"percentile":99.9}'}
    pairs = compare(a, b, configs)
    assert sorted((p.a["job_id"] if p.a else 0, p.b["job_id"] if p.b else 0) for p in pairs) == [(0, 2), (1, 0)]
    assert sorted(p.recipe["config"]["percentile"] for p in pairs) == [99.9, 99.99]
    # The same config: one pair.
    (pair,) = compare(a, b, {1: '{"percentile":99.9}', 2: '{"percentile":99.9}'})
    assert pair.a is a[0] and pair.b is b[0] and pair.recipe["config"] == {"percentile": 99.9}
    assert recipe_key(a[0], configs) != recipe_key(b[0], configs)


def test_pair_delta_and_ratio_handle_missing_and_zero_figures() -> None:
    pair = Pair({}, {"latency_p50_ms": 0.0, "accuracy": None}, {"latency_p50_ms": 3.0, "accuracy": 0.9})
    assert pair.ratio("latency_p50_ms") is None  # no ratio to a zero
    assert pair.delta("latency_p50_ms") == 3.0
    assert pair.delta("accuracy") is None


def test_compare_on_the_view(
    view: dict[int, list[dict[str, Any]]], seeded: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    names = keys_of(seeded[1])
    db = Database(seeded[0])
    configs = method_configs(db, [r["job_id"] for r in view[1] + view[2]])
    db.dispose()
    pairs = compare(view[1], view[2], configs)
    got = sorted(
        (names[p.a["job_id"]] if p.a else "-", names[p.b["job_id"]] if p.b else "-", p.recipe["batch_size"])
        for p in pairs
    )
    assert got == sorted(
        [
            ("ref1", "ref_b", 1),
            ("A", "A_b", 1),
            ("B", "B_b", 1),
            ("G", "G", 1),
            ("-", "Pb", 1),
            ("Pa", "-", 1),
            ("ref1", "-", 8),
            ("A", "-", 8),
            ("C", "-", 1),
            ("C", "-", 8),
            ("D", "-", 1),
            ("E", "-", 1),
            ("F", "-", None),
            ("ref2", "-", 1),
            ("H", "-", 1),
        ]
    )


# --------------------------------------------------------------------------------------------------- CLI: pareto


def test_cli_pareto_default_directions(env: dict[str, int]) -> None:
    records = ok_json("pareto", "--sweep", "1")
    assert cli_fronts(records, env) == {
        ("m1", 1): ["D", "B", "A", "ref1"],
        ("m1", 8): ["A", "ref1"],
        ("m2", 1): ["G", "H", "ref2"],
    }
    b = next(r for r in records if r["job_id"] == env["B"])
    assert b == {
        "model": "m1",
        "batch_size": 1,
        "job_id": env["B"],
        "config": "static int8 histogram per_channel n=128",
        "latency_p50_ms": 3.0,
        "accuracy": 0.97,
        "ties": [],
        "artifact_uri": "file:///a/B.pt",
    }


@pytest.mark.parametrize(
    ("directions", "expected"),
    [
        (["--x-direction", "max", "--y-direction", "min"], {("m1", 1): ["ref1", "C", "D"], ("m1", 8): ["ref1", "C"],
                                                            ("m2", 1): ["ref2", "H", "G"]}),
        (["--y-direction", "min"], {("m1", 1): ["D"], ("m1", 8): ["A", "C"], ("m2", 1): ["G"]}),
        (["--x-direction", "max"], {("m1", 1): ["ref1"], ("m1", 8): ["ref1"], ("m2", 1): ["ref2"]}),
    ],
)  # fmt: skip
def test_cli_pareto_directions_change_the_front(
    env: dict[str, int], directions: list[str], expected: dict[Any, list[str]]
) -> None:
    assert cli_fronts(ok_json("pareto", "--sweep", "1", *directions), env) == expected


def test_cli_pareto_where_narrows_the_candidates(env: dict[str, int]) -> None:
    # Without fp32 and the others, B and A form m1's front; C is still dominated by A; D (int4) is gone.
    assert cli_fronts(ok_json("pareto", "--sweep", "1", "--where", "bits = 8"), env) == {
        ("m1", 1): ["B", "A"],
        ("m1", 8): ["A"],
        ("m2", 1): ["G", "H"],
    }
    assert cli_fronts(ok_json("pareto", "--sweep", "1", "--where", "model = 'm2'"), env) == {
        ("m2", 1): ["G", "H", "ref2"]
    }


def test_cli_pareto_other_figures_are_per_model(env: dict[str, int]) -> None:
    records = ok_json("pareto", "--sweep", "1", "--x", "size_bytes", "--y", "accuracy")
    assert cli_fronts(records, env, per_batch=False) == {"m1": ["D", "A", "ref1"], "m2": ["G", "H", "ref2"]}
    assert list(records[0]) == [
        "model", "batch_size", "job_id", "config", "size_bytes", "accuracy", "ties", "artifact_uri"
    ]  # fmt: skip
    # Column names are case-insensitive.
    assert ok_json("pareto", "--sweep", "1", "--x", "SIZE_BYTES", "--y", "Accuracy") == records


def test_cli_pareto_table(env: dict[str, int]) -> None:
    out = ok_text("pareto", "--sweep", "1", "--where", "model = 'm1' AND batch_size = 1")
    assert "Pareto front: m1, batch 1 (latency_p50_ms min, accuracy max)" in out
    assert "m2" not in out and "batch 8" not in out
    body = [line for line in out.splitlines() if "│" in line]
    assert [line.split("│")[0].strip() for line in body] == [str(env[k]) for k in ("D", "B", "A", "ref1")]
    assert "file:///a/B.pt" in out and "file:///a/C.pt" not in out


def test_cli_pareto_with_nothing_to_show_says_so(env: dict[str, int]) -> None:
    out = ok_text("pareto", "--sweep", "1", "--where", "state = 'failed'")
    assert out.strip() == "no succeeded job has both latency_p50_ms and accuracy"


# ----------------------------------------------------------------------------------------------------- CLI: best


def test_cli_best_by_latency_is_the_fastest_within_the_budget(env: dict[str, int]) -> None:
    records = ok_json("best", "--sweep", "1", "--max-accuracy-drop", "0.01")
    names = keys_of(env)
    assert [(r["model"], r["batch_size"], r["found"], names[r["job_id"]], r["artifact_uri"]) for r in records] == [
        ("m1", 1, True, "B", "file:///a/B.pt"),  # drop 0.98 - 0.97: within 0.01
        ("m1", 8, True, "A", "file:///a/A.pt"),
        ("m2", 1, True, "ref2", "file:///a/ref2.pt"),
    ]
    assert records[0]["latency_p50_ms"] == 3.0 and records[0]["accuracy_drop"] == pytest.approx(0.01)
    assert records[0]["config"] == "static int8 histogram per_channel n=128"


def test_cli_best_a_tighter_budget_picks_another_config(env: dict[str, int]) -> None:
    records = ok_json("best", "--sweep", "1", "--max-accuracy-drop", "0.005", "--where", "batch_size = 1")
    names = keys_of(env)
    assert [(r["model"], names[r["job_id"]]) for r in records] == [("m1", "A"), ("m2", "ref2")]


def test_cli_best_by_size(env: dict[str, int]) -> None:
    records = ok_json("best", "--sweep", "1", "--max-accuracy-drop", "0.01", "--by", "size_bytes")
    names = keys_of(env)
    # A and B are both 1000 bytes: A is closer to fp32.
    assert [(r["model"], r["batch_size"], names[r["job_id"]], r["size_bytes"], r["artifact_uri"]) for r in records] == [
        ("m1", None, "A", 1000, "file:///a/A.pt"),
        ("m2", None, "ref2", 2000, "file:///a/ref2.pt"),
    ]


def test_cli_best_table_names_the_config_and_its_artifact(env: dict[str, int]) -> None:
    out = ok_text("best", "--sweep", "1", "--max-accuracy-drop", "0.01", "--where", "model = 'm1' AND batch_size = 1")
    lines = out.splitlines()
    assert lines[0] == (
        f"m1, batch 1: static int8 histogram per_channel n=128 (job {env['B']}): latency_p50_ms 3, accuracy 0.97 "
        "(drop +0.0100), lowest latency_p50_ms of 3 within 0.01"
    )
    assert lines[1] == "  artifact: file:///a/B.pt"
    assert lines[2] == "  note: 1 row(s) without latency_p50_ms or simulated not considered"
    assert len(lines) == 3


def test_cli_best_where_none_qualifies_says_so_and_names_the_closest_miss(env: dict[str, int]) -> None:
    out = ok_text("best", "--sweep", "1", "--max-accuracy-drop", "0.01", "--where", "method != 'fp32'")
    m2 = [line for line in out.splitlines() if line.startswith("m2")]
    assert m2 == [
        f"m2, batch 1: no configuration is within an accuracy drop of 0.01; closest: dynamic int8 (job {env['H']}) "
        "with a drop of 0.0300, latency_p50_ms 6"
    ]
    assert f"(job {env['B']})" in out  # m1 still has one
    records = ok_json("best", "--sweep", "1", "--max-accuracy-drop", "0.01", "--where", "method != 'fp32'")
    miss = records[-1]
    assert miss["model"] == "m2" and miss["found"] is False and miss["job_id"] == env["H"]
    assert miss["accuracy_drop"] == pytest.approx(0.03)


def test_cli_best_with_no_measured_job(env: dict[str, int]) -> None:
    out = ok_text("best", "--sweep", "1", "--max-accuracy-drop", "0.01", "--by", "throughput")
    assert out.splitlines()[0] == "m1, batch 1: no job has both an accuracy drop and throughput"
    out = ok_text("best", "--sweep", "1", "--max-accuracy-drop", "0.01", "--where", "state = 'failed'")
    assert out.strip() == "no succeeded jobs match"


# -------------------------------------------------------------------------------------------------- CLI: compare


def test_cli_compare_matches_jobs_side_by_side_with_deltas(env: dict[str, int]) -> None:
    records = ok_json("compare", "1", "2", "--where", "batch_size = 1")
    assert sorted((r["model"], r["config"], r["in"]) for r in records) == sorted(
        [
            ("m1", "fp32", "both"),
            ("m1", "static int8 minmax per_channel n=128", "both"),
            ("m1", "static int8 histogram per_channel n=128", "both"),
            ("m2", "static int8 minmax per_channel n=128", "both"),  # G: one job in both sweeps
            ("m1", "static int8 percentile per_channel n=128", "a only"),  # Pa: another percentile than Pb
            ("m1", "static int8 percentile per_channel n=128", "b only"),
            ("m1", "dynamic int8", "a only"),
            ("m1", "static int4 minmax per_tensor n=128", "a only"),
            ("m1", "fake int4 (sim)", "a only"),
            ("m2", "fp32", "a only"),
            ("m2", "dynamic int8", "a only"),
        ]
    )
    a = next(r for r in records if r["model"] == "m1" and r["observer"] == "minmax" and r["bits"] == 8)
    assert a["accuracy_a"] == 0.975 and a["accuracy_b"] == 0.974
    assert a["accuracy_delta"] == pytest.approx(-0.001)
    assert (a["latency_p50_ms_a"], a["latency_p50_ms_b"], a["latency_ratio_b_over_a"]) == (4.0, 8.0, 2.0)
    assert a["speedup_a"] == pytest.approx(2.5) and a["speedup_b"] == pytest.approx(2.5)
    assert a["size_bytes_delta"] == 0
    assert (a["hardware_a"], a["hardware_b"]) == ("Xeon h1", "Xeon h3")
    g = next(r for r in records if r["model"] == "m2" and r["in"] == "both")
    assert g["accuracy_delta"] == 0 and g["latency_ratio_b_over_a"] == 1.0
    pb = next(r for r in records if r["in"] == "b only")
    assert pb["accuracy_a"] is None and pb["accuracy_b"] == 0.968 and pb["accuracy_delta"] is None
    assert pb["latency_ratio_b_over_a"] is None


def test_cli_compare_table(env: dict[str, int]) -> None:
    out = ok_text("compare", "1", "2")
    lines = out.splitlines()
    assert lines[0] == "sweep 1 vs sweep 2: 4 matching rows, 11 in one sweep only"
    assert "  hardware: a = Xeon h1; b = Xeon h3" in lines
    assert "  hardware: a = Xeon h1; b = Xeon h1" in lines  # G: the same job in both
    body = [[c.strip() for c in line.split("│")] for line in lines if "│" in line]
    ins = [cells[-1] for cells in body]
    assert ins.count("both") == 4 and ins.count("a only") == 10 and ins.count("b only") == 1
    ref = next(cells for cells in body if cells[1] == "fp32" and cells[0] == "m1" and cells[2] == "1")
    assert ref[3:9] == ["0.98", "0.98", "+0.0000", "10", "20", "2.00x"]
    pb = next(cells for cells in body if cells[-1] == "b only")
    assert pb[3] == "-" and pb[4] == "0.968" and pb[5] == "-" and pb[8] == "-"


def test_cli_compare_a_sweep_with_itself_matches_every_row(env: dict[str, int]) -> None:
    records = ok_json("compare", "2", "2")
    assert len(records) == 5 and {r["in"] for r in records} == {"both"}
    assert {r["accuracy_delta"] for r in records} == {0.0}


# ------------------------------------------------------------------------------------------------ CLI: bad input


def run_bad(*args: str) -> str:
    result = farm(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    message = result.stderr.strip()
    assert "\n" not in message, message
    assert "Traceback" not in message
    return message


BAD_COLUMNS: list[tuple[list[str], str]] = [
    (["pareto", "--sweep", "1", "--x", "latncy_p50_ms"],
     "--x: unknown column 'latncy_p50_ms'; did you mean 'latency_p50_ms'?"),
    (["pareto", "--sweep", "1", "--y", "acuracy"], "--y: unknown column 'acuracy'; did you mean 'accuracy'?"),
    (["pareto", "--sweep", "1", "--x", "model"], "--x: model is not a numeric column"),
    (["pareto", "--sweep", "1", "--y", "simulated"], "--y: simulated is not a numeric column"),
    (["pareto", "--sweep", "1", "--x-direction", "up"], "Invalid value for '--x-direction'"),
    (["pareto", "--sweep", "1", "--where", "acuracy > 0.9"], "--where: unknown column 'acuracy'"),
    (["best", "--sweep", "1", "--max-accuracy-drop", "0.01", "--by", "sise_bytes"],
     "--by: unknown column 'sise_bytes'; did you mean 'size_bytes'?"),
    (["best", "--sweep", "1", "--max-accuracy-drop", "0.01", "--by", "method"], "--by: method is not a numeric column"),
    (["best", "--sweep", "1", "--max-accuracy-drop", "1.5"],
     "--max-accuracy-drop: a fraction of accuracy from 0 up to, not including, 1 (0.01 is 1 point), got 1.5: 1.5 is "
     "a drop of 150 points, which every configuration passes; for 1.5 point(s) write 0.015"),
    (["best", "--sweep", "1", "--max-accuracy-drop", "-0.1"],
     "--max-accuracy-drop: a fraction of accuracy from 0 up to, not including, 1 (0.01 is 1 point), got -0.1"),
    (["best", "--sweep", "1"], "Missing option '--max-accuracy-drop'"),
    (["compare", "1", "x"], "Invalid value for 'SWEEP_B'"),
    (["compare", "1", "2", "--where", "(bits = 8"], "--where: unbalanced parentheses"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD_COLUMNS)
def test_bad_input_is_one_line_exit_2_and_opens_no_database(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_file = tmp_path / "never" / "farm.db"
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FARM_DATABASE_URL", f"sqlite:///{db_file}")
    assert message in run_bad(*args)
    assert not db_file.parent.exists()  # the input alone was bad: no database was opened (or created)


@pytest.mark.parametrize(
    "args",
    [
        ["pareto", "--sweep", "99"],
        ["pareto", "--sweep", "1", "--sweep", "99"],
        ["best", "--sweep", "99", "--max-accuracy-drop", "0.01"],
        ["compare", "99", "1"],
        ["compare", "1", "99"],
    ],
)
def test_unknown_sweep_is_one_line_exit_2(env: dict[str, int], args: list[str]) -> None:
    assert run_bad(*args).endswith("no sweep with id 99")
