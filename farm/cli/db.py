"""``farm db``: the results database's schema (upgrade, downgrade, show the revision)."""

from __future__ import annotations

import click


@click.group()
def db() -> None:
    """The results database's schema (FARM_DATABASE_URL, default the SQLite file under FARM_HOME)."""


@db.command()
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Migrate the database up to REVISION (default: head). Creates the schema in an empty database."""
    from farm.store import migrate
    from farm.store.db import Database

    database = Database()
    before = migrate.current_revision(database)
    after = migrate.upgrade(database, revision)
    if before == after:
        click.echo(f"{database.redacted_url}: already at revision {after}")
    else:
        click.echo(f"{database.redacted_url}: upgraded from {before or 'empty'} to revision {after}")


@db.command()
@click.argument("revision")
def downgrade(revision: str) -> None:
    """Migrate the database down to REVISION ('base' drops every QuantFarm table and its data)."""
    from farm.store import migrate
    from farm.store.db import Database

    database = Database()
    before = migrate.current_revision(database)
    after = migrate.downgrade(database, revision)
    click.echo(f"{database.redacted_url}: downgraded from {before or 'empty'} to {after or 'base'}")


@db.command()
def current() -> None:
    """Print the database's schema revision and whether it is this QuantFarm's head."""
    from farm.store import migrate
    from farm.store.db import Database

    click.echo(migrate.schema_status(Database(read_only=True)).describe())
