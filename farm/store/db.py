"""The results database and its sessions: the ONE class that owns SQLAlchemy engines (made by
:mod:`farm.store.engines`, with the per-dialect connection hooks).

Everything that talks to the database goes through a :class:`Database`; its :meth:`Database.session` commits
on success, rolls back on failure and turns "cannot reach the database" into
:class:`~farm.errors.StoreUnavailable`, one line that names the URL without its password. The schema functions
(``ensure_schema``, ``upgrade``, ...) live in :mod:`farm.store.migrate`, which builds on this module.

SQLite is the zero-setup default and is written by several processes at once (the local runner's workers), so
every connection gets foreign keys, WAL (readers never block the writer), a 30 s busy timeout, and write
sessions start with ``BEGIN IMMEDIATE``: a transaction that reads then writes takes the write lock up front
and waits for it, instead of failing with "database is locked" when it tries to upgrade its read lock.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from farm.errors import ConfigError, StoreUnavailable
from farm.settings import Settings
from farm.store.engines import BEGIN_OPTION, create_database_engine

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent first runs there rely on SQLite's own locking.
    fcntl = None  # type: ignore[assignment]

#: Key of the PostgreSQL advisory lock that serialises migrations ("QFMI").
PG_MIGRATION_LOCK = 0x51464D49
# sqlite3 reports every failure as OperationalError, bugs included ("no such table", syntax errors); only
# these mean "the file cannot be used right now".
_SQLITE_UNAVAILABLE = (
    "database is locked",
    "unable to open database",
    "disk i/o error",
    "database or disk is full",
    "readonly database",
)


def redact_url(url: str | URL) -> str:
    """A database URL safe to print: its password replaced by ``***``.

    Args:
        url: any database URL, parseable or not.

    Returns:
        The URL with the password hidden.
    """
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; ``postgres://`` and ``postgresql://`` mean psycopg 3 (``postgresql+psycopg://``).

    Args:
        url: the URL as the user wrote it.

    Returns:
        The parsed URL.

    Raises:
        ConfigError: ``url`` is not a database URL.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:
        raise ConfigError(f"not a database URL: {redact_url(url)}", source="FARM_DATABASE_URL") from e
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


class Database:
    """One results database: an engine, its sessions, and the per-process "schema checked" flag.

    Args:
        url: database URL; default ``Settings.from_env().database_url`` (FARM_DATABASE_URL or the SQLite file
            under FARM_HOME). The parent directory of an SQLite file is created.
        read_only: never change the database (the read commands): an SQLite file is opened ``mode=ro`` with
            ``query_only`` (nothing created, not even the file or its directory, and no switch to WAL); a
            PostgreSQL session has ``default_transaction_read_only`` on.

    Raises:
        ConfigError: the URL cannot be parsed, or names a database that has no driver installed.
        StoreUnavailable: the SQLite file's directory cannot be created.
    """

    def __init__(self, url: str | URL | None = None, *, read_only: bool = False) -> None:
        #: The parsed URL, password included: hand this (not ``str(url)``, which shows ``***``) to another
        #: process. Print :attr:`redacted_url`.
        self.url: URL = normalize_url(url or Settings.from_env().database_url)
        self.redacted_url: str = self.url.render_as_string(hide_password=True)
        self.dialect: str = self.url.get_backend_name()
        self.read_only = read_only
        #: Set by farm.store.migrate.ensure_schema once the schema is known to be at head.
        self.schema_checked = False
        self.engine: Engine = self._create_engine()
        # A read-only SQLite connection cannot take the write lock (BEGIN IMMEDIATE): every session reads.
        writer = self.engine if read_only else self.engine.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
        # expire_on_commit=False: rows returned from a session stay readable after it is closed.
        self._write_sessions = sessionmaker(bind=writer, expire_on_commit=False)
        self._read_sessions = sessionmaker(bind=self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Database({self.redacted_url!r})"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or None (PostgreSQL, in-memory SQLite, ``file:`` URIs)."""
        name = self.url.database
        if self.dialect != "sqlite" or not name or name == ":memory:" or name.startswith("file:"):
            return None
        return Path(name)

    @contextmanager
    def session(self, *, write: bool = True) -> Iterator[Session]:
        """A session in one transaction: committed when the block ends, rolled back if it raises.

        Args:
            write: on SQLite, take the write lock when the transaction starts (``BEGIN IMMEDIATE``). Pass
                False for read-only work so that it never waits for writers.

        Yields:
            The session.

        Raises:
            StoreUnavailable: the database cannot be reached (or stays locked past the busy timeout).
        """
        factory = self._write_sessions if write else self._read_sessions
        with self.translate_errors(), factory.begin() as session:
            yield session

    def ping(self) -> None:
        """One round trip (``SELECT 1``).

        Raises:
            StoreUnavailable: the database cannot be reached.
        """
        with self.autocommit() as conn:
            conn.exec_driver_sql("SELECT 1")

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A Core connection without a transaction: each statement commits on its own.

        For single statements on the hot path (claiming a job): no BEGIN and COMMIT round trips around the one
        conditional UPDATE, which is atomic by itself.

        Raises:
            StoreUnavailable: the database cannot be reached.
        """
        with self.translate_errors(), self.engine.connect() as conn:
            if self.dialect == "sqlite":
                # The sqlite3 connection already runs without implicit transactions (see _sqlite_on_connect); an
                # AUTOCOMMIT isolation level would be reset when the connection goes back to the pool, turning
                # sqlite3's own implicit BEGIN back on. Skipping our explicit BEGIN is all it takes here.
                yield conn.execution_options(**{BEGIN_OPTION: "NONE"})
            else:
                yield conn.execution_options(isolation_level="AUTOCOMMIT")

    @contextmanager
    def connect(self, *, write: bool = False) -> Iterator[Connection]:
        """A Core connection in one transaction, committed when the block ends, rolled back if it raises.

        Args:
            write: as for :meth:`session` (default False here: most Core use is reading).

        Yields:
            The connection, its transaction begun.

        Raises:
            StoreUnavailable: the database cannot be reached.
        """
        with self.translate_errors(), self.engine.connect() as conn:
            if write:
                conn = conn.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
            with conn.begin():
                yield conn

    @contextmanager
    def migration_connection(self) -> Iterator[Connection]:
        """A write connection that holds the migration lock: one migrator at a time, across processes.

        SQLite: an exclusive ``flock`` on ``<file>.lock`` (so a second process waits rather than racing to
        create the tables) and ``BEGIN IMMEDIATE``. PostgreSQL: ``pg_advisory_xact_lock`` in the transaction.

        Yields:
            The connection; its transaction commits when the block ends.

        Raises:
            StoreUnavailable: the database cannot be reached.
        """
        with self._file_lock(), self.connect(write=True) as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
            yield conn

    @contextmanager
    def translate_errors(self) -> Iterator[None]:
        """Turn a connectivity error raised in the block into :class:`StoreUnavailable`; others propagate.

        Raises:
            StoreUnavailable: the block failed because the database cannot be reached.
        """
        try:
            yield
        except DBAPIError as e:
            reason = self._unavailable_reason(e)
            if reason is None:
                raise
            raise StoreUnavailable(f"database {self.redacted_url} is unreachable: {reason}") from e
        except Exception as e:
            psycopg = sys.modules.get("psycopg")
            if psycopg is None or not isinstance(e, psycopg.OperationalError | psycopg.InterfaceError):
                raise
            raise StoreUnavailable(f"database {self.redacted_url} is unreachable: {self._one_line(e)}") from e

    def dispose(self) -> None:
        """Close every pooled connection (the Database stays usable: new connections open on demand)."""
        self.engine.dispose()

    # -- internals ------------------------------------------------------------------------------------------

    def _create_engine(self) -> Engine:
        return create_database_engine(self.url, read_only=self.read_only, sqlite_path=self.sqlite_path)

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        path = self.sqlite_path
        if path is None or fcntl is None:
            yield
            return
        try:
            lock = open(path.with_name(path.name + ".lock"), "a")
        except OSError as e:
            raise StoreUnavailable(f"database {self.redacted_url} is unreachable: {self._one_line(e)}") from e
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _unavailable_reason(self, e: BaseException) -> str | None:
        """Why ``e`` means "the database cannot be used now", or None when it is some other failure."""
        if isinstance(e, DBAPIError):
            if e.connection_invalidated:
                return self._one_line(e.orig or e)
            if not isinstance(e, OperationalError | InterfaceError):
                return None
            reason = self._one_line(e.orig or e)
            if self.dialect == "sqlite" and not any(s in reason.lower() for s in _SQLITE_UNAVAILABLE):
                return None
            return reason
        return None

    def _one_line(self, e: BaseException) -> str:
        # Drivers write multi-line messages (psycopg lists every address it tried); the CLI prints one line.
        reason = " ".join(str(e).split()) or type(e).__name__
        if self.url.password:
            reason = reason.replace(str(self.url.password), "***")
        return reason[:500]
