"""What a Celery pool process holds for its whole life: its database, artifact store, settings and name.

Created on first use, after the fork (a forked process must not share its parent's connections). The tasks and
the heartbeat both read it; neither imports the other.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from typing import Any


@cache
def resources() -> dict[str, Any]:
    """This pool process's database, artifact store, settings and name (created once, on first use)."""
    from farm.artifacts import open_store
    from farm.settings import FarmSettings
    from farm.store.db import Database

    return {
        "db": Database(),
        "store": open_store(),
        "farm": FarmSettings.from_env(),
        "name": f"{socket.gethostname()}:{os.getpid()}",
    }
