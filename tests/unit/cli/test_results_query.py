"""``farm results query``: every format, --output, --columns, --order-by, --limit, --where, --sweep, and every
bad input as one line with exit status 2, no file written and (where the input alone is bad) no database opened.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from farm.cli import cli
from farm.store.columns import RESULT_COLUMNS
from farm.store.db import Database
from farm.store.migrate import upgrade
from tests import filterkit as fs


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, int]]]:
    """URL of an SQLite database holding the filter tests' population, and its job ids."""
    url = f"sqlite:///{tmp_path_factory.mktemp('cli-results') / 'farm.db'}"
    db = Database(url)
    upgrade(db)
    ids = fs.seed_population(db)
    db.dispose()
    yield url, ids


@pytest.fixture
def env(seeded: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, int]:
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FARM_DATABASE_URL", seeded[0])
    return seeded[1]


def farm(*args: str) -> Result:
    return CliRunner().invoke(cli, ["results", "query", *args])


def ok(*args: str) -> str:
    result = farm(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_csv_has_a_header_of_column_names_and_empty_cells_for_null(env: dict[str, int]) -> None:
    out = ok("--format", "csv", "--columns", "job_id,model,bits,simulated,finished_at", "--sweep", "2")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["job_id", "model", "bits", "simulated", "finished_at"]
    by_model = {r[1]: r for r in rows[1:]}
    assert by_model["a\\b"] == [str(env["bsl"]), "a\\b", "2", "", ""]
    assert by_model["it's"][3:] == ["False", "2026-01-02T03:04:05+00:00"]
    assert by_model["50%_off"][2] == "-1"


def test_json_is_an_array_of_objects_keyed_by_column(env: dict[str, int]) -> None:
    data = json.loads(ok("--format", "json", "--where", "model = 'ResNet'"))
    assert isinstance(data, list) and len(data) == 1
    (row,) = data
    assert list(row) == list(RESULT_COLUMNS)  # every column, in the view's order
    assert row["simulated"] is True and row["bits"] == 4 and row["speedup"] is None
    assert row["finished_at"] == "2025-12-31T23:59:59.999999+00:00"
    assert row["accuracy_drop"] == 0.9 - 0.85


def test_table_on_stdout(env: dict[str, int]) -> None:
    out = ok("--columns", "model,method,bits", "--where", "method = 'static' AND bits IN (8, 4)", "--order-by", "model")
    lines = [line for line in out.splitlines() if line.strip()]
    assert [c.strip() for c in lines[0].split("┃")] == ["model", "method", "bits"]
    body = [[c.strip() for c in line.split("│")] for line in lines[2:]]
    assert body == [["resnet", "static", "8"]] * 2 + [["vit", "static", "8"]] * 4


def test_where_order_by_limit_and_columns(env: dict[str, int]) -> None:
    data = json.loads(
        ok(
            "--format",
            "json",
            "--where",
            "speedup IS NOT NULL AND NOT simulated",
            "--order-by",
            "speedup desc",
            "--order-by",
            "model",
            "--columns",
            "model,batch_size,speedup",
            "--limit",
            "3",
        )  # fmt: skip
    )
    assert data == [
        {"model": "vit", "batch_size": 1, "speedup": 3.0},
        {"model": "vit", "batch_size": 1, "speedup": 3.0},  # vq is in both sweeps
        {"model": "resnet", "batch_size": 1, "speedup": 2.5},
    ]
    assert json.loads(ok("--format", "json", "--limit", "0")) == []


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "parquet"])
def test_output_writes_the_file_and_nothing_on_stdout(env: dict[str, int], tmp_path: Path, fmt: str) -> None:
    target = tmp_path / f"out.{fmt}"
    out = ok("--format", fmt, "--output", str(target), "--columns", "job_id,model,accuracy,simulated,finished_at")
    assert out == ""
    assert [p.name for p in tmp_path.iterdir() if p.name != "home"] == [target.name]  # no temporary file left
    n_rows = len(fs.expected_rows(env))
    if fmt == "parquet":
        import pandas as pd

        frame = pd.read_parquet(target)
        assert list(frame.columns) == ["job_id", "model", "accuracy", "simulated", "finished_at"]
        assert len(frame) == n_rows
        assert str(frame["job_id"].dtype) == "Int64" and str(frame["simulated"].dtype) == "boolean"
        assert str(frame["finished_at"].dtype).startswith("datetime64") and "UTC" in str(frame["finished_at"].dtype)
        assert set(frame["model"].dropna()) >= {"it's", "50%_off", "résumé"}
    elif fmt == "json":
        assert len(json.loads(target.read_text())) == n_rows
    elif fmt == "csv":
        assert len(target.read_text().splitlines()) == n_rows + 1
    else:
        text = target.read_text()
        assert "\x1b[" not in text  # plain text, no terminal colours
        assert "résumé" in text and "finished_at" in text


def run_bad(*args: str) -> Result:
    result = farm(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    message = result.stderr.strip()
    assert "\n" not in message, message
    assert "Traceback" not in message
    return result


BAD_INPUTS: list[tuple[list[str], str]] = [
    (["--where", "acuracy > 0.9"], "--where: unknown column 'acuracy' at position 1; did you mean 'accuracy'?"),
    (["--where", "accuracy > 'abc'"], "--where: accuracy is numeric; 'abc' at position 12 is not a number"),
    (["--where", "(bits = 8 OR bits = 4"], "--where: unbalanced parentheses at position 1"),
    (["--where", "model = 'x'; DROP TABLE jobs; --"], "--where: unexpected character ';' at position 12"),
    (["--order-by", "acuracy desc"], "--order-by: unknown column 'acuracy'; did you mean 'accuracy'?"),
    (["--order-by", "accuracy sideways"], "--order-by: 'accuracy sideways': expected"),
    (["--columns", "model,acuracy"], "--columns: unknown column 'acuracy'; did you mean 'accuracy'?"),
    (["--limit", "-1"], "Invalid value for '--limit'"),
    (["--format", "xml"], "Invalid value for '--format'"),
    (["--sweep", "x"], "Invalid value for '--sweep'"),
    (["--format", "parquet"], "--format parquet writes a file: add --output FILE"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_opens_no_database(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_file = tmp_path / "never" / "farm.db"
    monkeypatch.setenv("FARM_DATABASE_URL", f"sqlite:///{db_file}")
    target = tmp_path / "out.file"
    result = run_bad(*args, "--output", str(target)) if "--format" not in args else run_bad(*args)
    assert message in result.stderr
    assert not target.exists()
    assert not db_file.parent.exists()  # the input alone was bad: no database was opened (or created)


def test_unknown_sweep_is_one_line_exit_2_and_writes_nothing(env: dict[str, int], tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    result = run_bad("--sweep", "1", "--sweep", "42", "--format", "csv", "--output", str(target))
    assert result.stderr.strip().endswith("no sweep with id 42")
    assert not target.exists()


def test_parquet_without_pyarrow_fails_before_the_query(
    env: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # "import pyarrow" now raises ImportError
    monkeypatch.setenv("FARM_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")  # unreachable: never tried
    target = tmp_path / "out.parquet"
    result = run_bad("--format", "parquet", "--output", str(target))
    assert "--format parquet needs pyarrow, which is not installed: pip install 'quantfarm[analysis]'" in (
        result.stderr
    )
    assert not target.exists()


def test_output_into_a_missing_directory_fails_before_the_query(env: dict[str, int], tmp_path: Path) -> None:
    result = run_bad("--format", "csv", "--output", str(tmp_path / "no" / "such" / "out.csv"))
    assert f"--output {tmp_path / 'no' / 'such' / 'out.csv'}: directory {tmp_path / 'no' / 'such'} does not exist" in (
        result.stderr
    )


def test_a_failed_write_leaves_no_file(env: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.cli import output

    def broken(path: Path, *args: Any, **kwargs: Any) -> None:
        with open(path, "w") as f:
            f.write("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", broken)
    target = tmp_path / "out.json"
    result = run_bad("--format", "json", "--output", str(target))
    assert f"--output {target} can't be written: No space left on device" in result.stderr
    assert [p.name for p in tmp_path.iterdir() if "out.json" in p.name] == []  # neither it nor a temporary file
    assert output.FORMATS == ("table", "csv", "json", "parquet")
