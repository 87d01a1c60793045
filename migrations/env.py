"""Alembic environment for QuantFarm's results database.

Where the migrations run, first match wins:

1. ``config.attributes["connection"]``: a Connection (or an Engine) handed over by code: ``farm db upgrade``,
   :mod:`farm.store.migrate`, tests. Runs inside that connection's transaction when it has one.
2. ``config.attributes["url"]``.
3. FARM_DATABASE_URL, else the default of :class:`farm.settings.Settings` (the SQLite file under FARM_HOME).

In cases 2 and 3 the engine is a :class:`farm.store.db.Database`'s (SQLite pragmas, ``postgres://`` accepted)
and the migration lock is held. Nothing here prints a password.
"""

from __future__ import annotations

import logging
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from farm.settings import Settings
from farm.store.db import PG_MIGRATION_LOCK, Database, normalize_url
from farm.store.models import Base

config = context.config
target_metadata = Base.metadata
log = logging.getLogger("alembic.env")

# Only the alembic CLI has an ini file; code that runs migrations keeps its own logging.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    return config.attributes.get("url") or os.environ.get("FARM_DATABASE_URL") or Settings.from_env().database_url


def _run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: Alembic's batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # farm.store.db makes SQLite DDL transactional (it emits BEGIN itself): a failed migration leaves nothing.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # One migrator at a time; re-entrant, so harmless when farm.store.db already holds it.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
        context.run_migrations()


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: print the SQL instead of running it."""
    url = normalize_url(_url())
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.get_backend_name() == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the given connection, engine or URL."""
    given = config.attributes.get("connection")
    if isinstance(given, Engine):
        with given.connect() as connection:
            _run_on(connection)
    elif given is not None:
        _run_on(given)
    else:
        db = Database(_url())
        log.info("Database: %s", db.redacted_url)
        try:
            with db.migration_connection() as connection:
                _run_on(connection)
        finally:
            db.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
