"""migrations/ on SQLite: up, down to base, up again; no drift from the models; the view; Alembic's CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Column, Index, MetaData, String
from store_support import (
    COLUMNS,
    FARM_TABLES,
    INDEXES,
    assert_expected,
    autogenerate_diff,
    schema_objects,
    seed,
    view_columns,
    view_rows,
)

from farm.store.db import Database
from farm.store.migrate import current_revision, downgrade, head_revision, migrations_dir, upgrade
from farm.store.models import NAMING, Base


def test_up_down_to_base_and_up_again(sqlite_db: Database) -> None:
    assert upgrade(sqlite_db) == head_revision() == current_revision(sqlite_db)
    assert schema_objects(sqlite_db) == (FARM_TABLES | {"alembic_version"}, {"results_flat"}, INDEXES)

    assert downgrade(sqlite_db, "base") is None
    assert schema_objects(sqlite_db) == ({"alembic_version"}, set(), set())

    assert upgrade(sqlite_db) == head_revision()
    assert schema_objects(sqlite_db) == (FARM_TABLES | {"alembic_version"}, {"results_flat"}, INDEXES)


def test_autogenerate_finds_no_difference_from_the_models(migrated_db: Database) -> None:
    assert autogenerate_diff(migrated_db) == []


def test_autogenerate_comparison_would_see_a_difference(migrated_db: Database) -> None:
    # The check above means something: one more index or column in the models is reported.
    changed = MetaData(naming_convention=NAMING)
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    jobs = changed.tables["jobs"]
    jobs.append_column(Column("notes", String(10)))
    Index("ix_jobs_worker", jobs.c.worker)
    kinds = sorted(diff[0] for diff in autogenerate_diff(migrated_db, changed))
    assert kinds == ["add_column", "add_index"]


def test_the_view_has_exactly_the_documented_columns(migrated_db: Database) -> None:
    queried, listed = view_columns(migrated_db)
    assert queried == listed == COLUMNS


def test_the_view_flattens_the_data_set(migrated_db: Database) -> None:
    seed(migrated_db)
    assert_expected(view_rows(migrated_db))


def test_foreign_keys_cascade_through_the_migrated_schema(migrated_db: Database) -> None:
    seed(migrated_db)
    with migrated_db.connect(write=True) as conn:
        conn.exec_driver_sql("DELETE FROM sweeps WHERE name = 'again'")
    assert {row["sweep_name"] for row in view_rows(migrated_db)} == {"demo"}


def _alembic_cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    ini = migrations_dir() / "alembic.ini"
    env = os.environ | {"FARM_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_alembic_cli_upgrades_and_downgrades(tmp_path: Path, make_db) -> None:
    url = f"sqlite:///{tmp_path / 'cli' / 'farm.db'}"
    done = _alembic_cli("upgrade", "head", url=url)
    assert done.returncode == 0, done.stderr
    assert "Running upgrade  -> 0001" in done.stderr
    db = make_db(url)
    assert current_revision(db) == head_revision()
    assert _alembic_cli("downgrade", "base", url=url).returncode == 0
    assert current_revision(db) is None


def test_alembic_cli_prints_sql_offline(tmp_path: Path) -> None:
    done = _alembic_cli("upgrade", "head", "--sql", url=f"sqlite:///{tmp_path / 'never.db'}")
    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE jobs" in done.stdout and "CREATE VIEW results_flat" in done.stdout
    assert not (tmp_path / "never.db").exists()


def test_0006_backfills_recipes_and_params_filter_by_json_field(sqlite_db: Database) -> None:
    from store_support import assert_params, seed_at_0005

    upgrade(sqlite_db, "0005")
    seed_at_0005(sqlite_db)
    upgrade(sqlite_db)
    assert_params(sqlite_db)
    # Down to 0005 and up again: the columns go and come back, the labels are computed again.
    downgrade(sqlite_db, "0005")
    assert "params" not in view_columns(sqlite_db)[0]
    upgrade(sqlite_db)
    assert_params(sqlite_db)
