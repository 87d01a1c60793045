"""The filter grammar: parsing, precedence, types, errors and their messages; then its SQL on SQLite (LIKE's
special characters, numbers as numbers, NULLs, date-times, injection attempts) and query_results."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.dialects import postgresql, sqlite

from farm.errors import ConfigError, NotFound
from farm.store.columns import RESULT_COLUMNS, RESULTS_FLAT, parse_columns
from farm.store.db import Database
from farm.store.filter_ast import And, ColumnRef, Compare, InList, IsNull, IsTrue, Like, Not, Or
from farm.store.filter_parser import MAX_CONDITIONS, MAX_DEPTH, MAX_VALUES
from farm.store.filters import OrderKey, parse_order_by, parse_where, where_clause
from farm.store.migrate import upgrade
from farm.store.models import Job
from farm.store.results import ResultsQuery, fetch_results, query_results
from tests import filterkit as fs

UTC = timezone.utc


def err(text: str, source: str = "--where") -> str:
    with pytest.raises(ConfigError) as e:
        parse_where(text, source=source)
    message = str(e.value)
    assert "\n" not in message
    return message


# -- parsing -------------------------------------------------------------------------------------------------


def test_empty_or_blank_means_no_filter() -> None:
    assert parse_where(None) is None
    assert parse_where("") is None
    assert parse_where("  \n\t") is None


def test_precedence_not_binds_tighter_than_and_tighter_than_or() -> None:
    a, b, c = Compare("bits", "=", 1), Compare("bits", "=", 2), Compare("bits", "=", 3)
    assert parse_where("bits = 1 OR bits = 2 AND bits = 3") == Or((a, And((b, c))))
    assert parse_where("bits = 1 AND bits = 2 OR bits = 3") == Or((And((a, b)), c))
    assert parse_where("NOT bits = 1 AND bits = 2") == And((Not(a), b))
    assert parse_where("NOT bits = 1 OR bits = 2") == Or((Not(a), b))
    assert parse_where("NOT (bits = 1 OR bits = 2)") == Not(Or((a, b)))
    assert parse_where("(bits = 1 OR bits = 2) AND bits = 3") == And((Or((a, b)), c))
    assert parse_where("NOT NOT bits = 1") == Not(Not(a))
    assert parse_where("((((bits = 1))))") == a
    assert parse_where("bits = 1 OR bits = 2 OR bits = 3") == Or((a, b, c))


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("bits = 8", Compare("bits", "=", 8)),
        ("bits == 8", Compare("bits", "=", 8)),
        ("bits != 8", Compare("bits", "!=", 8)),
        ("bits <> 8", Compare("bits", "!=", 8)),
        ("bits < 8", Compare("bits", "<", 8)),
        ("bits <= 8", Compare("bits", "<=", 8)),
        ("bits > 8", Compare("bits", ">", 8)),
        ("bits >= 8", Compare("bits", ">=", 8)),
        ("8 < bits", Compare("bits", ">", 8)),  # a value on the left: the comparison is turned around
        ("0.5 >= accuracy", Compare("accuracy", "<=", 0.5)),
        ("'static' = method", Compare("method", "=", "static")),
        ("model LIKE 'res%'", Like("model", "res%")),
        ("model NOT LIKE 'res%'", Not(Like("model", "res%"))),
        ("model ILIKE 'RES%'", Like("model", "RES%", ignore_case=True)),
        ("model NOT ILIKE 'RES%'", Not(Like("model", "RES%", ignore_case=True))),
        ("bits IN (8, 4)", InList("bits", (8, 4))),
        ("bits NOT IN (8)", Not(InList("bits", (8,)))),
        ("method IN ('static', \"dynamic\")", InList("method", ("static", "dynamic"))),
        ("bits IS NULL", IsNull("bits")),
        ("bits IS NOT NULL", Not(IsNull("bits"))),
        ("simulated", IsTrue("simulated")),
        ("NOT simulated", Not(IsTrue("simulated"))),
        ("simulated = true", Compare("simulated", "=", True)),
        ("simulated != FALSE", Compare("simulated", "!=", False)),
        ("simulated = 1", Compare("simulated", "=", True)),
        ("simulated = 0", Compare("simulated", "=", False)),
        ("simulated IN (TRUE)", InList("simulated", (True,))),
        ("accuracy > accuracy_fp32", Compare("accuracy", ">", ColumnRef("accuracy_fp32"))),
        ("bits < accuracy", Compare("bits", "<", ColumnRef("accuracy"))),  # integers and floats compare
        ("model = method", Compare("model", "=", ColumnRef("method"))),
        ("finished_at <= finished_at", Compare("finished_at", "<=", ColumnRef("finished_at"))),
    ],
)
def test_every_operator(text: str, tree: Any) -> None:
    assert parse_where(text) == tree


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("8", 8),
        ("-8", -8),
        ("+8", 8),
        ("0.25", 0.25),
        ("-0.25", -0.25),
        (".5", 0.5),
        ("5.", 5.0),
        ("1e3", 1000.0),
        ("2.5E-3", 0.0025),
        ("-1e+2", -100.0),
        ("99999999999999999999", 1e20),  # past 64 bits: compared as a float
        ("'0.5'", 0.5),  # a quoted number is a number for a numeric column
        ("'-3'", -3),
        ('"1e-2"', 0.01),
    ],
)
def test_number_literals(literal: str, value: float) -> None:
    tree = parse_where(f"accuracy = {literal}")
    assert tree == Compare("accuracy", "=", value)
    assert isinstance(tree, Compare) and type(tree.value) is type(value)


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("'static'", "static"),
        ("'it''s'", "it's"),
        ('"it\'s"', "it's"),
        ('"say ""hi"""', 'say "hi"'),
        ("''", ""),
        ("'a\\b'", "a\\b"),  # no backslash escapes in strings
        ("'50%_off'", "50%_off"),
        ("'8'", "8"),  # text stays text
        ("'résumé'", "résumé"),
        ("'x; DROP TABLE jobs; --'", "x; DROP TABLE jobs; --"),
    ],
)
def test_string_literals_and_quote_escaping(literal: str, value: str) -> None:
    assert parse_where(f"model = {literal}") == Compare("model", "=", value)


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("'2026-01-31'", datetime(2026, 1, 31, tzinfo=UTC)),
        ("'2026-01-31T12:30:00'", datetime(2026, 1, 31, 12, 30, tzinfo=UTC)),  # no offset: UTC
        ("'2026-01-31 12:30:00.25'", datetime(2026, 1, 31, 12, 30, 0, 250000, tzinfo=UTC)),
        ("'2026-01-31T12:30:00Z'", datetime(2026, 1, 31, 12, 30, tzinfo=UTC)),
        ("'2026-01-31T12:30:00+02:00'", datetime(2026, 1, 31, 10, 30, tzinfo=UTC)),
    ],
)
def test_datetime_literals_become_utc(literal: str, value: datetime) -> None:
    tree = parse_where(f"finished_at > {literal}")
    assert tree == Compare("finished_at", ">", value)
    assert isinstance(tree, Compare) and isinstance(tree.value, datetime)
    assert tree.value.utcoffset() == timedelta(0)


def test_keywords_and_column_names_are_case_insensitive_values_are_not() -> None:
    assert parse_where("BITS in (8) and Model like 'R%' Or NOT Simulated is null") == Or(
        (And((InList("bits", (8,)), Like("model", "R%"))), Not(IsNull("simulated")))
    )
    assert parse_where("model = 'ResNet'") != parse_where("model = 'resnet'")
    assert parse_where("simulated = True") == parse_where("simulated = TRUE") == parse_where("simulated = true")


def test_whitespace_is_free() -> None:
    assert parse_where("bits>=-1 AND(model='x')") == And((Compare("bits", ">=", -1), Compare("model", "=", "x")))
    assert parse_where("\n bits\t=\n8 ") == Compare("bits", "=", 8)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("acuracy > 0.9", "--where: unknown column 'acuracy' at position 1; did you mean 'accuracy'? (columns: "),
        ("latency_p50 < 3", "did you mean 'latency_p50_ms'?"),
        ("zzz = 1", "unknown column 'zzz' at position 1 (columns: sweep_id, sweep_name, job_id,"),
        ("accuracy > 'abc'", "--where: accuracy is numeric; 'abc' at position 12 is not a number"),
        ("bits = TRUE", "--where: bits is numeric; TRUE at position 8 is not a number"),
        ("model = 8", "--where: model is text; put the value at position 9 in quotes: '8'"),
        ("model = TRUE", "model is text; put the value at position 9 in quotes: 'TRUE'"),
        ("simulated = 'yes'", "--where: simulated is true/false; 'yes' at position 13 is not (write TRUE or FALSE)"),
        ("simulated = 2", "simulated is true/false; 2 at position 13 is not"),
        ("simulated < TRUE", "--where: simulated is true/false: compare it with = or !=, not '<' (position 11)"),
        ("finished_at > 'yesterday'", "finished_at is a date-time; 'yesterday' at position 15 is not an ISO date-time"),
        ("finished_at > 2026", "finished_at is a date-time; write 2026 at position 15 as a quoted ISO date-time"),
        ("model = bits", "--where: can't compare model (text) with bits (an integer) at position 7"),
        ("simulated = bits", "can't compare simulated (true/false) with bits (an integer)"),
        ("bits LIKE '8'", "--where: LIKE needs a text column; bits is an integer (position 6)"),
        ("accuracy ILIKE '8'", "ILIKE needs a text column; accuracy is a number"),
        ("model LIKE method", "--where: LIKE needs a quoted pattern at position 12, found 'method'"),
        ("model LIKE 'x\\'", "--where: LIKE pattern at position 12 ends with a lone backslash"),
        ("bits IN (8, 'a')", "--where: bits is numeric; 'a' at position 13 is not a number"),
        ("method IN ('a', 3)", "method is text; put the value at position 17 in quotes: '3'"),
        ("bits IN ()", "--where: IN needs at least one value (position 10)"),
        ("bits IN (method)", "--where: expected a value at position 10: columns are not allowed in an IN list"),
        ("bits IN (NULL)", "NULL at position 10 can't be compared: write bits IS NULL or bits IS NOT NULL"),
        ("bits IN 8", "--where: expected '(' after IN at position 9, found '8'"),
        ("bits IN (8 4)", "--where: expected ',' or ')' in the IN list at position 12, found '4'"),
        ("bits = NULL", "--where: NULL at position 8 can't be compared: write bits IS NULL or bits IS NOT NULL"),
        ("NULL != bits", "NULL at position 1 can't be compared"),
        ("bits IS 8", "--where: expected NULL after IS at position 9, found '8'"),
        ("bits IS NOT TRUE", "expected NULL after IS NOT at position 13, found 'TRUE'"),
        ("1 = 1", "--where: comparison at position 3 needs a column on one side"),
        ("'a' LIKE 'a'", "--where: LIKE at position 5 needs a column on its left, not \"'a'\""),
        ("8 IS NULL", "IS at position 3 needs a column on its left"),
        ("model", "--where: expected an operator after 'model' at position 6, found the end"),
        ("bits 8", "expected an operator after 'bits' at position 6, found '8'"),
        ("'static'", "--where: a condition needs a column: found \"'static'\" at position 1"),
        ("model NOT = 'x'", "--where: expected LIKE, ILIKE or IN after NOT at position 11, found '='"),
        ("(bits = 8", "--where: unbalanced parentheses at position 1: this '(' is never closed"),
        ("bits = 8)", "--where: unbalanced parentheses at position 9: this ')' has no matching '('"),
        ("(bits = 8)) AND (model = 'x'", "unbalanced parentheses at position 11: this ')' has no matching '('"),
        ("((bits = 8) AND (model = 'x')", "unbalanced parentheses at position 1: this '(' is never closed"),
        ("()", "--where: expected a condition at position 2, found ')'"),
        ("AND bits = 8", "--where: expected a condition at position 1, found 'AND'"),
        ("bits = 8 AND", "--where: expected a condition at position 13, found the end"),
        ("bits = 8 model = 'x'", "--where: unexpected 'model' at position 10; expected AND, OR or the end"),
        ("bits = 8 OR OR bits = 4", "expected a condition at position 13, found 'OR'"),
        ("bits = ", "--where: expected a column or a value at position 8, found the end"),
        ("bits >> 8", "--where: expected a column or a value at position 7, found '>'"),
        ("model = 'abc", "--where: unterminated string starting at position 9"),
        ('model = "abc', "unterminated string starting at position 9"),
        ("bits = 8; DROP TABLE jobs", "--where: unexpected character ';' at position 9"),
        ("bits = 8 -- comment", "--where: unexpected character '-' at position 10"),
        ("bits = 8 /* c */", "--where: unexpected character '/' at position 10"),
        ("bits = 1.2.3", "--where: malformed number '1.2.3' at position 8"),
        ("bits = 8e", "--where: malformed number '8e' at position 8"),
        ("bits = 0x10", "malformed number '0x10' at position 8"),
        ("accuracy > 1e999", "--where: number 1e999 at position 12 is out of range"),
        ("metrics.accuracy > 1", "--where: unknown column 'metrics.accuracy' at position 1"),
        ("a.b.c = 1", "unexpected character '.' at position 4"),
        ("params.epoch = 3", "unknown method parameter 'params.epoch' at position 1; did you mean 'params.epochs'?"),
        ("params = 3", "params is a JSON object: filter on one of its fields, e.g. params.epochs = 3"),
        ("params.epochs = bits", "a params field compares with a value, not with a column (position 15)"),
        ("params.epochs = NULL", "write params.epochs IS NULL or params.epochs IS NOT NULL"),
        ("`bits` = 8", "unexpected character '`' at position 1"),
        ("model = 'a\x00'", "--where: NUL character at position 11"),
        ("model = '\udcff'", "--where: invalid character at position 10 (not valid Unicode)"),
    ],
)
def test_errors_are_one_line_with_their_position(text: str, message: str) -> None:
    assert message in err(text)


def test_a_double_quoted_name_is_a_string_not_a_column() -> None:
    # SQL would read "bits" as a column; here double quotes make strings (as MLflow's filters do), so the
    # column is compared with the text 'bits' - which for a numeric column is refused, not silently wrong.
    assert parse_where('model = "bits"') == Compare("model", "=", "bits")
    assert 'bits is numeric; "model" at position 8 is not a number' in err('bits = "model"')


def test_source_names_the_argument() -> None:
    assert err("bits = 'x'", source="where").startswith("where: bits is numeric")
    with pytest.raises(ConfigError, match="^where: expected a filter expression"):
        parse_where(3, source="where")  # type: ignore[arg-type]


def test_limits() -> None:
    deep = "(" * (MAX_DEPTH + 1) + "bits = 1" + ")" * (MAX_DEPTH + 1)
    assert "expression nests too deeply at position" in err(deep)
    assert parse_where("(" * MAX_DEPTH + "bits = 1" + ")" * MAX_DEPTH) == Compare("bits", "=", 1)
    assert "nests too deeply" in err("NOT " * (MAX_DEPTH + 1) + "simulated")
    many = " OR ".join(["bits = 1"] * (MAX_CONDITIONS + 1))
    assert f"too many conditions at position {len(many) - 7} (at most {MAX_CONDITIONS})" in err(many)
    values = "bits IN (" + ", ".join(["1"] * (MAX_VALUES + 1)) + ")"
    assert f"too many values at position {len(values) - 1} (at most {MAX_VALUES})" in err(values)
    assert "expression is too long" in err("bits = 1 OR " * 1000 + "bits = 1")


def test_order_by() -> None:
    assert parse_order_by(None) == ()
    assert parse_order_by("latency_p50_ms") == (OrderKey("latency_p50_ms"),)
    assert parse_order_by(["latency_p50_ms asc", "accuracy DESC"]) == (
        OrderKey("latency_p50_ms"),
        OrderKey("accuracy", descending=True),
    )
    assert parse_order_by(["Model, bits desc", " "]) == (OrderKey("model"), OrderKey("bits", descending=True))
    with pytest.raises(ConfigError, match=r"^--order-by: unknown column 'acuracy'; did you mean 'accuracy'\?"):
        parse_order_by(["acuracy desc"])
    with pytest.raises(ConfigError, match=r"^--order-by: 'accuracy up': expected 'column', 'column asc' or"):
        parse_order_by(["accuracy up"])
    with pytest.raises(ConfigError, match="^--order-by: 'a b c': expected"):
        parse_order_by("a b c")
    with pytest.raises(ConfigError, match="^order_by: column 'bits' is listed twice"):
        parse_order_by(["bits", "BITS desc"], source="order_by")
    with pytest.raises(ConfigError, match="^order_by: expected 'column"):
        parse_order_by([3], source="order_by")  # type: ignore[list-item]


def test_columns() -> None:
    assert parse_columns(None) == RESULT_COLUMNS
    assert parse_columns("model, Bits,accuracy,") == ("model", "bits", "accuracy")
    assert parse_columns(["job_id"]) == ("job_id",)
    with pytest.raises(ConfigError, match=r"^--columns: unknown column 'acurracy'; did you mean 'accuracy'\?"):
        parse_columns("model,acurracy")
    with pytest.raises(ConfigError, match="^--columns: column 'model' is listed twice"):
        parse_columns("model,MODEL")
    with pytest.raises(ConfigError, match="^columns: no columns given"):
        parse_columns(" , ", source="columns")
    with pytest.raises(ConfigError, match="^columns: expected column names"):
        parse_columns([1, 2], source="columns")  # type: ignore[list-item]


def test_values_are_bind_parameters_and_identifiers_come_from_the_column_map() -> None:
    hostile = "x'; DROP TABLE jobs; --"
    tree = parse_where(f"model = '{hostile.replace(chr(39), chr(39) * 2)}' OR model LIKE '%''--%'")
    assert tree is not None
    for dialect in (sqlite.dialect(), postgresql.psycopg.dialect()):  # type: ignore[attr-defined]
        compiled = (
            select(RESULTS_FLAT.c.job_id).where(where_clause(tree, dialect=dialect.name)).compile(dialect=dialect)
        )
        sql = str(compiled)
        assert "DROP" not in sql and "--" not in sql and "'x" not in sql
        assert hostile in compiled.params.values()


def test_text_ordering_uses_code_point_order_on_postgresql() -> None:
    tree = parse_where("model < 'b'")
    assert tree is not None
    pg = postgresql.psycopg.dialect()  # type: ignore[attr-defined]
    assert 'COLLATE "C"' in str(
        select(RESULTS_FLAT.c.job_id).where(where_clause(tree, dialect="postgresql")).compile(dialect=pg)
    )
    assert "COLLATE" not in str(
        select(RESULTS_FLAT.c.job_id).where(where_clause(tree, dialect="sqlite")).compile(dialect=sqlite.dialect())
    )


# -- on SQLite -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Database, dict[str, int]]]:
    path: Path = tmp_path_factory.mktemp("filters-unit") / "farm.db"
    db = Database(f"sqlite:///{path}")
    upgrade(db)
    ids = fs.seed_population(db)
    yield db, ids
    db.dispose()


def keys(population: tuple[Database, dict[str, int]], where: str, **kwargs: Any) -> list[tuple[int, str, Any]]:
    """(sweep_id, population key, batch_size) of the rows a filter selects."""
    db, ids = population
    names = {v: k for k, v in ids.items()}
    query = ResultsQuery.parse(where=where, columns="sweep_id,job_id,batch_size", **kwargs)
    with db.session() as s:
        return [(r["sweep_id"], names[r["job_id"]], r["batch_size"]) for r in query_results(s, query)]


def models(population: tuple[Database, dict[str, int]], where: str) -> set[str]:
    db, _ = population
    with db.session() as s:
        return {r["model"] for r in query_results(s, ResultsQuery.parse(where=where, columns="model"))}


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("model LIKE 'resnet'", {"resnet"}),  # case-sensitive: not 'ResNet'
        ("model LIKE 'RESNET'", set()),
        ("model ILIKE 'RESNET'", {"resnet", "ResNet"}),
        ("model LIKE 'r%'", {"resnet", "résumé"}),
        ("model LIKE 'r_sum_'", {"résumé"}),  # _ is one character, é included
        ("model ILIKE 'RÉSUMÉ'", set()),  # ILIKE folds ASCII letters only
        ("model ILIKE 'R_SUM_'", {"résumé"}),
        ("model LIKE '50%'", {"50%_off"}),
        ("model LIKE '50\\%'", set()),  # an escaped % is a literal %
        ("model LIKE '50\\%\\_off'", {"50%_off"}),
        ("model LIKE '%\\_%'", {"50%_off"}),
        ("model LIKE '_'", set()),
        ("model LIKE ''", {""}),
        ("model LIKE '%'", {"resnet", "ResNet", "it's", "50%_off", "a\\b", "résumé", "", "vit"}),
        ("model LIKE 'a\\\\b'", {"a\\b"}),  # \\ is a literal backslash
        ("model LIKE 'a\\b'", set()),  # \b is a literal b
        ("model LIKE 'it''s'", {"it's"}),
        ("method LIKE 'x*y'", {"a\\b"}),  # GLOB's * is a literal star in LIKE
        ("method LIKE 'x?y'", set()),
        ("backend LIKE 'q?[z]'", {"a\\b"}),  # GLOB's ? and [ are literal too
        ("backend LIKE 'q_[z]'", {"a\\b"}),
        ("backend LIKE 'q?[_]'", {"a\\b"}),
        ("backend LIKE '%[%'", {"a\\b"}),
        ("backend LIKE '[z]'", set()),
        ("hardware ILIKE 'ärger%'", set()),  # Ä is not ASCII: not folded
        ("hardware LIKE '%\"quoted\"'", {"a\\b"}),
        ("model NOT LIKE '%e%'", {"it's", "50%_off", "a\\b", "", "vit", "résumé"}),  # é is not e
    ],
)
def test_like_is_case_sensitive_and_escapes_with_backslash(population: Any, where: str, expected: set[str]) -> None:
    assert models(population, where) == expected


def test_numbers_compare_as_numbers(population: Any) -> None:
    # As text, '8' > '10' and '-1' < '2' < '8': numbers must not be compared that way.
    assert {k for _, k, _ in keys(population, "bits < 10")} == {"s8", "S4", "dyn", "pct", "bsl", "vq"}
    assert {k for _, k, _ in keys(population, "bits > 2.5")} == {"s8", "S4", "dyn", "vq"}
    assert {k for _, k, _ in keys(population, "size_bytes > 4000000000")} == {"uni"}  # past 32 bits
    assert {k for _, k, _ in keys(population, "bits = '8'")} == {"s8", "dyn", "vq"}  # quoted numbers coerce
    assert {k for _, k, _ in keys(population, "sqnr_db < -1")} == {"S4"}
    assert {k for _, k, _ in keys(population, "accuracy_drop < 0")} == {"vq"}  # computed: fp32 - accuracy
    assert {k for _, k, _ in keys(population, "speedup > 2")} == {"s8", "vq"}  # computed in the view


def test_null_semantics_are_sql_three_valued_logic(population: Any) -> None:
    with_bits = {k for _, k, _ in keys(population, "bits IS NOT NULL")}
    assert {k for _, k, _ in keys(population, "bits IS NULL")} == {"ref", "uni", "nul", "vref"}
    # A comparison with NULL is unknown, and NOT unknown is unknown: neither side selects a NULL row.
    assert {k for _, k, _ in keys(population, "bits > 4")} | {k for _, k, _ in keys(population, "NOT bits > 4")} == (
        with_bits
    )
    assert {k for _, k, _ in keys(population, "bits != 8")} == {"S4", "pct", "bsl"}
    # unknown OR true is true; unknown AND false is false.
    assert "ref" in {k for _, k, _ in keys(population, "bits > 4 OR model = 'resnet'")}
    assert "ref" in {k for _, k, _ in keys(population, "NOT (bits > 4 AND model = 'x')")}
    assert "ref" not in {k for _, k, _ in keys(population, "NOT (bits > 4 AND model = 'resnet')")}
    # NOT IN over a NULL value is unknown too.
    assert "ref" not in {k for _, k, _ in keys(population, "bits NOT IN (4)")}
    # A job without metrics has simulated NULL: neither "simulated" nor "NOT simulated".
    assert "pct" not in {k for _, k, _ in keys(population, "simulated OR NOT simulated")}
    assert {k for _, k, _ in keys(population, "simulated")} == {"S4"}


def test_booleans_and_datetimes(population: Any) -> None:
    assert keys(population, "simulated = 1") == keys(population, "simulated = TRUE") == keys(population, "simulated")
    assert {k for _, k, _ in keys(population, "finished_at > '2026-01-02T03:04:05Z'")} == {"s8", "uni", "vref", "vq"}
    # 05:34:05.5 at +02:30 is 03:04:05.5 UTC.
    assert {k for _, k, _ in keys(population, "finished_at = '2026-01-02T05:34:05.5+02:30'")} == {"s8", "vref", "vq"}
    assert {k for _, k, _ in keys(population, "finished_at < '2026-01-01'")} == {"S4"}
    assert {k for _, k, _ in keys(population, "finished_at >= '2026-06-01 00:00:00'")} == {"uni"}


def test_column_to_column_comparisons(population: Any) -> None:
    assert {k for _, k, _ in keys(population, "accuracy > accuracy_fp32")} == {"vq"}
    assert {k for _, k, _ in keys(population, "latency_p90_ms = latency_p50_ms")} == {"s8", "vq"}
    assert {k for _, k, _ in keys(population, "bits > calibration_size")} == {"S4"}


@pytest.mark.parametrize(
    "where",
    [
        "model = 'x''; DROP TABLE jobs; --'",  # a literal with a quote in it: harmless
        "error = 'can''t; DROP TABLE jobs; --'",
        "model = 'x' OR 1=1",
        "model = 'x\\'; DROP TABLE jobs; --'",
        'model = "x"; DROP TABLE jobs',
    ],
)
def test_injection_attempts_are_literals_or_refused(population: Any, where: str) -> None:
    db, _ = population
    try:
        selected = keys(population, where)
    except ConfigError as e:
        assert "\n" not in str(e)
    else:
        assert {k for _, k, _ in selected} <= {"pct"}
    with db.connect() as conn:
        assert {"jobs", "sweeps", "metrics", "sweep_jobs", "artifacts"} <= set(inspect(conn).get_table_names())
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == len(fs.JOBS)


@pytest.mark.parametrize(
    "where",
    ["model = 'x'; DROP TABLE jobs; --'", "1=1 OR model = 'x'--", "model = 'x' --", "bits = 1; SELECT 1"],
)
def test_classic_injections_are_refused(where: str) -> None:
    assert err(where).startswith("--where: unexpected character")


def test_matching_a_value_with_a_quote_finds_it(population: Any) -> None:
    assert {k for _, k, _ in keys(population, "error = 'can''t; DROP TABLE jobs; --'")} == {"pct"}
    assert {k for _, k, _ in keys(population, 'worker = "w\'3"')} == {"pct"}


# -- query_results -------------------------------------------------------------------------------------------


def test_query_results_orders_nulls_last_and_by_code_point(population: Any) -> None:
    db, _ = population
    with db.session() as s:
        rows = query_results(s, ResultsQuery.parse(order_by="model desc", columns="model", sweep=[1]))
        assert [r["model"] for r in rows] == ["vit"] * 4 + ["résumé"] + ["resnet"] * 4 + ["ResNet", "50%_off"]
        models_ = [r["model"] for r in query_results(s, ResultsQuery.parse(order_by="model", columns="model"))]
        assert models_ == sorted(models_)  # Python sorts str by code point, as SQLite and PostgreSQL "C" do
        drops = [r["accuracy_drop"] for r in query_results(s, ResultsQuery.parse(order_by="accuracy_drop desc"))]
        present = [d for d in drops if d is not None]
        assert present == sorted(present, reverse=True) and drops[len(present) :] == [None] * (
            len(drops) - len(present)
        )
        asc = [r["accuracy_drop"] for r in query_results(s, ResultsQuery.parse(order_by="accuracy_drop"))]
        assert asc[-1] is None and asc[0] is not None


def test_query_results_columns_limit_sweeps_and_default_order(population: Any) -> None:
    db, ids = population
    with db.session() as s:
        rows = query_results(s, ResultsQuery.parse(sweep=2, columns=["job_id", "sweep_name"], limit=3))
        assert [list(r) for r in rows] == [["job_id", "sweep_name"]] * 3
        assert {r["sweep_name"] for r in rows} == {"beta's 50%_off"}
        every = query_results(s, ResultsQuery.parse(sweep=[1, 2]))
        assert [(r["sweep_id"], r["job_id"]) for r in every] == sorted((r["sweep_id"], r["job_id"]) for r in every)
        assert ids["orphan"] not in {r["job_id"] for r in every}
        assert query_results(s, ResultsQuery.parse(limit=0)) == []
        assert fetch_results(s, sweep_ids=[2]) == query_results(s, ResultsQuery.parse(sweep=2))
        first = query_results(s, ResultsQuery.parse(where="job_key LIKE 'ref%'", limit=1))[0]
        assert first["finished_at"] == fs.T0 and first["finished_at"].tzinfo is not None
        assert first["simulated"] is False


def test_unknown_sweeps_are_not_found(population: Any) -> None:
    db, _ = population
    with db.session() as s, pytest.raises(NotFound, match="^no sweep with id 42$"):
        query_results(s, ResultsQuery.parse(sweep=[1, 42]))
    with db.session() as s, pytest.raises(NotFound, match="^no sweeps with ids 42, 43$"):
        query_results(s, ResultsQuery.parse(sweep=[42, 43, 42]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(sweep="1"), "^sweep: expected a sweep id \\(int\\) or a list of them, got '1'$"),
        (dict(sweep=[1, True]), "^sweep: expected a sweep id"),
        (dict(sweep=1.5), "^sweep: expected a sweep id"),
        (dict(limit=-1), "^limit: expected a row count"),
        (dict(limit=True), "^limit: expected a row count"),
        (dict(where="bits = 'x'"), "^where: bits is numeric"),
        (dict(columns="nope"), "^columns: unknown column 'nope'"),
        (dict(order_by="nope"), "^order_by: unknown column 'nope'"),
        (dict(where="bits = 'x'", cli=True), "^--where: bits is numeric"),
    ],
)
def test_results_query_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ResultsQuery.parse(**kwargs)
