"""The SQLAlchemy engines of the results database, and the per-dialect hooks their connections get.

SQLite is written by several processes at once (the local runner's workers), so every connection gets foreign
keys, WAL (readers never block the writer), a 30 s busy timeout, and write sessions start with ``BEGIN
IMMEDIATE``. PostgreSQL connections idle for a while are pinged before reuse; a read-only database's sessions
are READ ONLY on the server.
"""

from __future__ import annotations

import os
import sqlite3
import time
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, InvalidatePoolError

from farm.errors import ConfigError, StoreUnavailable

#: How long an SQLite writer waits for another process's write lock before giving up.
BUSY_TIMEOUT_S = 30.0
#: How long a PostgreSQL connection attempt may take (unless the URL sets connect_timeout).
CONNECT_TIMEOUT_S = 10
#: A pooled PostgreSQL connection idle this long is pinged before it is handed out again.
PING_AFTER_IDLE_S = 2.0
_IDLE_SINCE = "farm_idle_since"
#: Execution option read by the SQLite "begin" hook: "IMMEDIATE" for write transactions, "NONE" for
#: autocommit, else deferred.
BEGIN_OPTION = "farm_sqlite_begin"


def create_database_engine(url: URL, *, read_only: bool, sqlite_path: Path | None) -> Engine:
    """An engine with this farm's per-dialect connection settings.

    Args:
        url: the parsed database URL.
        read_only: the engine never writes (SQLite ``mode=ro`` + ``query_only``; PostgreSQL READ ONLY sessions).
        sqlite_path: the SQLite file (None for an in-memory database or another dialect).

    Returns:
        The engine; its connections are dropped in forked children.

    Raises:
        ConfigError: no driver for the URL's scheme.
        StoreUnavailable: the SQLite file's directory cannot be created.
    """
    dialect = url.get_backend_name()
    redacted = url.render_as_string(hide_password=True)
    connect_args: dict[str, Any] = {}
    if dialect == "sqlite":
        connect_args["timeout"] = BUSY_TIMEOUT_S
        path = sqlite_path
        if read_only:
            return _create_read_only_sqlite_engine(url, path)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreUnavailable(
                    f"database {redacted} is unreachable: cannot create {path.parent}: {e.strerror}"
                ) from e
    elif dialect == "postgresql":
        if "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        engine = create_engine(url, connect_args=connect_args)
    except (ArgumentError, ImportError) as e:  # an unknown scheme, or its driver is not installed
        problem = f"no database driver for {redacted} ({e}); use sqlite:/// or postgresql://"
        raise ConfigError(problem, source="FARM_DATABASE_URL") from e
    if dialect == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    else:
        _ping_after_idle(engine)
        if read_only:
            event.listen(engine, "connect", _postgresql_read_only)
    _dispose_in_forked_children(engine)
    return engine


def _create_read_only_sqlite_engine(url: URL, path: Path | None) -> Engine:
    # mode=ro: a missing file is an error, not a new empty database; query_only: no statement may write.
    # No WAL switch (it rewrites the file's header): a database already in WAL mode is read as such.
    if path is not None:
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        engine = create_engine(
            url,
            creator=lambda: sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False),
        )
    else:
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
    event.listen(engine, "connect", _sqlite_on_connect_read_only)
    event.listen(engine, "begin", _sqlite_on_begin)
    _dispose_in_forked_children(engine)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # sqlite3 must not emit BEGIN itself (it skips it before SELECT and DDL): _sqlite_on_begin does.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        _enable_wal(cursor)
        # In WAL mode NORMAL syncs at checkpoints, not at every commit: a crash of the process loses nothing,
        # a power cut may lose the last commits (the jobs then rerun), and each commit costs no fsync.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _sqlite_on_connect_read_only(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA query_only = ON")
    finally:
        cursor.close()


def _enable_wal(cursor: Any) -> None:
    # Turning a new file to WAL takes a lock that SQLite does not wait for (the busy timeout does not apply):
    # when several processes open a brand-new database at once, one may fail at once with "database is locked".
    # Retry until the busy timeout instead. On a file already in WAL mode this is a no-op.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_on_begin(conn: Connection) -> None:
    options = conn.get_execution_options()
    if options.get(BEGIN_OPTION) == "NONE":  # Database.autocommit: each statement on its own
        return
    conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(BEGIN_OPTION) == "IMMEDIATE" else "BEGIN")


def _ping_after_idle(engine: Engine) -> None:
    """Check a pooled server connection before handing it out, when it sat idle for PING_AFTER_IDLE_S or more.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: a round trip (about 0.1 ms) before each of the two
    statements every job makes, 7% of a no-op job's bookkeeping. A connection used moments ago is alive (one
    that died since fails its statement, is invalidated by the pool, and the job retries as for any outage);
    one that sat idle may have been closed by a database restart or an idle timeout, and is replaced here
    unseen.
    """

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    dialect = engine.dialect  # not the engine: a listener holding it would keep it alive past disposal

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:  # new, or used moments ago
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as e:
            if not dialect.is_disconnect(e, dbapi_connection, None):
                raise
            # Closed under us: a restart closes them all, so the pool drops every one and connects afresh.
            raise InvalidatePoolError(f"pooled connection is dead: {e}") from e


def _postgresql_read_only(dbapi_connection: Any, _record: Any) -> None:
    """Every transaction of this connection is READ ONLY: the server refuses any write. A session setting, not a
    startup parameter (poolers such as PgBouncer refuse ``options``, and a URL's own ``options`` would drop it)."""
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    finally:
        dbapi_connection.autocommit = autocommit


def _dispose_in_forked_children(engine: Engine) -> None:
    # A forked worker must not reuse its parent's sockets or SQLite handles: drop them (without closing
    # them, which would close the parent's) so that the child opens its own.
    if not hasattr(os, "register_at_fork"):
        return
    ref = weakref.ref(engine)

    def after_fork() -> None:
        alive = ref()
        if alive is not None:
            alive.dispose(close=False)

    os.register_at_fork(after_in_child=after_fork)
