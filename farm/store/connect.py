"""Opening the results database for a command: the schema checked (or created) before anything reads it.

One place decides how each kind of command meets a database: read commands never change it (an empty or foreign
one is refused with the command that fixes it), writing commands create the schema in an empty one, and the
operations on an existing sweep refuse an empty one rather than create a schema that cannot hold their sweep.
"""

from __future__ import annotations

from farm.store.db import Database
from farm.store.migrate import ensure_schema, require_schema


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
