"""The results database on PostgreSQL: migrations, no drift, the view, ensure_schema, errors, Alembic's CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from types import ModuleType

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from farm.errors import StoreUnavailable
from farm.store.db import Database
from farm.store.migrate import current_revision, downgrade, ensure_schema, head_revision, migrations_dir, upgrade
from farm.store.models import Sweep

pytestmark = pytest.mark.integration


def test_up_down_to_base_and_up_again(fresh_pg_db: Database, store_support: ModuleType) -> None:
    everything = (store_support.FARM_TABLES | {"alembic_version"}, {"results_flat"}, store_support.INDEXES)
    assert upgrade(fresh_pg_db) == head_revision()
    assert store_support.schema_objects(fresh_pg_db) == everything
    assert downgrade(fresh_pg_db, "base") is None
    assert store_support.schema_objects(fresh_pg_db) == ({"alembic_version"}, set(), set())
    assert upgrade(fresh_pg_db) == head_revision()
    assert store_support.schema_objects(fresh_pg_db) == everything


def test_autogenerate_finds_no_difference_from_the_models(fresh_pg_db: Database, store_support: ModuleType) -> None:
    upgrade(fresh_pg_db)
    assert store_support.autogenerate_diff(fresh_pg_db) == []


def test_the_view_has_exactly_the_documented_columns(fresh_pg_db: Database, store_support: ModuleType) -> None:
    upgrade(fresh_pg_db)
    queried, listed = store_support.view_columns(fresh_pg_db)
    assert queried == listed == store_support.COLUMNS


def test_the_view_flattens_the_data_set(fresh_pg_db: Database, store_support: ModuleType) -> None:
    upgrade(fresh_pg_db)
    store_support.seed(fresh_pg_db)
    store_support.assert_expected(store_support.view_rows(fresh_pg_db))


def test_session_rolls_back_on_failure(fresh_pg_db: Database) -> None:
    ensure_schema(fresh_pg_db)  # an empty database is created
    now = datetime.now(timezone.utc)
    with pytest.raises(RuntimeError):
        with fresh_pg_db.session() as s:
            s.add(Sweep(name="dropped", spec_text="", spec_hash="h", created_at=now))
            s.flush()
            raise RuntimeError("boom")
    with fresh_pg_db.session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(Sweep)) == 0


def test_a_missing_database_is_store_unavailable(fresh_pg_url: str) -> None:
    url = make_url(fresh_pg_url).set(database="farm_test_does_not_exist", password="secret")
    with pytest.raises(StoreUnavailable) as caught:
        with Database(url).session() as s:
            s.execute(text("SELECT 1"))
    message = str(caught.value)
    assert "farm_test_does_not_exist" in message and "secret" not in message and "\n" not in message


CHECKER = """
import sys, time
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together
from farm.store.db import Database
from farm.store.migrate import ensure_schema
ensure_schema(Database(sys.argv[1]))
"""


def test_processes_creating_the_same_new_database_at_once_all_succeed(fresh_pg_db: Database) -> None:
    url, start = fresh_pg_db.url.render_as_string(hide_password=False), str(time.time() + 2.0)
    procs = [
        subprocess.Popen([sys.executable, "-c", CHECKER, url, start], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], "\n".join(errors)
    assert current_revision(fresh_pg_db) == head_revision()


def test_alembic_cli_never_prints_the_password(fresh_pg_db: Database) -> None:
    # trust auth ignores the password, so the URL works and we can look for it in the output.
    url = fresh_pg_db.url.set(password="pw-must-not-show").render_as_string(hide_password=False)
    env = os.environ | {"FARM_DATABASE_URL": url}
    ini = str(migrations_dir() / "alembic.ini")
    for args in (["upgrade", "head"], ["current"], ["downgrade", "base"]):
        done = subprocess.run(
            [sys.executable, "-m", "alembic", "-c", ini, *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert "pw-must-not-show" not in done.stdout + done.stderr
    assert current_revision(fresh_pg_db) is None


def _bulk_rows(sweep_id: int, now: datetime) -> list[dict]:
    odd = ["plain", 'it\'s "quoted" \\ back\\slash', "ünïcødé ✓ 量子", "line\nbreak\ttab", "{braces,commas}", "NULL"]
    return [
        {
            "key": f"{i:064d}",
            "sweep_id": sweep_id,
            "role": "trial",
            "reference_job_id": None,  # a column that is NULL in every row
            "spec": {"model": odd[i % len(odd)], "nested": {"list": [1, None, 2.5], "flag": True}, "none": None},
            "state": "pending",
            "attempts": 0,
            "created_at": now,
            "model": odd[i % len(odd)],
            "dataset": "sklearn:digits",
            "method": "static",
            "bits": None if i % 2 else 8,
            "calibration_size": 32,
            "backend": None,
            "observer": "minmax",
            "granularity": None,
            "device": "cpu",
        }
        for i in range(12)
    ]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_bulk_inserts_round_trip_every_value_on_both_databases(
    backend: str, fresh_pg_db: Database, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL takes the rows as one JSON document (farm.store.bulk); SQLite as plain executemany."""
    from farm.store import bulk
    from farm.store.models import Job

    db = fresh_pg_db if backend == "postgresql" else Database(f"sqlite:///{tmp_path / 'bulk.db'}")
    upgrade(db)
    now = datetime(2026, 12, 1, 12, 30, 15, 123456, tzinfo=timezone.utc)
    with db.session() as s:
        s.add(Sweep(name="bulk", spec_text="name: bulk", spec_hash="0" * 64, created_at=now, state="pending"))
        s.flush()
        sweep_id = s.scalar(select(Sweep.id))
        rows = _bulk_rows(sweep_id, now)
        returned = bulk.insert_rows(s, Job.__table__, rows, returning=("key", "id"))
        assert sorted(k for k, _ in returned) == sorted(r["key"] for r in rows)  # one (key, id) per row
        ids = [i for _, i in returned]
        got = {j.key: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}
        for row in rows:
            job = got[row["key"]]
            assert (job.spec, job.model, job.bits, job.backend) == (row["spec"], row["model"], row["bits"], None)
            assert job.created_at.replace(tzinfo=timezone.utc) == now
        conditions = list(bulk.in_values(s, Job.__table__.c.id, ids[:7]))
        assert len(conditions) == 1
        assert sorted(s.scalars(select(Job.id).where(conditions[0]))) == sorted(ids[:7])
        assert bulk.insert_rows(s, Job.__table__, []) == [] and list(bulk.in_values(s, Job.id, [])) == []
    if backend == "sqlite":
        db.dispose()


def test_0006_backfills_recipes_and_params_filter_by_json_field(
    fresh_pg_db: Database, store_support: ModuleType
) -> None:
    # The view spells JSON per dialect (j.spec -> 'method' here): the same filters select the same jobs.
    upgrade(fresh_pg_db, "0005")
    store_support.seed_at_0005(fresh_pg_db)
    upgrade(fresh_pg_db)
    store_support.assert_params(fresh_pg_db)
    downgrade(fresh_pg_db, "0005")
    assert "params" not in store_support.view_columns(fresh_pg_db)[0]
    upgrade(fresh_pg_db)
    store_support.assert_params(fresh_pg_db)
