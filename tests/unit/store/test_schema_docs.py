"""docs/schema.md against the real schema, so that the page cannot drift from the models again.

Every table and column of ``Base.metadata`` (with its type, nullability, key and foreign key), every index and
unique constraint of a migrated database, every column of the view ``results_flat`` (in the order of
``farm.store.columns.RESULT_COLUMNS``) and every migration revision must be documented; the quoted view
definition must be the one the migrations create; every example query must run.

The page's format, which this test parses: one ``### `table` — ...`` heading per table under ``## Tables``,
each followed by a markdown table whose header starts with ``column`` and whose first cell on each row is
exactly one column name in backticks; the same for the view under ``## The view `results_flat```, and for the
indexes under ``## Indexes``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    inspect,
    text,
)
from sqlalchemy.exc import DBAPIError
from store_support import seed

from farm.store.columns import COLUMN_KINDS, RESULT_COLUMNS
from farm.store.db import Database
from farm.store.migrate import alembic_config, upgrade
from farm.store.models import Base

DOC = Path(__file__).resolve().parents[3] / "docs" / "schema.md"
TABLES_SECTION = "Tables"
VIEW_SECTION = "The view `results_flat`"
INDEXES_SECTION = "Indexes"
EXAMPLES_SECTION = "Example queries"
REVISIONS_SECTION = "Revisions"
ALEMBIC_TABLE = "alembic_version"  # Alembic's, documented but not in the models

NAME_CELL = re.compile(r"^`([a-z0-9_]+)`$")
VIEW_TYPES = {
    "int": "integer",
    "float": "float",
    "bool": "boolean",
    "text": "text",
    "datetime": "timestamptz",
    "json": "json",
}


# --- parsing the page ---------------------------------------------------------------------------------------


@dataclass
class Section:
    level: int
    title: str
    lines: list[str] = field(default_factory=list)  # body, fenced code included


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


def sections(doc: str) -> list[Section]:
    """The page split at its headings (a ``#`` inside a fenced block is not a heading)."""
    out = [Section(0, "")]
    fenced = False
    for line in doc.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"^(#{1,6})\s+(.*?)\s*$", line)
        if heading:
            out.append(Section(len(heading.group(1)), heading.group(2)))
        else:
            out[-1].lines.append(line)
    return out


def split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())
    return [c.strip().replace("\\|", "|") for c in cells[1:-1]]


def tables(section: Section) -> list[Table]:
    """The markdown tables of a section's body (outside fenced code)."""
    found: list[Table] = []
    block: list[str] = []
    fenced = False
    for line in [*section.lines, ""]:
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.lstrip().startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2 and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", block[1].strip()):
            found.append(Table(split_row(block[0]), [split_row(b) for b in block[2:]]))
        block = []
    return found


def code_blocks(section: Section, language: str) -> list[str]:
    blocks, current, fenced = [], [], False
    for line in section.lines:
        if not fenced and line.strip() == f"```{language}":
            fenced, current = True, []
        elif fenced and line.strip() == "```":
            fenced = False
            blocks.append("\n".join(current))
        elif fenced:
            current.append(line)
    return blocks


def named_rows(table: Table, where: str) -> dict[str, dict[str, str]]:
    """Rows by the name in their first cell, each as {header: cell}; a row must name exactly one thing."""
    out: dict[str, dict[str, str]] = {}
    for row in table.rows:
        match = NAME_CELL.match(row[0])
        assert match, f"{where}: the first cell must be one name in backticks, got {row[0]!r}"
        name = match.group(1)
        assert name not in out, f"{where}: {name} is documented twice"
        assert len(row) == len(table.header), (
            f"{where}: row {name} has {len(row)} cells, the header {len(table.header)}"
        )
        out[name] = dict(zip(table.header, row, strict=True))
    return out


class Page:
    def __init__(self, doc: str) -> None:
        self.sections = sections(doc)

    def section(self, title: str, level: int = 2) -> Section:
        found = [s for s in self.sections if s.level == level and s.title == title]
        assert len(found) == 1, f"docs/schema.md needs exactly one {'#' * level} {title} heading"
        return found[0]

    def subsections(self, title: str) -> Iterator[Section]:
        """The level-3 sections under the level-2 section ``title``."""
        start = self.sections.index(self.section(title))
        for s in self.sections[start + 1 :]:
            if s.level <= 2:
                return
            if s.level == 3:
                yield s

    def column_table(self, section: Section) -> dict[str, dict[str, str]]:
        found = [t for t in tables(section) if t.header and t.header[0] == "column"]
        assert len(found) == 1, f"section {section.title!r} needs exactly one table whose header starts with 'column'"
        return named_rows(found[0], section.title)

    def documented_tables(self) -> dict[str, dict[str, dict[str, str]]]:
        out = {}
        for s in self.subsections(TABLES_SECTION):
            match = re.match(r"^`([a-z_][a-z0-9_]*)`", s.title)
            assert match, f"a table's heading must start with its name in backticks: {s.title!r}"
            out[match.group(1)] = self.column_table(s)
        return out

    def first_column_table(self, title: str, header: str, level: int = 2) -> dict[str, dict[str, str]]:
        found = [t for t in tables(self.section(title, level)) if t.header and t.header[0] == header]
        assert len(found) == 1, f"section {title!r} needs exactly one table whose header starts with {header!r}"
        return named_rows(found[0], title)


@pytest.fixture(scope="module")
def page() -> Page:
    return Page(DOC.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """An SQLite database migrated to head with the store tests' small data set."""
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('schema-docs') / 'farm.db'}")
    upgrade(db)
    seed(db)
    yield db
    db.dispose()


# --- what the models say ------------------------------------------------------------------------------------


def doc_type(col: Column[object]) -> str:
    """How the page spells a column's type."""
    t = col.type
    for cls, name in ((Text, "text"), (BigInteger, "bigint"), (Integer, "integer"), (Float, "float")):
        if isinstance(t, cls):
            return name
    if isinstance(t, String):
        return f"varchar({t.length})"
    if isinstance(t, Boolean):
        return "boolean"
    if isinstance(t, DateTime):
        return "timestamptz" if t.timezone else "timestamp"
    if isinstance(t, JSON):
        return "json"
    raise AssertionError(f"{col.table.name}.{col.name}: no documented spelling for {t!r}; add one here")


def type_tokens(cell: str) -> list[str]:
    """``integer, null, FK `sweeps.id` (on delete set null)`` -> its comma-separated parts (not inside parens)."""
    tokens, depth, current = [], 0, ""
    for ch in cell:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            tokens.append(current.strip())
            current = ""
        else:
            current += ch
    return [*tokens, current.strip()]


MODEL_TABLES = sorted(Base.metadata.tables)


# --- the tests ----------------------------------------------------------------------------------------------


def test_the_page_documents_exactly_the_models_tables(page: Page) -> None:
    documented = set(page.documented_tables())
    assert documented - {ALEMBIC_TABLE} == set(MODEL_TABLES), (
        f"missing from docs/schema.md: {sorted(set(MODEL_TABLES) - documented)}; "
        f"documented but not in the models: {sorted(documented - set(MODEL_TABLES) - {ALEMBIC_TABLE})}"
    )
    assert ALEMBIC_TABLE in documented


@pytest.mark.parametrize("table_name", MODEL_TABLES)
def test_every_column_of_every_table_is_documented(page: Page, table_name: str) -> None:
    documented = page.documented_tables()[table_name]
    columns = set(Base.metadata.tables[table_name].columns.keys())
    assert set(documented) == columns, (
        f"{table_name}: missing from docs/schema.md: {sorted(columns - set(documented))}; "
        f"documented but not in the model: {sorted(set(documented) - columns)}"
    )


@pytest.mark.parametrize("table_name", MODEL_TABLES)
def test_documented_types_keys_and_nullability_match_the_models(page: Page, table_name: str) -> None:
    documented = page.documented_tables()[table_name]
    problems = []
    for col in Base.metadata.tables[table_name].columns:
        row = documented.get(col.name)
        if row is None:
            continue  # reported by the test above
        tokens = type_tokens(row["type"])
        want: dict[str, object] = {
            "type": doc_type(col),
            "null": bool(col.nullable) and not col.primary_key,
            "PK": col.primary_key,
            "unique": bool(col.unique),
            "FK": sorted(f"`{fk.column.table.name}.{fk.column.name}`" for fk in col.foreign_keys),
            "on delete": sorted((fk.ondelete or "").lower() for fk in col.foreign_keys if fk.ondelete),
        }
        fks = [t for t in tokens if t.startswith("FK ")]
        got: dict[str, object] = {
            "type": tokens[0],
            "null": "null" in tokens,
            "PK": "PK" in tokens,
            "unique": "unique" in tokens,
            "FK": sorted(t.split()[1] for t in fks),
            "on delete": sorted(m.group(1) for t in fks if (m := re.search(r"\(on delete ([a-z ]+)\)", t))),
        }
        problems += [
            f"{col.name} {k}: documented {got[k]!r}, the model has {want[k]!r}" for k in want if got[k] != want[k]
        ]
        if not row["unit"] or not row["meaning"]:
            problems.append(f"{col.name}: give a unit ('—' for none) and a meaning")
    assert not problems, f"{table_name} in docs/schema.md:\n" + "\n".join(problems)


def test_every_index_and_unique_constraint_is_documented(page: Page, seeded_db: Database) -> None:
    documented = page.first_column_table(INDEXES_SECTION, "index")
    actual: dict[str, tuple[str, tuple[str, ...], bool]] = {}
    with seeded_db.connect() as conn:
        insp = inspect(conn)
        for table_name in set(insp.get_table_names()) - {ALEMBIC_TABLE}:
            for index in insp.get_indexes(table_name):
                if not index.get("duplicates_constraint"):
                    cols = tuple(str(c) for c in index["column_names"])
                    actual[str(index["name"])] = (table_name, cols, bool(index["unique"]))
            for unique in insp.get_unique_constraints(table_name):
                actual[str(unique["name"])] = (table_name, tuple(unique["column_names"]), True)
    assert set(documented) == set(actual), (
        f"indexes missing from docs/schema.md: {sorted(set(actual) - set(documented))}; "
        f"documented but not in a migrated database: {sorted(set(documented) - set(actual))}"
    )
    for name, (table_name, cols, unique) in actual.items():
        on = documented[name]["on"]
        match = re.match(r"^`(\w+)\(([^)]*)\)`(, unique)?$", on)
        assert match, f"{name}: write its 'on' cell as `table(col, ...)`, adding ', unique' for a unique one: {on!r}"
        got = (match.group(1), tuple(c.strip() for c in match.group(2).split(",")), bool(match.group(3)))
        assert got == (table_name, cols, unique), (
            f"{name}: documented on {got}, the database has {(table_name, cols, unique)}"
        )


def test_every_view_column_is_documented_in_the_views_order(page: Page, seeded_db: Database) -> None:
    documented = page.first_column_table(VIEW_SECTION, "column")
    assert list(documented) == list(RESULT_COLUMNS), (
        f"results_flat in docs/schema.md: missing {sorted(set(RESULT_COLUMNS) - set(documented))}, "
        f"not in the view {sorted(set(documented) - set(RESULT_COLUMNS))}, or out of the view's order"
    )
    with seeded_db.connect() as conn:
        in_database = list(conn.execute(text("SELECT * FROM results_flat WHERE 1 = 0")).keys())
    assert in_database == list(RESULT_COLUMNS)
    problems = [
        f"{name}: type {row['type']!r}, farm.store.columns says {VIEW_TYPES[COLUMN_KINDS[name]]!r}"
        for name, row in documented.items()
        if row["type"] != VIEW_TYPES[COLUMN_KINDS[name]]
    ]
    problems += [f"{name}: give a unit ('—' for none)" for name, row in documented.items() if not row["unit"]]
    assert not problems, "results_flat in docs/schema.md:\n" + "\n".join(problems)


def _normalised(sql: str) -> str:
    return " ".join(sql.split()).rstrip(";").strip()


def test_the_quoted_view_definition_is_the_one_the_migrations_create(page: Page, seeded_db: Database) -> None:
    quoted = [b for b in code_blocks(page.section(VIEW_SECTION), "sql") if b.lstrip().upper().startswith("CREATE VIEW")]
    assert len(quoted) == 1, "the view's section needs exactly one ```sql block with its CREATE VIEW"
    with seeded_db.connect() as conn:
        created = conn.execute(text("SELECT sql FROM sqlite_master WHERE type = 'view' AND name = 'results_flat'"))
        actual = created.scalar_one()
    assert _normalised(quoted[0]) == _normalised(actual)


def test_every_migration_revision_is_listed(page: Page) -> None:
    documented = page.first_column_table(REVISIONS_SECTION, "revision", level=3)
    revisions = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    assert set(documented) == revisions
    for revision, row in documented.items():
        assert row["file"].startswith(f"`{revision}_"), f"revision {revision}: file cell {row['file']!r}"


def _statements(block: str) -> list[str]:
    return [s.strip() for s in block.split(";") if s.strip() and not s.strip().startswith("--")]


def test_the_example_queries_run(page: Page, seeded_db: Database) -> None:
    blocks = code_blocks(page.section(EXAMPLES_SECTION), "sql")
    statements = [s for block in blocks for s in _statements(block)]
    assert len(statements) >= 5, "the examples section lost its queries"
    with seeded_db.connect() as conn:
        for statement in statements:
            try:
                result = conn.exec_driver_sql(statement)
            except DBAPIError as e:  # an unknown table or column, a syntax error
                pytest.fail(f"an example in docs/schema.md fails: {e.orig}\n{statement}")
            assert result.returns_rows, statement
            result.fetchall()
