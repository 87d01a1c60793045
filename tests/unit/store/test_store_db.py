"""farm.store.db on SQLite: URLs, pragmas, sessions, error mapping, concurrent writers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from farm.errors import ConfigError, StoreUnavailable
from farm.store.db import Database, normalize_url, redact_url
from farm.store.engines import BUSY_TIMEOUT_S
from farm.store.models import Job, Metric, Sweep

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _sweep(name: str) -> Sweep:
    return Sweep(name=name, spec_text="{}", spec_hash="h" * 64, created_at=NOW)


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql+psycopg://farm:s3cret@db:5432/farm", "postgresql+psycopg://farm:***@db:5432/farm"),
        ("postgresql://farm@db/farm", "postgresql://farm@db/farm"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("not a url://farm:s3cret@db", "not a url://farm:***@db"),
    ],
)
def test_redact_url_hides_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg"])
def test_postgres_urls_mean_psycopg3(scheme: str) -> None:
    assert normalize_url(f"{scheme}://u:p@h/d").drivername == "postgresql+psycopg"


@pytest.mark.parametrize(
    "url, problem", [("::nonsense::", "not a database URL"), ("nosuchdb://u:pw@h/d", "no database driver")]
)
def test_a_bad_url_is_a_config_error(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        Database(url)
    assert ":pw@" not in str(caught.value)


def test_default_url_is_the_sqlite_file_under_farm_home(tmp_path: Path) -> None:
    db = Database()
    assert db.sqlite_path == tmp_path / "home" / "farm.db"
    assert db.sqlite_path.parent.is_dir()  # created, so that the first run needs no setup
    db.dispose()


def test_sqlite_connections_get_foreign_keys_wal_and_a_busy_timeout(migrated_db: Database) -> None:
    with migrated_db.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 30_000 == BUSY_TIMEOUT_S * 1000
    with pytest.raises(IntegrityError):  # foreign keys are enforced: no metric for a job that does not exist
        with migrated_db.session() as s:
            s.add(Metric(job_id=12345, batch_size=1))


def test_write_sessions_take_the_write_lock_up_front(migrated_db: Database) -> None:
    seen: list[str] = []
    event.listen(migrated_db.engine, "before_cursor_execute", lambda c, cur, stmt, *a: seen.append(stmt))
    with migrated_db.session() as s:
        s.execute(select(1))
    with migrated_db.session(write=False) as s:
        s.execute(select(1))
    assert [x for x in seen if x.startswith("BEGIN")] == ["BEGIN IMMEDIATE", "BEGIN"]


def test_session_commits_on_success_and_rolls_back_on_failure(migrated_db: Database) -> None:
    with migrated_db.session() as s:
        s.add(_sweep("kept"))
    with pytest.raises(RuntimeError, match="boom"):
        with migrated_db.session() as s:
            s.add(_sweep("dropped"))
            s.flush()  # the row is in the database's transaction...
            raise RuntimeError("boom")  # ...and rolled back
    with migrated_db.session(write=False) as s:
        assert s.scalars(select(Sweep.name)).all() == ["kept"]


def test_autocommit_statements_commit_on_their_own(migrated_db: Database) -> None:
    from sqlalchemy import insert, update

    row = _sweep("claimed")
    values = {c.name: getattr(row, c.name) for c in Sweep.__table__.columns if getattr(row, c.name) is not None}
    with migrated_db.autocommit() as conn:
        conn.execute(insert(Sweep.__table__).values(**values))
        # No transaction is held open: another writer gets the lock at once, and sees the row.
        with migrated_db.session() as s:
            assert s.scalars(select(Sweep.name)).all() == ["claimed"]
            s.execute(update(Sweep).values(state="running"))
        conn.execute(update(Sweep.__table__).values(state="succeeded"))
    with migrated_db.session(write=False) as s:
        assert s.scalars(select(Sweep.state)).all() == ["succeeded"]  # nothing rolled back at the end


def test_integrity_errors_propagate_unchanged(migrated_db: Database) -> None:
    job = dict(model="m", dataset="d", method="fp32", device="cpu", spec={}, created_at=NOW)
    with migrated_db.session() as s:
        s.add(Job(key="k" * 64, **job))
    with pytest.raises(IntegrityError):
        with migrated_db.session() as s:
            s.add(Job(key="k" * 64, **job))


def test_sql_bugs_are_not_reported_as_an_unreachable_database(migrated_db: Database) -> None:
    # sqlite3 raises OperationalError for a missing table too: that is a bug, not a connectivity problem.
    with pytest.raises(OperationalError, match="no such table"):
        with migrated_db.session() as s:
            s.execute(text("SELECT * FROM no_such_table"))


def test_an_unopenable_sqlite_file_is_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()  # a directory where the file should be
    db = Database(f"sqlite:///{tmp_path / 'dir.db'}")
    with pytest.raises(StoreUnavailable, match=r"^database sqlite:///.*dir\.db is unreachable: .*unable to open"):
        with db.session() as s:
            s.execute(select(1))


def test_unreachable_postgresql_is_one_line_without_the_password() -> None:
    db = Database("postgresql://farm:secret@127.0.0.1:1/farm")
    with pytest.raises(StoreUnavailable) as caught:
        with db.session() as s:
            s.execute(select(1))
    message = str(caught.value)
    assert message.startswith("database postgresql+psycopg://farm:***@127.0.0.1:1/farm is unreachable: ")
    assert "127.0.0.1" in message and "secret" not in message and "\n" not in message
    assert "secret" not in repr(db)


WRITER = """
import sys
from datetime import datetime, timezone
from sqlalchemy import func, select
from farm.store.db import Database
from farm.store.models import Sweep

db = Database(sys.argv[1])
for i in range(int(sys.argv[3])):
    with db.session() as s:  # read, then write in the same transaction: the pattern that deadlocks in WAL
        n = s.scalar(select(func.count()).select_from(Sweep))
        s.add(Sweep(name=f"{sys.argv[2]}-{i}-{n}", spec_text="", spec_hash="h", created_at=datetime.now(timezone.utc)))
"""


def test_concurrent_writer_processes_do_not_hit_database_is_locked(migrated_db: Database) -> None:
    url, processes, each = str(migrated_db.url), 4, 40
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, url, str(p), str(each)], stderr=subprocess.PIPE, text=True)
        for p in range(processes)
    ]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * processes, "\n".join(errors)
    with migrated_db.session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(Sweep)) == processes * each


def test_opening_a_new_file_waits_for_a_writer_instead_of_failing(tmp_path: Path) -> None:
    # Switching to WAL needs a lock SQLite does not wait for: a second process opening a brand-new database
    # while the first holds its write lock used to fail at once with "database is locked".
    path = tmp_path / "new.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1)")
    threading.Timer(0.5, other.execute, ["COMMIT"]).start()
    db = Database(f"sqlite:///{path}")
    started = time.monotonic()
    with db.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert time.monotonic() - started >= 0.4
    db.dispose()
    other.close()
