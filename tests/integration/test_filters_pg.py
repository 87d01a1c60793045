"""The filter grammar on PostgreSQL: the same properties as on SQLite (fewer examples), and the same answers.

The database is created with an ICU ``en-US`` collation where the server has ICU, so that text ordering and
LIKE are checked where PostgreSQL's own defaults differ from SQLite's ('a' < 'B' there); the results must not
show it. Skips without a PostgreSQL server, fails under CI=true (tests/integration/conftest.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import timezone
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from farm import client
from farm.errors import ConfigError
from farm.store.db import Database
from farm.store.filters import parse_where
from farm.store.migrate import upgrade
from farm.store.models import Job, Metric
from farm.store.results import ResultsQuery, query_results
from tests import filterkit as fs

pytestmark = pytest.mark.integration

PROPERTY = settings(
    deadline=None,
    database=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def pg_population(pg_admin: Engine) -> Iterator[tuple[Database, str, dict[str, int]]]:
    """A PostgreSQL database (ICU en-US collation where available) holding the population: (db, url, ids)."""
    name = f"farm_test_{secrets.token_hex(6)}"
    with pg_admin.connect() as conn:
        try:
            conn.exec_driver_sql(
                f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
            )
        except DBAPIError:  # no ICU (or PostgreSQL < 15): the server's default collation
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(pg_admin.url).set(database=name).render_as_string(hide_password=False)
    db = Database(url)
    try:
        upgrade(db)
        ids = fs.seed_population(db)
        yield db, url, ids
    finally:
        db.dispose()
        with pg_admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def sqlite_population(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Database, str, dict[str, int]]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('filters-pg-twin') / 'farm.db'}"
    db = Database(url)
    upgrade(db)
    ids = fs.seed_population(db)
    yield db, url, ids
    db.dispose()


def test_the_population_gives_the_computed_view_rows(pg_population: Any) -> None:
    db, _, ids = pg_population
    with db.session() as s:
        got = query_results(s, ResultsQuery())
    want = fs.sort_rows(fs.expected_rows(ids), [])
    assert got == want  # floats exactly, datetimes in UTC, booleans as bool


def test_the_database_collation_would_differ_without_collate_c(pg_population: Any) -> None:
    db, _, _ = pg_population
    with db.connect() as conn:
        natural = conn.execute(text("SELECT 'a' < 'B'")).scalar()
    if not natural:
        pytest.skip("this server created the database with a byte-order collation (no ICU): nothing to show")
    # The database's own order puts 'a' before 'B'; the results still come in code point order.
    models = client.results(order_by="model", columns="model", database_url=pg_population[1])["model"].tolist()
    assert models == sorted(models)
    assert models.index("ResNet") < models.index("a\\b") < models.index("resnet")


@settings(PROPERTY)
@given(data=st.data())
def test_generated_filters_select_what_three_valued_logic_selects(pg_population: Any, data: st.DataObject) -> None:
    db, _, ids = pg_population
    rows = fs.expected_rows(ids)
    tree, expression = data.draw(fs.expressions(rows), label="expression")
    sortable = sorted(c for c, kind in fs.KINDS.items() if kind != "json")  # params has no order
    order = data.draw(st.lists(st.tuples(st.sampled_from(sortable), st.booleans()), max_size=2,
                               unique_by=lambda k: k[0]), label="order")  # fmt: skip
    limit = data.draw(st.none() | st.integers(0, 12), label="limit")
    order_by = [f"{c} {'desc' if d else 'asc'}" for c, d in order]
    if not fs.is_valid(tree):
        with pytest.raises(ConfigError):
            fs.select_keys(db, expression, order_by, limit)
        return
    got = fs.select_keys(db, expression, order_by, limit)
    assert got == fs.reference_keys(rows, lambda r: fs.evaluate(tree, r), order, limit), expression


@settings(PROPERTY)
@given(data=st.data())
def test_mangled_expressions_are_refused_cleanly_or_agree_with_the_parsed_tree(
    pg_population: Any, data: st.DataObject
) -> None:
    db, _, ids = pg_population
    rows = fs.expected_rows(ids)
    expression = data.draw(fs.soups() | fs.mutants(rows), label="expression")
    try:
        tree = parse_where(expression, source="where")
    except ConfigError:
        return
    got = fs.select_keys(db, expression)
    keep = (lambda r: True) if tree is None else (lambda r: fs.evaluate_parsed(tree, r))
    assert got == fs.reference_keys(rows, keep, [], None), expression


QUERIES = [
    dict(where="model LIKE 'r%'", order_by="model desc"),
    dict(where="model ILIKE 'RES%' OR method ILIKE 'résumé'"),
    dict(where="backend LIKE 'q?[z]' OR method LIKE 'x*y' OR model LIKE '50\\%\\_%'"),
    dict(where="NOT (bits > 4) OR bits IS NULL", order_by=["bits desc", "accuracy"]),
    dict(where="finished_at >= '2026-01-02T05:34:05.5+02:30'", order_by="finished_at desc"),
    dict(where="simulated = 1 OR speedup >= 1", order_by="speedup desc"),
    dict(where="model > 'R' AND model < 'r'", order_by="model"),
    dict(order_by=["observer", "hardware desc", "error"], columns="observer,hardware,error,job_id"),
    dict(where="error = 'can''t; DROP TABLE jobs; --' OR worker = \"w'3\""),
    dict(where="accuracy > accuracy_fp32 OR size_bytes > 4000000000", limit=3),
]


@pytest.mark.parametrize("query", QUERIES, ids=[str(q) for q in QUERIES])
def test_sqlite_and_postgresql_give_the_same_frame(pg_population: Any, sqlite_population: Any, query: Any) -> None:
    on_pg = client.results(database_url=pg_population[1], **query)
    on_sqlite = client.results(database_url=sqlite_population[1], **query)
    assert len(on_pg) > 0
    pd.testing.assert_frame_equal(on_pg, on_sqlite)


def test_the_tables_survive_every_expression_above(pg_population: Any) -> None:
    db, _, ids = pg_population
    with db.connect() as conn:
        assert {"jobs", "sweeps", "metrics", "sweep_jobs", "artifacts"} <= set(inspect(conn).get_table_names())
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == len(fs.JOBS)
        assert s.scalar(select(func.count()).select_from(Metric)) == sum(len(j.get("metrics", [])) for j in fs.JOBS)


def test_datetimes_come_back_in_utc_whatever_the_session_time_zone(pg_population: Any) -> None:
    _, url, ids = pg_population
    far_east = make_url(url).update_query_dict({"options": "-c timezone=Asia/Kolkata"})
    db = Database(far_east)
    try:
        with db.connect() as conn:
            assert conn.execute(text("SHOW timezone")).scalar() == "Asia/Kolkata"
        with db.session() as s:
            rows = query_results(
                s, ResultsQuery.parse(where="finished_at = '2026-01-02 03:04:05.5'", columns="job_id,finished_at")
            )
    finally:
        db.dispose()
    assert {r["job_id"] for r in rows} == {ids["s8"], ids["vref"], ids["vq"]}
    assert {r["finished_at"] for r in rows} == {fs.T1}
    assert all(r["finished_at"].tzinfo is timezone.utc for r in rows)
