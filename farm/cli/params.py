"""Click parameter types (and option parsers) the commands share: every integer that reaches SQL is bounded here, once.

A Python int has no upper bound; SQLite's INTEGER and PostgreSQL's bigint stop at 2**63 - 1, and a larger value
fails in the driver (``OverflowError``) instead of as a user's mistake. Bounding the option makes it one line
naming the value, exit status 2, before any database is opened.
"""

from __future__ import annotations

from typing import Any

import click

from farm.errors import ConfigError

#: The largest integer SQLite and PostgreSQL (bigint) store.
SQL_INT_MAX = 2**63 - 1
#: The most worker processes or threads one command starts.
MAX_PROCESSES = 1024

#: A sweep or job id.
ID = click.IntRange(1, SQL_INT_MAX)
#: A row count (``--limit``), 0 allowed.
COUNT = click.IntRange(0, SQL_INT_MAX)
#: A row count of at least 1.
POSITIVE_COUNT = click.IntRange(1, SQL_INT_MAX)
#: Worker processes (``--jobs``, ``--concurrency``) or torch threads.
PROCESSES = click.IntRange(1, MAX_PROCESSES)
#: A random seed (what torch.manual_seed and a sweep spec's ``seed`` accept).
SEED = click.IntRange(-(2**63), SQL_INT_MAX)


class QueueName(click.ParamType):
    """A queue (pool) name, checked by farm.routing.check_queue_name: the one rule producer and worker share."""

    name = "queue"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from farm.errors import ConfigError
        from farm.routing import check_queue_name

        try:
            return check_queue_name(str(value))
        except ConfigError as e:
            self.fail(str(e), param, ctx)


QUEUE = QueueName()


def parse_model_output(text: str | None) -> str | int | None:
    """``--model-output``: an index when it is a number, else a name.

    Raises:
        ConfigError: an empty value.
    """
    if text is None:
        return None
    if not text.strip():
        raise ConfigError("--model-output: expected an output name (a dict key) or index (0, 1, ...)")
    text = text.strip()
    return int(text) if text.isascii() and text.isdecimal() else text  # "²" and "-1" are names
