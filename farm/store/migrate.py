"""The results database's schema: Alembic migrations driven from Python, and the "is it at head?" check.

The migrations live in the repository's top-level ``migrations/`` directory (override: FARM_MIGRATIONS_DIR).
Every function takes a :class:`farm.store.db.Database` and hands Alembic the Database's own connection
(``config.attributes["connection"]``), taken under the migration lock, so that two processes starting on
the same new database do not both try to create it.

:func:`open_database` is how a command meets the database: read commands never change it (an empty or foreign one
is refused with the command that fixes it), writing commands create the schema in an empty one, and the
operations on an existing sweep refuse an empty one rather than create a schema that cannot hold their sweep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import inspect

import farm
from farm.errors import ConfigError, SchemaOutOfDate
from farm.store.db import Database
from farm.store.models import Base

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Connection

MIGRATIONS_DIR_ENV = "FARM_MIGRATIONS_DIR"

State = Literal["empty", "head", "behind", "unknown", "unversioned"]


def migrations_dir() -> Path:
    """Where the Alembic scripts are: FARM_MIGRATIONS_DIR, else ``migrations/`` beside the ``farm`` package.

    Returns:
        The directory holding ``env.py`` and ``versions/``.

    Raises:
        ConfigError: there is no ``env.py`` there.
    """
    configured = os.environ.get(MIGRATIONS_DIR_ENV)
    path = Path(configured) if configured else Path(farm.__file__).resolve().parent.parent / "migrations"
    if not (path / "env.py").is_file():
        raise ConfigError(f"no Alembic migrations at {path} (set {MIGRATIONS_DIR_ENV})")
    return path


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for :func:`migrations_dir`, optionally bound to an open connection.

    Args:
        connection: the connection the migrations run on (env.py reads ``config.attributes["connection"]``).

    Returns:
        The config.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest schema revision this QuantFarm knows.

    Returns:
        The head revision id.

    Raises:
        ConfigError: the migrations cannot be found or have several heads.
    """
    return _head(_script())


def current_revision(db: Database) -> str | None:
    """The database's schema revision, or None when it has none (empty, or never migrated).

    Args:
        db: the database.

    Returns:
        The revision id stored in ``alembic_version``, or None.

    Raises:
        StoreUnavailable: the database cannot be reached.
    """
    with db.connect() as conn:
        return _current(conn)


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands against this QuantFarm's migrations."""

    url: str  #: the database URL, password hidden
    current: str | None
    head: str
    #: empty: no revision and no QuantFarm tables; head: up to date; behind: an older revision this QuantFarm
    #: knows; unknown: a revision it does not know (a newer QuantFarm's); unversioned: tables but no revision.
    state: State
    tables: tuple[str, ...] = ()  #: the QuantFarm tables present in an unversioned database

    def describe(self) -> str:
        """One line for ``farm db current``."""
        return {
            "empty": f"{self.url}: empty",
            "head": f"{self.url}: revision {self.current} (head)",
            "behind": f"{self.url}: revision {self.current}, behind head {self.head}: run `farm db upgrade`",
            "unknown": f"{self.url}: revision {self.current}, unknown to this QuantFarm (its head is {self.head})",
            "unversioned": f"{self.url}: no schema revision, but QuantFarm tables ({', '.join(self.tables)})",
        }[self.state]

    def problem(self) -> str:
        """Why this QuantFarm refuses the database, and the command that fixes it."""
        return {
            "empty": f"database {self.url} has no QuantFarm schema: run `farm db upgrade`",
            "head": f"database {self.url} is at head {self.head}",
            "behind": (
                f"database {self.url} is at schema revision {self.current} but this QuantFarm needs {self.head}:"
                " run `farm db upgrade`"
            ),
            "unknown": (
                f"database {self.url} is at schema revision {self.current}, which this QuantFarm does not know"
                f" (its newest is {self.head}): it was made by a newer QuantFarm; upgrade QuantFarm"
            ),
            "unversioned": (
                f"database {self.url} has QuantFarm tables ({', '.join(self.tables)}) but no schema revision, so"
                " it was not made by QuantFarm's migrations: point FARM_DATABASE_URL at an empty database and"
                " run `farm db upgrade`"
            ),
        }[self.state]


def schema_status(db: Database) -> SchemaStatus:
    """Compare the database's schema revision with this QuantFarm's head.

    Args:
        db: the database.

    Returns:
        The status.

    Raises:
        StoreUnavailable: the database cannot be reached.
    """
    path = db.sqlite_path
    if db.read_only and path is not None and not path.exists():  # opening it read-only would fail: nothing there
        return SchemaStatus(db.redacted_url, None, head_revision(), "empty")
    with db.connect() as conn:
        return _status(conn, db.redacted_url)


def require_schema(db: Database) -> None:
    """Check that the database's schema is at head, changing nothing: what the read commands do.

    Unlike :func:`ensure_schema` it never creates the schema, takes no migration lock and writes no file, so a
    read command pointed at an empty or foreign database leaves it exactly as it was.

    Args:
        db: the database (open it with ``read_only=True`` to have the connection refuse writes too).

    Raises:
        SchemaOutOfDate: the schema is missing, behind, unknown or unversioned; the message says what to run.
        StoreUnavailable: the database cannot be reached.
    """
    if db.schema_checked:
        return
    status = schema_status(db)
    if status.state != "head":
        raise SchemaOutOfDate(status.problem())
    db.schema_checked = True


def ensure_schema(db: Database, *, auto_create: bool = True) -> None:
    """Make sure the database's schema is at head; create it in an empty database. Checked once per Database.

    Args:
        db: the database.
        auto_create: migrate an empty database (no revision, no QuantFarm tables) to head, so that the default
            SQLite file works with no setup. When False, an empty database is refused like an old one.

    Raises:
        SchemaOutOfDate: the schema is behind (or unknown, or unversioned); the message says what to run.
        StoreUnavailable: the database cannot be reached.
    """
    if db.schema_checked:
        return
    if schema_status(db).state != "head":
        # Look again under the lock: another process may have created the schema while we waited.
        with db.migration_connection() as conn:
            status = _status(conn, db.redacted_url)
            if status.state == "empty" and auto_create:
                _alembic("upgrade", conn, db, "head")
            elif status.state != "head":
                raise SchemaOutOfDate(status.problem())
    db.schema_checked = True


def open_database(*, read_only: bool = False, create: bool = True) -> Database:
    """The results database from FARM_DATABASE_URL (default: SQLite under FARM_HOME), schema checked.

    Args:
        read_only: for the read commands: the database is opened read-only and never changed, and one without
            QuantFarm's schema is refused with the command that makes it (``farm db upgrade``).
        create: create the schema in an empty database (``sweep run``, ``demo``, ``submit``); when False such a
            database is refused as for ``read_only``.

    Returns:
        The database, its schema at head.

    Raises:
        SchemaOutOfDate: the schema is missing (when it may not be created), behind, or unknown.
        StoreUnavailable: the database cannot be reached.
    """
    if read_only or not create:
        # Checked on a read-only connection even when writes follow: connecting for writes may already change
        # a foreign SQLite file (it is switched to WAL).
        checked = Database(read_only=True)
        require_schema(checked)
        if read_only:
            return checked
        checked.dispose()
    db = Database()
    ensure_schema(db)  # at head already when create is False: nothing to create
    return db


def upgrade(db: Database, revision: str = "head") -> str | None:
    """Migrate the database up to ``revision``.

    Args:
        db: the database.
        revision: target revision (``head``, an id, or a relative one such as ``+1``).

    Returns:
        The revision the database is at afterwards.

    Raises:
        ConfigError: Alembic refused (unknown revision, ...).
        StoreUnavailable: the database cannot be reached.
    """
    return _migrate("upgrade", db, revision)


def downgrade(db: Database, revision: str) -> str | None:
    """Migrate the database down to ``revision`` (``base`` drops everything).

    Args:
        db: the database.
        revision: target revision (``base``, an id, or a relative one such as ``-1``).

    Returns:
        The revision the database is at afterwards (None at base).

    Raises:
        ConfigError: Alembic refused (unknown revision, ...).
        StoreUnavailable: the database cannot be reached.
    """
    return _migrate("downgrade", db, revision)


def _migrate(direction: Literal["upgrade", "downgrade"], db: Database, revision: str) -> str | None:
    db.schema_checked = False
    with db.migration_connection() as conn:
        _alembic(direction, conn, db, revision)
        return _current(conn)


def _alembic(direction: Literal["upgrade", "downgrade"], conn: Connection, db: Database, revision: str) -> None:
    from alembic import command
    from alembic.util import CommandError

    run: Any = command.upgrade if direction == "upgrade" else command.downgrade
    try:
        run(alembic_config(conn), revision)
    except CommandError as e:
        raise ConfigError(f"database {db.redacted_url}: cannot {direction} to {revision}: {e}") from e


def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(alembic_config())
    except CommandError as e:
        raise ConfigError(f"bad migrations in {migrations_dir()}: {e}") from e


def _head(script: ScriptDirectory) -> str:
    from alembic.util import CommandError

    try:
        head = script.get_current_head()
    except CommandError as e:  # several heads: two migrations were written on top of the same one
        raise ConfigError(f"bad migrations in {script.dir}: {e}") from e
    if head is None:
        raise ConfigError(f"no migrations in {script.dir}")
    return head


def _current(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def _status(conn: Connection, url: str) -> SchemaStatus:
    from alembic.util import CommandError

    script = _script()
    head = _head(script)
    current = _current(conn)
    if current == head:
        return SchemaStatus(url, current, head, "head")
    if current is None:
        tables = tuple(sorted(set(inspect(conn).get_table_names()) & set(Base.metadata.tables)))
        return SchemaStatus(url, None, head, "unversioned" if tables else "empty", tables)
    try:
        known = script.get_revision(current) is not None
    except CommandError:
        known = False
    return SchemaStatus(url, current, head, "behind" if known else "unknown")
