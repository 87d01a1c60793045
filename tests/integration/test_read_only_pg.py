"""Reading never writes, on PostgreSQL: a read command pointed at an empty or foreign database refuses in one
line naming ``farm db upgrade`` and leaves its tables, views and sequences as they were."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, text

from farm.store.db import Database
from farm.store.migrate import ensure_schema
from tests.sweeps import describe, farm
from tests.unit.cli.test_read_commands_never_write import READ_COMMANDS


def catalog(url: str) -> list[tuple[Any, ...]]:
    """Every relation in the database but the system ones: (schema, name, kind)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT n.nspname, c.relname, c.relkind FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
                    " ORDER BY 1, 2"
                )
            )
            return [tuple(r) for r in rows]
    finally:
        engine.dispose()


@pytest.mark.parametrize("foreign", [False, True], ids=["empty", "foreign"])
def test_read_commands_leave_a_postgresql_database_as_it_was(
    fresh_pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, foreign: bool
) -> None:
    if foreign:
        engine = create_engine(fresh_pg_url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE orders (id serial PRIMARY KEY, total numeric)"))
            conn.execute(text("CREATE VIEW big AS SELECT * FROM orders WHERE total > 100"))
        engine.dispose()
    before = catalog(fresh_pg_url)
    monkeypatch.setenv("FARM_DATABASE_URL", fresh_pg_url)
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    shown = Database(fresh_pg_url).redacted_url
    for args in READ_COMMANDS:
        if args[0] == "report":
            pytest.importorskip("matplotlib")
        result = farm(*args)
        assert result.exit_code == 2, describe(result)
        (line,) = result.stderr.splitlines()
        assert line == f"Error: database {shown} has no QuantFarm schema: run `farm db upgrade`", args
    current = farm("db", "current")
    assert current.exit_code == 0 and current.stdout.strip() == f"{shown}: empty"
    assert catalog(fresh_pg_url) == before


def test_a_read_only_postgresql_session_refuses_writes(fresh_pg_url: str) -> None:
    db = Database(fresh_pg_url)
    ensure_schema(db)
    db.dispose()
    reader = Database(fresh_pg_url, read_only=True)
    try:
        with reader.session() as s:
            assert s.execute(text("SELECT COUNT(*) FROM sweeps")).scalar() == 0
        with pytest.raises(Exception, match="read-only transaction"):
            with reader.session() as s:
                s.execute(text("DELETE FROM sweeps"))
    finally:
        reader.dispose()


def test_read_only_holds_with_options_in_the_url_and_in_autocommit(fresh_pg_url: str) -> None:
    """The URL's own ``options`` used to switch read-only off (it was a startup parameter); autocommit statements
    are refused too."""
    db = Database(fresh_pg_url)
    ensure_schema(db)
    db.dispose()
    sep = "&" if "?" in fresh_pg_url else "?"
    reader = Database(f"{fresh_pg_url}{sep}options=-c%20statement_timeout%3D60000", read_only=True)
    try:
        with pytest.raises(Exception, match="read-only transaction"):
            with reader.session() as s:
                s.execute(text("DELETE FROM sweeps"))
        with pytest.raises(Exception, match="read-only transaction"):
            with reader.autocommit() as conn:
                conn.execute(text("DELETE FROM sweeps"))
    finally:
        reader.dispose()
