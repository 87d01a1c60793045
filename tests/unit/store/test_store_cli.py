"""``farm db upgrade / current / downgrade`` through click, FARM_DATABASE_URL set."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from farm.cli import cli
from farm.store.db import redact_url
from farm.store.migrate import head_revision


@pytest.fixture
def farm_db(monkeypatch: pytest.MonkeyPatch, sqlite_url: str):
    monkeypatch.setenv("FARM_DATABASE_URL", sqlite_url)
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, ["db", *args])


def test_upgrade_current_downgrade(farm_db, sqlite_url: str) -> None:
    head = head_revision()
    steps = [
        (("current",), f"{sqlite_url}: empty"),
        (("upgrade",), f"{sqlite_url}: upgraded from empty to revision {head}"),
        (("current",), f"{sqlite_url}: revision {head} (head)"),
        (("upgrade",), f"{sqlite_url}: already at revision {head}"),
        (("downgrade", "base"), f"{sqlite_url}: downgraded from {head} to base"),
        (("current",), f"{sqlite_url}: empty"),
    ]
    for args, line in steps:
        result = farm_db(*args)
        assert (result.exit_code, result.stdout) == (0, line + "\n"), args


def test_current_says_behind_and_what_to_run(farm_db, sqlite_url: str, newer_migrations: Path) -> None:
    assert farm_db("upgrade", "0001").exit_code == 0
    result = farm_db("current")
    assert result.stdout == f"{sqlite_url}: revision 0001, behind head 9999: run `farm db upgrade`\n"
    assert farm_db("upgrade").stdout == f"{sqlite_url}: upgraded from 0001 to revision 9999\n"


def test_a_farm_error_in_a_nested_command_is_one_line_and_exit_2(farm_db) -> None:
    result = farm_db("upgrade", "nonsense")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Can't locate revision identified by 'nonsense'" in result.stderr


def test_an_unreachable_database_names_the_host_not_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://farm:secret@127.0.0.1:1/farm"
    monkeypatch.setenv("FARM_DATABASE_URL", url)
    result = CliRunner().invoke(cli, ["db", "current"])
    assert result.exit_code == 2
    assert "secret" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"database {redact_url(url).replace('postgresql', 'postgresql+psycopg')} is unreachable" in result.stderr
