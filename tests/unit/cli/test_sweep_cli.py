"""``farm sweep plan / run / list / status`` and ``farm results query`` through click.

Every bad spec is exit status 2 with each of its problems listed, no traceback, and (for ``run``) no sweep
written. The inspection commands read a database seeded here through farm.store (no model runs);
tests/unit/test_local_runner.py runs real sweeps.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import text

from farm.artifacts import StoredObject
from farm.spec.load import load_spec
from farm.store import lifecycle, plans, sweeps
from farm.store.columns import RESULT_COLUMNS
from farm.store.db import Database
from farm.store.migrate import ensure_schema
from tests.job_rows import queue_as_sent
from tests.sweeps import TOY_DATA, TOY_MLP, describe, farm, query, sweep_count, write_spec
from tests.unit.test_spec import BAD_SPECS, MANY_EXPECTED, MANY_PROBLEMS, README_SPEC


def assert_spec_refused(result: Result, spec: Path, problems: list[tuple[str, str]]) -> None:
    """Exit status 2, every problem on stderr (one per line when several), nothing on stdout, no traceback."""
    assert result.exit_code == 2, describe(result)
    assert isinstance(result.exception, SystemExit)  # not an unexpected exception caught by the runner
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"Error: {spec}: ")
    if len(problems) == 1:
        assert len(lines) == 1, result.stderr
        path, fragment = problems[0]
        assert lines[0].startswith(f"Error: {spec}: {path + ': ' if path else ''}")
        assert fragment in lines[0]
    else:
        assert lines[0] == f"Error: {spec}: {len(problems)} problems:"
        assert len(lines) == 1 + len(problems), result.stderr
        for line, (path, fragment) in zip(lines[1:], problems, strict=True):
            assert line.startswith(f"  {path}: ") and fragment in line, line


@pytest.mark.parametrize("command", ["plan", "run"])
@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_a_bad_spec_is_exit_2_listing_its_problems_and_writes_nothing(
    sweep_home: Path, tmp_path: Path, command: str, case: str
) -> None:
    text, name, problems = BAD_SPECS[case]
    spec = write_spec(tmp_path / "specs", text, name)
    result = farm("sweep", command, str(spec))
    assert_spec_refused(result, spec, problems)
    assert sweep_count(sweep_home) == (0, 0)


@pytest.mark.parametrize("command", ["plan", "run"])
def test_every_problem_is_listed_at_once(sweep_home: Path, tmp_path: Path, command: str) -> None:
    spec = write_spec(tmp_path, MANY_PROBLEMS, "digits.yaml")
    result = farm("sweep", command, str(spec))
    assert_spec_refused(result, spec, [(p.path, p.message) for p in MANY_EXPECTED])
    assert sweep_count(sweep_home) == (0, 0)


def test_a_bad_spec_leaves_an_existing_database_as_it_was(sweep_home: Path, tmp_path: Path) -> None:
    good = load_spec(f"name: kept\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\nmethods: [fp32, dynamic]\n")
    db = Database()
    ensure_schema(db)
    with db.session() as s:
        plans.create_sweep(s, good, "someone")
    db.dispose()
    before = query("SELECT * FROM jobs ORDER BY id")
    for spec_text, name, _ in BAD_SPECS.values():
        spec = write_spec(tmp_path / "specs", spec_text, name)
        assert farm("sweep", "run", str(spec)).exit_code == 2
    assert sweep_count(sweep_home) == (1, 2)
    assert query("SELECT * FROM jobs ORDER BY id") == before


def test_a_missing_spec_file_is_one_line(sweep_home: Path, tmp_path: Path) -> None:
    for command in ("plan", "run"):
        result = farm("sweep", command, str(tmp_path / "nope.yaml"))
        assert result.exit_code == 2
        assert result.stderr == f"Error: spec file {tmp_path / 'nope.yaml'} does not exist\n"
    assert sweep_count(sweep_home) == (0, 0)


# --- plan ------------------------------------------------------------------------------------------------


def test_plan_prints_the_job_count_and_table_and_runs_nothing(sweep_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, README_SPEC)
    result = farm("sweep", "plan", str(spec))
    assert result.exit_code == 0, describe(result)
    lines = result.stdout.splitlines()
    assert lines[0] == "digits-int8: 54 jobs (2 fp32 references, 52 trials)"
    assert lines[1] == "  note: dynamic: bits 4 skipped (supports 8)"
    table = [line for line in lines if "│" in line]
    assert len(table) == 50  # the first 50 jobs
    assert lines[-1] == "... and 4 more (--all lists them)"
    plan = load_spec(README_SPEC)
    assert [row.split("│")[0].strip() for row in table] == [j.key[:10] for j in plan.jobs[:50]]
    assert table[0].split("│")[1].strip() == "reference"
    assert len([line for line in farm("sweep", "plan", "--all", str(spec)).stdout.splitlines() if "│" in line]) == 54
    assert not (sweep_home / "farm.db").exists()  # planning touches no database


def test_plan_json_is_the_whole_plan(sweep_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, README_SPEC)
    result = farm("sweep", "plan", "--json", str(spec))
    assert result.exit_code == 0, describe(result)
    data = json.loads(result.stdout)
    plan = load_spec(README_SPEC)
    assert (data["name"], data["jobs"], data["references"], data["notes"]) == (
        "digits-int8", 54, 2, ["dynamic: bits 4 skipped (supports 8)"],
    )  # fmt: skip
    assert [(j["key"], j["role"], j["method"], j["bits"]) for j in data["job_table"]] == [
        (j.key, j.role, j.method.method, j.columns()["bits"]) for j in plan.jobs
    ]
    assert data["job_table"][-1]["config"] == plan.jobs[-1].method.to_dict()


def test_the_job_limit_is_lifted_with_force(sweep_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, BAD_SPECS["past the job limit"][0])
    result = farm("sweep", "plan", "--force", "--json", str(spec))
    assert result.exit_code == 0, describe(result)
    assert json.loads(result.stdout)["jobs"] == 10_754


# --- list, status, results query on a seeded database ----------------------------------------------------

SEED_SPEC = f"""\
name: seeded
models: ['{TOY_MLP}']
dataset: '{TOY_DATA}'
methods: [fp32, dynamic, static]
benchmark: {{batch_size: [1, 8]}}
"""


def _result(accuracy: float) -> dict[str, Any]:
    """A worker's result, as JobResult.to_dict() has it (accuracy_drop and speedup computed by run_job)."""
    return {
        "accuracy": accuracy,
        "accuracy_fp32": 0.5,
        "accuracy_drop": 0.5 - accuracy,
        "size_bytes": 100,
        "size_ratio": 0.5,
        "hardware_id": "hw",
        "hardware": "cpu",
        "duration_s": 0.5,
        "latency": [{"batch_size": b, "latency_p50_ms": 2.0 * b, "throughput": 100.0, "speedup": 1.0} for b in (1, 8)],
    }


@pytest.fixture(scope="module")
def seeded_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A home with sweep 1 (reference and dynamic succeeded, static failed) and an empty sweep 2."""
    home = tmp_path_factory.mktemp("seeded") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FARM_HOME", str(home))
        mp.delenv("FARM_DATABASE_URL", raising=False)
        db = Database()
        ensure_schema(db)
        with db.session() as s:
            record = plans.create_sweep(s, load_spec(SEED_SPEC), "tester@host")
            ref, dynamic, static = record.to_run
            queue_as_sent(s, record.to_run, queue="local")
            for job_id, accuracy in ((ref, 0.5), (dynamic, 0.45)):
                lifecycle.claim_job(s, job_id, "w", 60)
                obj = StoredObject(f"jobs/{job_id}/model.pt", f"file:///store/{job_id}", "0" * 64, 1)
                lifecycle.finish_job(s, job_id, "w", _result(accuracy), [("model", obj)])
            lifecycle.claim_job(s, static, "w", 60)
            lifecycle.fail_job(s, static, "static: torch.fx cannot trace it", worker="w")
            lifecycle.refresh_sweep_state(s, record.sweep_id)
            plans.create_sweep(s, load_spec(SEED_SPEC.replace("seeded", "second") + "seed: 1\n"), None)
        db.dispose()
    yield home


@pytest.fixture
def seeded(seeded_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FARM_HOME", str(seeded_home))
    monkeypatch.delenv("FARM_DATABASE_URL", raising=False)
    return seeded_home


def test_sweep_list_shows_each_sweep_newest_first_with_its_counts(seeded: Path) -> None:
    result = farm("sweep", "list")
    assert result.exit_code == 0, describe(result)
    lines = result.stdout.splitlines()
    assert [c.strip() for c in lines[0].split("┃")] == [
        "id", "name", "state", "jobs", "succeeded", "failed", "running", "submitter", "created",
    ]  # fmt: skip
    rows = [[c.strip() for c in line.split("│")][:8] for line in lines if "│" in line]
    assert rows == [
        ["2", "second", "running", "3", "0", "0", "0", "-"],
        ["1", "seeded", "failed", "3", "2", "1", "0", "tester@host"],
    ]
    assert [line for line in farm("sweep", "list", "--limit", "1").stdout.splitlines() if "│" in line][0].startswith(
        " 2 "
    )


def test_sweep_status_shows_counts_and_failed_jobs(seeded: Path) -> None:
    result = farm("sweep", "status", "1")
    assert result.exit_code == 0, describe(result)
    assert result.stdout.splitlines() == [
        "sweep 1 seeded: failed; 3 jobs: 2 succeeded, 1 failed",
        f"  failed job 3 static {TOY_MLP}: static: torch.fx cannot trace it",
    ]
    assert farm("sweep", "status", "2").stdout == "sweep 2 second: running; 3 jobs: 3 pending\n"


def test_an_unknown_sweep_is_one_line_and_exit_2(seeded: Path) -> None:
    for args in (("sweep", "status", "99"), ("results", "query", "--sweep", "99")):
        result = farm(*args)
        assert result.exit_code == 2, describe(result)
        assert result.stderr == "Error: no sweep with id 99\n" and result.stdout == ""


def _view_columns() -> list[str]:
    db = Database()
    try:
        with db.connect() as conn:
            return list(conn.execute(text("SELECT * FROM results_flat WHERE 1 = 0")).keys())
    finally:
        db.dispose()


def test_results_query_json_is_an_array_of_objects_named_like_the_view(seeded: Path) -> None:
    result = farm("results", "query", "--sweep", "1", "--format", "json")
    assert result.exit_code == 0, describe(result)
    rows = json.loads(result.stdout)
    columns = _view_columns()
    assert columns == list(RESULT_COLUMNS)
    assert all(list(row) == columns for row in rows)
    assert [(r["method"], r["batch_size"], r["state"]) for r in rows] == [
        ("fp32", 1, "succeeded"),
        ("fp32", 8, "succeeded"),
        ("dynamic", 1, "succeeded"),
        ("dynamic", 8, "succeeded"),
        ("static", None, "failed"),
    ]
    dynamic = rows[2]
    assert dynamic["accuracy_drop"] == pytest.approx(0.05) and dynamic["speedup"] == pytest.approx(1.0)
    assert dynamic["artifact_uri"] == f"file:///store/{dynamic['job_id']}"
    assert rows[4]["error"] == "static: torch.fx cannot trace it"
    assert isinstance(dynamic["simulated"], bool)


def test_results_query_csv_has_the_view_columns_as_header(seeded: Path, tmp_path: Path) -> None:
    result = farm("results", "query", "--format", "csv")
    assert result.exit_code == 0, describe(result)
    table = list(csv.reader(io.StringIO(result.stdout)))
    assert table[0] == _view_columns()
    assert len(table) == 1 + 5 + 3  # sweep 1's rows, and sweep 2's (its jobs are sweep 1's: pending / failed)
    out = tmp_path / "r.csv"
    written = farm("results", "query", "--sweep", "1", "--format", "csv", "--columns", "job_id,method,accuracy",
                   "--output", str(out))  # fmt: skip
    assert written.exit_code == 0 and written.stdout == ""
    assert out.read_text().splitlines()[:2] == ["job_id,method,accuracy", "1,fp32,0.5"]


def test_results_query_unknown_column_is_exit_2(seeded: Path) -> None:
    result = farm("results", "query", "--columns", "model,acuracy")
    assert result.exit_code == 2, describe(result)
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: --columns: unknown column 'acuracy'")
    assert "accuracy" in line.removeprefix("Error: --columns: unknown column 'acuracy'")  # what it could be
    assert result.stdout == ""


def test_an_unreachable_database_is_one_line_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FARM_DATABASE_URL", "postgresql+psycopg://farm:s3cret@127.0.0.1:1/farm")
    monkeypatch.setenv("FARM_ALLOWED_MODULES", "tests.toys")  # the toy loads here: the database is what fails
    spec = write_spec(tmp_path, f"name: x\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\nmethods: [fp32]\n")
    for args in (("sweep", "run", str(spec)), ("sweep", "list"), ("results", "query")):
        result = farm(*args)
        assert result.exit_code == 2, describe(result)
        assert "s3cret" not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith("Error: database postgresql+psycopg://farm:***@127.0.0.1:1/farm is unreachable: ")


def test_run_refuses_zero_worker_processes(sweep_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, f"name: x\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\nmethods: [fp32]\n")
    result = farm("sweep", "run", str(spec), "--jobs", "0")
    assert result.exit_code == 2, describe(result)
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: Invalid value for '--jobs' / '-j': 0 is not in the range 1<=x<=1024")
    assert sweep_count(sweep_home) == (0, 0)


def test_status_watch_follows_the_sweep_until_it_ends(sweep_home: Path) -> None:
    import threading
    import time

    db = Database()
    ensure_schema(db)
    spec = f"name: watched\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\nmethods: [fp32, dynamic]\n"
    with db.session() as s:
        record = plans.create_sweep(s, load_spec(spec), None)

    def end_it() -> None:  # what workers elsewhere would do, 1.5 s in
        time.sleep(1.5)
        with db.session() as s:
            sweeps.cancel_unfinished(s, record.to_run, "cancelled by the test")

    ender = threading.Thread(target=end_it)
    ender.start()
    started = time.monotonic()
    result = farm("sweep", "status", str(record.sweep_id), "--watch")
    ender.join()
    assert result.exit_code == 0, describe(result)
    assert time.monotonic() - started >= 1.4  # it waited for the sweep, reading the database
    assert f"sweep {record.sweep_id}: cancelled" in result.stderr
    assert result.stdout.startswith(f"sweep {record.sweep_id} watched: cancelled; 2 jobs: 2 cancelled")
    db.dispose()
