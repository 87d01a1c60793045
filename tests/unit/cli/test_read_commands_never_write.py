"""Reading never writes (issue 10, section 5): every read command pointed at an empty, missing or foreign
SQLite database says in one line that it has no QuantFarm schema, names ``farm db upgrade``, exits 2, and
leaves the database byte for byte as it was (no tables, no WAL switch, no lock file, no new file).

tests/integration/test_read_only_pg.py does the same on PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from farm.store.db import Database
from tests.sweeps import describe, farm

#: Every command that only reads, and ``sweep cancel`` (it writes, but only to a QuantFarm database).
READ_COMMANDS = [
    ("results", "query"),
    ("results", "best", "--sweep", "1", "--max-accuracy-drop", "0.1"),
    ("results", "pareto", "--sweep", "1"),
    ("results", "compare", "1", "2"),
    ("sweep", "list"),
    ("sweep", "status", "1"),
    ("sweep", "status", "1", "--watch"),
    ("sweep", "cancel", "1"),
    ("workers",),
    ("report", "1"),
]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def assert_refused(args: tuple[str, ...], url: str) -> None:
    result = farm(*args)
    assert result.exit_code == 2, describe(result)
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line == f"Error: database {url} has no QuantFarm schema: run `farm db upgrade`", line


@pytest.mark.parametrize("args", READ_COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_a_read_command_leaves_a_foreign_sqlite_database_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    pytest.importorskip("matplotlib") if args[0] == "report" else None
    data = tmp_path / "data"
    data.mkdir()
    path = data / "theirs.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("CREATE VIEW big AS SELECT * FROM orders WHERE total > 100")
        conn.execute("INSERT INTO orders (total) VALUES (12.5)")
    conn.close()
    before = snapshot(data)
    monkeypatch.setenv("FARM_DATABASE_URL", f"sqlite:///{path}")
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    assert_refused(args, f"sqlite:///{path}")
    assert snapshot(data) == before  # same files, same bytes: no tables, no views, no WAL, no lock file


@pytest.mark.parametrize("args", READ_COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_a_read_command_on_a_fresh_home_creates_nothing(sweep_home: Path, args: tuple[str, ...]) -> None:
    pytest.importorskip("matplotlib") if args[0] == "report" else None
    before = sorted(p.name for p in sweep_home.iterdir())
    assert_refused(args, f"sqlite:///{sweep_home / 'farm.db'}")
    assert sorted(p.name for p in sweep_home.iterdir()) == before  # no farm.db, no farm.db.lock


def test_db_current_reads_a_missing_file_as_empty_without_creating_it(sweep_home: Path) -> None:
    result = farm("db", "current")
    assert result.exit_code == 0, describe(result)
    assert result.stdout.strip() == f"sqlite:///{sweep_home / 'farm.db'}: empty"
    assert not (sweep_home / "farm.db").exists()


def test_a_read_only_database_refuses_writes_and_reads_a_quantfarm_one(sweep_home: Path) -> None:
    from sqlalchemy import text

    from farm.errors import StoreUnavailable
    from farm.store.migrate import ensure_schema

    writer = Database()
    ensure_schema(writer)
    writer.dispose()
    reader = Database(read_only=True)
    try:
        with reader.session() as s:
            assert s.execute(text("SELECT COUNT(*) FROM sweeps")).scalar() == 0
        with pytest.raises(StoreUnavailable, match="readonly database"):
            with reader.session() as s:
                s.execute(text("INSERT INTO workers (name) VALUES ('x')"))
    finally:
        reader.dispose()
    assert farm("sweep", "list").exit_code == 0  # at head: the read commands work


def test_the_embedded_default_still_creates_itself_on_sweep_run(sweep_home: Path, tmp_path: Path) -> None:
    from tests.sweeps import TOY_DATA, TOY_MLP, write_spec

    spec = write_spec(
        tmp_path,
        f"name: x\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\nmethods: [fp32]\n"
        "benchmark: {batch_size: [1], max_time_s: 0.2, min_reps: 5, warmup_s: 0}\n",
    )
    result = farm("sweep", "run", str(spec), "-j", "1")
    assert result.exit_code == 0, describe(result)
    assert farm("sweep", "list").exit_code == 0
