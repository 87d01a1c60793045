"""Property tests of the filter grammar on SQLite, against a Python evaluator with SQL's three-valued logic.

A generated expression either parses and selects exactly the rows (in exactly the order) the reference selects,
or - when it holds an invalid piece - is refused with a ConfigError. Nothing else: never a raw SQLAlchemy or
database error, and the tables are intact afterwards whatever was typed. The same properties run on
PostgreSQL in tests/integration/test_filters_pg.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from farm.errors import ConfigError
from farm.store.columns import COLUMN_KINDS
from farm.store.db import Database
from farm.store.filters import parse_where
from farm.store.migrate import upgrade
from farm.store.models import Job, Metric, Sweep
from farm.store.results import ResultsQuery, query_results
from tests import filterkit as fs

# The autouse FARM_HOME fixture is function-scoped; the database here is the module's and never changes.
# No example database: nothing written into the checkout (a failure prints its example, and a seed to replay it).
PROPERTY = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Database, list[dict[str, Any]]]]:
    """A migrated SQLite database holding the population, and the view rows it must give."""
    path: Path = tmp_path_factory.mktemp("filters") / "farm.db"
    db = Database(f"sqlite:///{path}")
    upgrade(db)
    ids = fs.seed_population(db)
    yield db, fs.expected_rows(ids)
    db.dispose()


def table_counts(db: Database) -> tuple[int, int, int]:
    with db.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Job, Metric, Sweep))  # type: ignore[return-value]


def test_the_kinds_are_the_documented_ones_and_cover_the_view(population: Any) -> None:
    db, _ = population
    assert COLUMN_KINDS == fs.KINDS
    with db.connect() as conn:
        from sqlalchemy import text

        assert list(conn.execute(text("SELECT * FROM results_flat WHERE 1 = 0")).keys()) == list(COLUMN_KINDS)


def test_the_population_gives_the_computed_view_rows(population: Any) -> None:
    db, expected = population
    with db.session() as s:
        got = query_results(s, ResultsQuery())
    want = fs.sort_rows(expected, [])
    assert [fs.row_key(r) for r in got] == [fs.row_key(r) for r in want]
    for g, w in zip(got, want, strict=True):
        assert g == w, fs.row_key(w)  # floats exactly: accuracy_drop and speedup are IEEE arithmetic on both sides
    # The population has what the properties need: NULLs, ties, negatives, tricky strings.
    assert any(r["speedup"] is None for r in got) and any(r["speedup"] is not None for r in got)
    assert sum(r["accuracy"] == 0.85 for r in got) >= 2
    assert any((r["sqnr_db"] or 0) < 0 for r in got) and any((r["bits"] or 0) < 0 for r in got)
    assert {"it's", "50%_off", "a\\b", "résumé", "ResNet", ""} <= {r["model"] for r in got}


@settings(PROPERTY, max_examples=400)
@given(data=st.data())
def test_generated_filters_select_what_three_valued_logic_selects(population: Any, data: st.DataObject) -> None:
    db, rows = population
    tree, text = data.draw(fs.expressions(rows), label="expression")
    sortable = sorted(c for c, kind in fs.KINDS.items() if kind != "json")  # params has no order
    order = data.draw(st.lists(st.tuples(st.sampled_from(sortable), st.booleans()), max_size=2,
                               unique_by=lambda k: k[0]), label="order")  # fmt: skip
    limit = data.draw(st.none() | st.integers(0, 12), label="limit")
    order_by = [f"{c} {'desc' if d else 'asc'}" for c, d in order]
    if not fs.is_valid(tree):
        with pytest.raises(ConfigError) as e:
            fs.select_keys(db, text, order_by, limit)
        assert "\n" not in str(e.value) and str(e.value).startswith("where: ")
        return
    got = fs.select_keys(db, text, order_by, limit)
    assert got == fs.reference_keys(rows, lambda r: fs.evaluate(tree, r), order, limit), text


@settings(PROPERTY, max_examples=300)
@given(data=st.data())
def test_mangled_expressions_are_refused_cleanly_or_agree_with_the_parsed_tree(
    population: Any, data: st.DataObject
) -> None:
    db, rows = population
    text = data.draw(fs.soups() | fs.mutants(rows), label="expression")
    try:
        tree = parse_where(text, source="where")
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    got = fs.select_keys(db, text)
    keep = (lambda r: True) if tree is None else (lambda r: fs.evaluate_parsed(tree, r))
    assert got == fs.reference_keys(rows, keep, [], None), text


@settings(PROPERTY, max_examples=150)
@given(text=st.text(st.sampled_from("ab'\"();,-=<>!%_\\ \n1.eINOTLKSUAD*") | st.characters(codec="utf-8"), max_size=30))
def test_arbitrary_text_never_raises_anything_but_config_error(population: Any, text: str) -> None:
    db, rows = population
    try:
        tree = parse_where(text, source="where")
    except ConfigError:
        return
    got = fs.select_keys(db, text)
    keep = (lambda r: True) if tree is None else (lambda r: fs.evaluate_parsed(tree, r))
    assert got == fs.reference_keys(rows, keep, [], None), text


def test_the_tables_survive_every_expression_above(population: Any) -> None:
    # Runs after the properties in this module (pytest keeps file order): nothing they sent dropped or changed
    # a row.
    db, rows = population
    assert table_counts(db) == (len(fs.JOBS), sum(len(j.get("metrics", [])) for j in fs.JOBS), len(fs.SWEEPS))
    with db.session() as s:
        assert len(query_results(s, ResultsQuery())) == len(rows)
