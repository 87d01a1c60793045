"""``farm.client.results``: a typed DataFrame from results_flat, with the CLI's grammar and errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from farm import client
from farm.errors import ConfigError, NotFound
from farm.store.db import Database
from farm.store.migrate import upgrade
from tests import filterkit as fs


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, int]]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('client') / 'farm.db'}"
    db = Database(url)
    upgrade(db)
    ids = fs.seed_population(db)
    db.dispose()
    yield url, ids


def test_a_filtered_sorted_typed_frame(seeded: tuple[str, dict[str, int]]) -> None:
    url, ids = seeded
    df = client.results(
        sweep=[1, 2],
        where="method = 'static' AND accuracy_drop < 0.1 AND bits IN (8, 4)",
        order_by=["latency_p50_ms asc"],
        columns=["job_id", "model", "bits", "batch_size", "latency_p50_ms", "simulated", "finished_at"],
        database_url=url,
    )
    assert list(df.columns) == ["job_id", "model", "bits", "batch_size", "latency_p50_ms", "simulated", "finished_at"]
    assert df["latency_p50_ms"].tolist() == [2.5, 2.5, 4.0, 6.0, 6.0, 16.0]
    assert set(df["job_id"]) == {ids["s8"], ids["vq"]}
    assert dict(df.dtypes.astype(str)) == {
        "job_id": "Int64",
        "model": "string",
        "bits": "Int64",
        "batch_size": "Int64",
        "latency_p50_ms": "float64",
        "simulated": "boolean",
        "finished_at": "datetime64[us, UTC]",
    }
    assert df["finished_at"].iloc[0] == pd.Timestamp(fs.T1)


def test_nulls_are_missing_values_of_the_right_dtype(seeded: tuple[str, dict[str, int]]) -> None:
    url, ids = seeded
    df = client.results(sweep=2, where="job_key LIKE 'pct%'", database_url=url)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["batch_size"] is pd.NA and row["simulated"] is pd.NA and pd.isna(row["accuracy"])
    assert pd.isna(row["finished_at"]) and row["error"] == "can't; DROP TABLE jobs; --"
    assert row["bits"] == -1


def test_defaults_every_column_every_sweep_from_farm_database_url(
    seeded: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ids = seeded
    monkeypatch.setenv("FARM_DATABASE_URL", url)
    df = client.results()
    expected = fs.sort_rows(fs.expected_rows(ids), [])
    assert len(df) == len(expected)
    assert df["job_id"].tolist() == [r["job_id"] for r in expected]
    assert list(df.columns) == list(client_columns())
    assert client.results(limit=2).shape == (2, len(df.columns))


def client_columns() -> tuple[str, ...]:
    from farm.store.columns import RESULT_COLUMNS

    return RESULT_COLUMNS


def test_an_empty_result_keeps_columns_and_dtypes(seeded: tuple[str, dict[str, int]]) -> None:
    df = client.results(where="bits > 1000", columns="job_id,accuracy,simulated", database_url=seeded[0])
    assert df.empty and dict(df.dtypes.astype(str)) == {
        "job_id": "Int64",
        "accuracy": "float64",
        "simulated": "boolean",
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(where="acuracy > 0.9"), r"^where: unknown column 'acuracy' at position 1; did you mean 'accuracy'\?"),
        (dict(where="accuracy > 'abc'"), r"^where: accuracy is numeric; 'abc' at position 12 is not a number$"),
        (dict(where="(bits = 8"), r"^where: unbalanced parentheses at position 1"),
        (dict(order_by="acuracy"), r"^order_by: unknown column 'acuracy'; did you mean 'accuracy'\?"),
        (dict(columns=["model", "nope"]), r"^columns: unknown column 'nope'"),
        (dict(sweep="3"), r"^sweep: expected a sweep id"),
        (dict(limit=-5), r"^limit: expected a row count"),
    ],
)
def test_bad_arguments_raise_config_error_before_touching_the_database(
    kwargs: dict[str, object], message: str, tmp_path: Path
) -> None:
    missing = tmp_path / "never" / "farm.db"
    with pytest.raises(ConfigError, match=message):
        client.results(database_url=f"sqlite:///{missing}", **kwargs)  # type: ignore[arg-type]
    assert not missing.parent.exists()


def test_an_unknown_sweep_is_not_found(seeded: tuple[str, dict[str, int]]) -> None:
    with pytest.raises(NotFound, match="^no sweep with id 99$"):
        client.results(sweep=99, database_url=seeded[0])


def test_numpy_integers_are_sweep_ids(seeded: tuple[str, dict[str, int]]) -> None:
    ids = client.results(columns="sweep_id", database_url=seeded[0])["sweep_id"].unique()
    assert len(client.results(sweep=list(ids), database_url=seeded[0])) == len(fs.expected_rows(seeded[1]))


def test_without_pandas_a_config_error_says_what_to_install(
    seeded: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ConfigError, match=r"farm.client.results needs pandas, which is not installed: pip install"):
        client.results(database_url=seeded[0])


def test_importing_the_client_loads_no_cli_no_pandas_no_torch(subprocess_env: dict[str, str]) -> None:
    code = "import json, sys, farm.client; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = {name.partition(".")[0] for name in json.loads(proc.stdout)}
    assert "farm" in loaded
    assert loaded & {"click", "rich", "pandas", "pyarrow", "torch", "celery", "boto3"} == set()
