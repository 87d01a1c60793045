"""``farm results best --metric`` / ``pareto --y`` / ``compare`` on label-free metrics (cosine, sqnr_db, agreement and
the sweep's own metric function), on hand-made rows and on an SQLite database seeded through the real schema.

The seeded sweep is an embedding model ``enc`` (no accuracy: cosine, SQNR and a metric function only):
  ref (fp32, identical outputs: no SQNR stored), dyn (cosine 0.995, 4 ms), pc (0.999, 5 ms), st (0.97, 2 ms),
  bad (collapsed health, cosine 0.999 at 1 ms: never competes). Sweep 2 holds dyn again with another metric function.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from farm.analysis import best_configs, pareto_front
from farm.cli import cli
from farm.errors import ConfigError
from farm.metric_targets import make_target
from farm.store.db import Database
from farm.store.migrate import upgrade
from farm.store.models import Job, Metric, Sweep, SweepJob

NOW = datetime(2027, 4, 1, tzinfo=timezone.utc)
FN = "entrypoint:my_metrics.retrieval:recall_at_1"


def row(job_id: int, p50: float | None, **figures: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        job_id=job_id, model="enc", batch_size=1, state="succeeded", health="ok", simulated=False, method="dynamic",
        latency_p50_ms=p50, accuracy=None, accuracy_drop=None,
    )  # fmt: skip
    return base | figures


# ------------------------------------------------------------------------------------------------------- pure


def test_best_by_cosine_is_the_fastest_row_at_or_above_the_floor() -> None:
    rows = [
        row(1, 4.0, cosine=0.995),
        row(2, 2.0, cosine=0.97),  # fastest, below the floor
        row(3, 1.0, cosine=0.999, health="collapsed"),  # never competes
        row(4, 3.0, cosine=None),  # not measured: left out, with a note
    ]
    (choice,) = best_configs(rows, target=make_target("cosine", 0.99))
    assert choice.best is not None and choice.best["job_id"] == 1 and choice.candidates == 1
    assert choice.notes == ["1 row(s) without cosine not considered"]
    (miss,) = best_configs(rows, target=make_target("cosine", 0.999))
    assert miss.best is None and miss.closest_miss is not None and miss.closest_miss["job_id"] == 1


def test_a_row_identical_to_fp32_meets_any_sqnr_floor() -> None:
    rows = [row(1, 10.0, method="fp32", cosine=1.0, sqnr_db=None), row(2, 4.0, cosine=0.99, sqnr_db=28.0)]
    (choice,) = best_configs(rows, target=make_target("sqnr_db", 30.0))
    assert choice.best is not None and choice.best["job_id"] == 1  # infinite SQNR; row 2 misses by 2 dB
    (easy,) = best_configs(rows, target=make_target("sqnr_db", 20.0))
    assert easy.best is not None and easy.best["job_id"] == 2


def test_ties_on_latency_go_to_the_simpler_recipe_whatever_the_metric() -> None:
    qat = row(1, 2.0, method="qat", agreement=0.99, latency_p50_ci_low_ms=1.9, latency_p50_ci_high_ms=2.2)
    static = row(2, 2.1, method="static", calibration_size=64, agreement=0.98, latency_p50_ci_low_ms=2.0,
                 latency_p50_ci_high_ms=2.3)  # fmt: skip
    (choice,) = best_configs([qat, static], target=make_target("agreement", 0.95))
    assert choice.best is not None and choice.best["job_id"] == 2 and [r["job_id"] for r in choice.tied] == [1]


def test_the_metric_function_ranks_only_rows_of_one_function() -> None:
    rows = [row(1, 4.0, metric_name=FN, metric_value=0.8), row(2, 2.0, metric_name=FN, metric_value=0.6)]
    (choice,) = best_configs(rows, target=make_target("metric", 0.7))
    assert choice.best is not None and choice.best["job_id"] == 1
    other = row(3, 1.0, metric_name="entrypoint:other.mod:score", metric_value=0.9)
    with pytest.raises(ConfigError, match="2 metric functions"):
        best_configs([*rows, other], target=make_target("metric", 0.7))
    with pytest.raises(ConfigError, match="2 metric functions"):
        pareto_front([*rows, other], "latency_p50_ms", "metric_value")


def test_the_accuracy_budget_still_works_both_ways() -> None:
    rows = [row(1, 3.0, accuracy=0.97, accuracy_drop=0.01), row(2, 1.0, accuracy=0.9, accuracy_drop=0.08)]
    old = best_configs(rows, max_accuracy_drop=0.01)
    new = best_configs(rows, target=make_target(max_accuracy_drop=0.01))
    assert [c.best["job_id"] for c in old if c.best] == [c.best["job_id"] for c in new if c.best] == [1]
    with pytest.raises(ConfigError):
        best_configs(rows)


# -------------------------------------------------------------------------------------------------------- CLI

JOBS: list[dict[str, Any]] = [
    dict(key="ref", sweeps=(1,), method="fp32", p50=10.0, cosine=1.0, sqnr_db=None, metric_value=0.9),
    dict(key="dyn", sweeps=(1, 2), method="dynamic", p50=4.0, cosine=0.995, sqnr_db=31.0, metric_value=0.88),
    dict(key="pc", sweeps=(1,), method="dynamic", granularity="per_channel", p50=5.0, cosine=0.999, sqnr_db=38.0,
         metric_value=0.89),
    dict(key="st", sweeps=(1,), method="static", calibration_size=64, p50=2.0, cosine=0.97, sqnr_db=18.0,
         metric_value=0.7),
    dict(key="bad", sweeps=(1,), method="static", calibration_size=8, p50=1.0, cosine=0.999, sqnr_db=40.0,
         metric_value=0.95, health="collapsed"),
]  # fmt: skip


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, int]]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('best_metric') / 'farm.db'}"
    db = Database(url)
    upgrade(db)
    ids: dict[str, int] = {}
    with db.session() as s:
        s.add_all([Sweep(id=i, name=f"s{i}", spec_text="{}", spec_hash=str(i) * 64, created_at=NOW,
                         state="succeeded") for i in (1, 2)])  # fmt: skip
        s.flush()
        for spec in JOBS:
            job = Job(key=(spec["key"] + "-" * 64)[:64], model="enc", dataset="tokens:32", method=spec["method"],
                      granularity=spec.get("granularity"), calibration_size=spec.get("calibration_size"),
                      device="cpu", spec={"method": {"method": spec["method"]}}, state="succeeded",
                      created_at=NOW, hardware="Xeon")  # fmt: skip
            s.add(job)
            s.flush()
            ids[spec["key"]] = job.id
            s.add(Metric(job_id=job.id, batch_size=1, latency_p50_ms=spec["p50"], cosine=spec["cosine"],
                         sqnr_db=spec["sqnr_db"], metric_name=FN, metric_value=spec["metric_value"],
                         health=spec.get("health", "ok"), hardware_id="h1", extra={}))  # fmt: skip
            s.add_all([SweepJob(sweep_id=i, job_id=job.id) for i in spec["sweeps"]])
        # Sweep 2's own job, measured with another metric function.
        other = Job(key="o" * 64, model="enc", dataset="tokens:32", method="static", device="cpu",
                    spec={"method": {"method": "static"}}, state="succeeded", created_at=NOW,
                    hardware="Xeon")  # fmt: skip
        s.add(other)
        s.flush()
        ids["other"] = other.id
        s.add(Metric(job_id=other.id, batch_size=1, latency_p50_ms=3.0, cosine=0.99, metric_name="entrypoint:x.y:z",
                     metric_value=0.5, health="ok", hardware_id="h1", extra={}))  # fmt: skip
        s.add(SweepJob(sweep_id=2, job_id=other.id))
    db.dispose()
    yield url, ids


@pytest.fixture
def env(seeded: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, int]:
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FARM_DATABASE_URL", seeded[0])
    return seeded[1]


def farm(*args: str) -> Result:
    return CliRunner().invoke(cli, ["results", *args])


def ok_json(*args: str) -> Any:
    result = farm(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cli_best_by_cosine(env: dict[str, int]) -> None:
    (record,) = ok_json("best", "--sweep", "1", "--metric", "cosine", "--min-metric", "0.99")
    assert record["job_id"] == env["dyn"] and record["found"] is True  # st is faster but 0.97; bad is collapsed
    assert record["cosine"] == 0.995 and record["accuracy"] is None
    (tight,) = ok_json("best", "--sweep", "1", "--metric", "cosine", "--min-metric", "0.998")
    assert tight["job_id"] == env["pc"]
    out = farm("best", "--sweep", "1", "--metric", "cosine", "--min-metric", "0.99").stdout
    assert f"(job {env['dyn']}): latency_p50_ms 4, cosine 0.995, lowest latency_p50_ms of 3 with cosine >= 0.99" in out
    assert "1 job(s) left out" in out  # the collapsed one


def test_cli_best_by_sqnr_counts_an_identical_output_as_infinite(env: dict[str, int]) -> None:
    (record,) = ok_json("best", "--sweep", "1", "--metric", "sqnr_db", "--min-metric", "39")
    assert record["job_id"] == env["ref"]  # no SQNR stored: identical to fp32
    out = farm("best", "--sweep", "1", "--metric", "sqnr_db", "--min-metric", "39").stdout
    assert "sqnr_db inf (identical to fp32)" in out


def test_cli_best_by_the_metric_function(env: dict[str, int]) -> None:
    (record,) = ok_json("best", "--sweep", "1", "--metric", "metric", "--min-metric", "0.85")
    assert record["job_id"] == env["dyn"] and record["metric_value"] == 0.88 and record["metric_name"] == FN
    (miss,) = ok_json("best", "--sweep", "1", "--metric", "metric", "--min-metric", "0.95")
    assert miss["found"] is False and miss["job_id"] == env["ref"]  # the closest: 0.9 (bad's 0.95 is collapsed)
    text = farm("best", "--sweep", "1", "--metric", "metric", "--min-metric", "0.95").stdout
    assert "no configuration reaches metric >= 0.95; closest:" in text
    mixed = farm("best", "--sweep", "2", "--metric", "metric", "--min-metric", "0.1")
    assert mixed.exit_code == 2 and "2 metric functions" in mixed.stderr


def test_cli_best_on_rows_without_accuracy_finds_none_by_accuracy(env: dict[str, int]) -> None:
    (record,) = ok_json("best", "--sweep", "1", "--max-accuracy-drop", "0.01")
    assert record["found"] is False and record["job_id"] is None


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--metric", "cosine", "--max-accuracy-drop", "0.01"], "budget on accuracy, not cosine"),
        (["--metric", "cosine"], "Missing option '--min-metric'"),
        (["--metric", "cosine", "--min-metric", "1.5"], "cosine ranges from -1 to 1"),
        (["--metric", "bleu", "--min-metric", "1"], "unknown metric 'bleu'"),
    ],
)
def test_cli_best_bad_targets_are_one_line_and_open_no_database(
    args: list[str], words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_file = tmp_path / "never" / "farm.db"
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FARM_DATABASE_URL", f"sqlite:///{db_file}")
    result = farm("best", "--sweep", "1", *args)
    assert result.exit_code == 2 and result.stdout == ""
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not db_file.parent.exists()


def test_cli_pareto_takes_label_free_metrics_as_its_y(env: dict[str, int]) -> None:
    front = ok_json("pareto", "--sweep", "1", "--y", "cosine")
    assert [r["job_id"] for r in front] == [env["st"], env["dyn"], env["pc"], env["ref"]]
    own = ok_json("pareto", "--sweep", "1", "--y", "metric")
    assert [r["job_id"] for r in own] == [env["st"], env["dyn"], env["pc"], env["ref"]]
    assert own[0]["metric_value"] == 0.7
    sqnr = ok_json("pareto", "--sweep", "1", "--y", "sqnr_db")  # ref has no SQNR stored: not on this plane
    assert [r["job_id"] for r in sqnr] == [env["st"], env["dyn"], env["pc"]]


def test_cli_compare_shows_cosine_and_the_metric_where_rows_have_them(env: dict[str, int]) -> None:
    records = ok_json("compare", "1", "2")
    dyn = next(r for r in records if r["in"] == "both")
    assert (dyn["cosine_a"], dyn["cosine_b"], dyn["sqnr_db_a"], dyn["metric_value_b"]) == (0.995, 0.995, 31.0, 0.88)
    table = farm("compare", "1", "2").stdout
    header = next(line for line in table.splitlines() if "config" in line)
    assert "cos a" in header and "sqnr b" in header and "metric a" in header
