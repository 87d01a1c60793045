"""``farm artifacts``: the artifact store (FARM_ARTIFACTS_URL) as the results database sees it."""

from __future__ import annotations

import re
from typing import Any

import click

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: Ten years: a grace period past this is a typo, and would overflow a datetime.
MAX_GRACE_S = 10 * 365 * 86400.0


class Duration(click.ParamType):
    """A duration: seconds (``90``), or a number with a unit ``s``, ``m``, ``h`` or ``d`` (``30m``, ``1.5h``)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            match = _DURATION.match(str(value))
            if match is None:
                self.fail(f"{str(value)[:40]!r} is not a duration (for example 90, 30m, 1h, 2d)", param, ctx)
            seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
        if not 0 <= seconds <= MAX_GRACE_S:
            self.fail(f"{value!r} is out of range (0 to 3650d)", param, ctx)
        return seconds


@click.group()
def artifacts() -> None:
    """The artifact store (FARM_ARTIFACTS_URL, default FARM_HOME/artifacts)."""


@artifacts.command()
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option(
    "--older-than",
    "grace_s",
    type=Duration(),
    default="1h",
    show_default=True,
    help="Keep unreferenced objects younger than this (an upload that is still being recorded).",
)
def gc(dry_run: bool, grace_s: float) -> None:
    """Delete the objects under jobs/ that no artifacts row points at.

    Never deleted: an object a row points at, an object of an attempt that still holds its running job, and
    any object younger than --older-than. Counts and bytes are printed before anything is deleted.
    """
    from farm.artifact_gc import collect, plan_gc
    from farm.artifacts import check_store_url, open_store
    from farm.cli.render import human_bytes, out
    from farm.store.migrate import open_database

    store = open_store(check_store_url())
    db = open_database(read_only=True)
    try:
        plan = plan_gc(db, store, grace_s=grace_s)
    finally:
        db.dispose()
    kept = plan.referenced + plan.live + plan.young
    out.print(
        f"{store.url}/jobs: {plan.listed} objects ({human_bytes(plan.listed_bytes)}); "
        f"{len(plan.orphans)} orphans ({human_bytes(plan.orphan_bytes)}); kept {kept}: {plan.referenced} recorded, "
        f"{plan.live} of running attempts, {plan.young} younger than {grace_s:g} s"
    )
    if dry_run:
        for obj in plan.orphans:
            out.print(f"  would delete {obj.uri} ({human_bytes(obj.size_bytes)})")
        return
    deleted = collect(store, plan)
    out.print(f"deleted {deleted} objects ({human_bytes(plan.orphan_bytes)})")
