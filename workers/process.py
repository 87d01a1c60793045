"""What a Celery pool process holds for its whole life: its database, artifact store, settings and name.

Created on first use, after the fork (a forked process must not share its parent's connections). The tasks and
the heartbeat both read it; neither imports the other.
"""

from __future__ import annotations

import logging
import os
import socket
from functools import cache
from typing import Any

log = logging.getLogger("farm.worker")


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


def pin() -> tuple[int, ...] | None:
    """Pin this pool process to cores of its own (``OMP_NUM_THREADS`` of them, as ``farm worker --threads`` sets).

    Its pool index (billiard's, reused when a process is replaced) picks its group of cores first, so a restarted
    process gets its predecessor's; the claim is host-wide (farm.quant.isolation), so two workers on one host (the
    cpu and gpu children) never share cores. When none are free the process shares them, and says so.

    Returns:
        The cores, or None.
    """
    from billiard.process import current_process

    from farm.quant.pinning import pin_process

    try:
        threads = max(1, int(os.environ.get("OMP_NUM_THREADS") or 1))
    except ValueError:
        threads = 1
    cores = pin_process(threads, prefer=getattr(current_process(), "index", None))
    if cores is None:
        log.warning(
            "pool process %s: no %d free core(s) of its own on this host; it shares them (latency figures record "
            "isolation none, or exclusive with no cores)",
            os.getpid(),
            threads,
        )
    return cores
