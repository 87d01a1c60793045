"""ensure_schema and the schema status: create an empty database, refuse one that is behind, once per process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic import command
from store_support import FARM_TABLES, schema_objects

from farm.errors import SchemaOutOfDate
from farm.store.db import Database
from farm.store.migrate import alembic_config, current_revision, ensure_schema, head_revision, schema_status, upgrade


def test_an_empty_database_is_created_on_first_use(sqlite_db: Database) -> None:
    assert schema_status(sqlite_db).state == "empty"
    ensure_schema(sqlite_db)
    assert current_revision(sqlite_db) == head_revision()
    assert "results_flat" in schema_objects(sqlite_db)[1]


def test_an_empty_database_is_refused_without_auto_create(sqlite_db: Database) -> None:
    with pytest.raises(SchemaOutOfDate, match=r"has no QuantFarm schema: run `farm db upgrade`$"):
        ensure_schema(sqlite_db, auto_create=False)
    assert schema_objects(sqlite_db)[0] == set()


def test_a_database_behind_head_is_refused_with_the_command_that_fixes_it(
    migrated_db: Database, newer_migrations: Path
) -> None:
    current = current_revision(migrated_db)
    assert head_revision() == "9999"
    with pytest.raises(SchemaOutOfDate) as caught:
        ensure_schema(migrated_db)
    assert str(caught.value) == (
        f"database {migrated_db.redacted_url} is at schema revision {current} but this QuantFarm needs 9999:"
        " run `farm db upgrade`"
    )
    assert upgrade(migrated_db) == "9999"
    ensure_schema(migrated_db)
    assert "extra_for_tests" in schema_objects(migrated_db)[0]


def test_tables_without_a_revision_are_refused(migrated_db: Database) -> None:
    with migrated_db.migration_connection() as conn:
        command.stamp(alembic_config(conn), "base")  # the tables stay, the revision goes
    status = schema_status(migrated_db)
    assert (status.state, status.tables) == ("unversioned", tuple(sorted(FARM_TABLES)))
    with pytest.raises(SchemaOutOfDate, match=r"no schema revision.*run `farm db upgrade`"):
        ensure_schema(migrated_db)


def test_a_revision_this_quantfarm_does_not_know_is_refused(migrated_db: Database) -> None:
    with migrated_db.connect(write=True) as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000fake'")
    assert schema_status(migrated_db).state == "unknown"
    with pytest.raises(SchemaOutOfDate, match=r"at schema revision 0000fake, which this QuantFarm does not know"):
        ensure_schema(migrated_db)


def test_the_check_runs_once_per_database_object(migrated_db: Database, make_db) -> None:
    ensure_schema(migrated_db)
    with migrated_db.connect(write=True) as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000fake'")
    ensure_schema(migrated_db)  # cached: no query
    with pytest.raises(SchemaOutOfDate):
        ensure_schema(make_db(str(migrated_db.url)))  # a new Database checks again


CHECKER = """
import sys, time
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together
from farm.store.db import Database
from farm.store.migrate import ensure_schema
ensure_schema(Database(sys.argv[1]))
"""


def test_processes_creating_the_same_new_database_at_once_all_succeed(sqlite_url: str, make_db) -> None:
    start = str(time.time() + 2.0)
    procs = [
        subprocess.Popen([sys.executable, "-c", CHECKER, sqlite_url, start], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], "\n".join(errors)
    assert current_revision(make_db(sqlite_url)) == head_revision()
