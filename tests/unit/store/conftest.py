"""Fixtures for the results-database tests on SQLite: a fresh file per test, nothing under ~/.farm."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farm.store.db import Database
from farm.store.migrate import head_revision, migrations_dir, upgrade


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FARM_DATABASE_URL", raising=False)
    monkeypatch.delenv("FARM_MIGRATIONS_DIR", raising=False)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of an SQLite file that does not exist yet (its directory neither)."""
    return f"sqlite:///{tmp_path / 'db' / 'farm.db'}"


@pytest.fixture
def make_db() -> Iterator[Callable[[str], Database]]:
    """Build Databases that are disposed at teardown."""
    made: list[Database] = []

    def make(url: str) -> Database:
        made.append(Database(url))
        return made[-1]

    yield make
    for db in made:
        db.dispose()


@pytest.fixture
def sqlite_db(make_db: Callable[[str], Database], sqlite_url: str) -> Database:
    """An empty SQLite database."""
    return make_db(sqlite_url)


@pytest.fixture
def migrated_db(sqlite_db: Database) -> Database:
    """An SQLite database migrated to head."""
    upgrade(sqlite_db)
    return sqlite_db


EXTRA_REVISION = '''
"""A later revision, for tests only."""

import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("extra_for_tests", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade() -> None:
    op.drop_table("extra_for_tests")
'''


@pytest.fixture
def newer_migrations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """FARM_MIGRATIONS_DIR set to a copy of migrations/ with a revision 9999 on top: this QuantFarm is newer."""
    head = head_revision()
    copy = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "versions" / "9999_extra.py").write_text(EXTRA_REVISION.replace("{head}", head))
    monkeypatch.setenv("FARM_MIGRATIONS_DIR", str(copy))
    return copy
