"""Worker heartbeats: each Celery pool process keeps its row in the workers table fresh.

The row says which queues it serves, what the machine can do, which job it runs now, and when it last
answered; ``farm workers`` reads it. Job leases are renewed separately, by the job's own heartbeat.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown

log = logging.getLogger("farm.worker")

#: The job this process runs now (set by the task around execute_job).
current_job: int | None = None
_stop = threading.Event()


def _identity() -> dict[str, Any]:
    queues = [q for q in os.environ.get("FARM_WORKER_QUEUES", "").split(",") if q]
    if not queues:
        from workers.app import app

        queues = sorted(app.amqp.queues.consume_from or {}) or ["cpu"]
    try:
        capabilities = json.loads(os.environ.get("FARM_WORKER_CAPABILITIES", "") or "{}")
    except json.JSONDecodeError:
        capabilities = {}
    return {"hostname": socket.gethostname(), "pid": os.getpid(), "queues": queues, "capabilities": capabilities}


def beat_once(db: Any, name: str, identity: dict[str, Any], state: str | None = None) -> None:
    from farm.store import fleet

    fleet.record_heartbeat(
        db, name, current_job_id=current_job, state=state or ("busy" if current_job is not None else "idle"), **identity
    )


def _loop(interval_s: float) -> None:
    from farm.errors import FarmError
    from workers.process import resources

    rt = resources()
    identity = _identity()
    failing = False
    while True:
        try:
            beat_once(rt["db"], rt["name"], identity)
        except FarmError as e:  # a database outage: said once, not every beat; the jobs run on
            if not failing:
                log.warning("heartbeat failed (retrying every %g s): %s", interval_s, e)
            failing = True
        else:
            if failing:
                log.warning("heartbeat: database reachable again")
            failing = False
        if _stop.wait(interval_s):
            return


@worker_process_init.connect
def _start(**_: Any) -> None:
    from farm.settings import FarmSettings

    try:
        _set_torch_threads()
    except Exception as e:  # noqa: BLE001 - the heartbeat must start whatever happens here
        log.warning("could not set torch threads: %s", e)
    threading.Thread(
        target=_loop, args=(FarmSettings.from_env().heartbeat_s,), name="farm-heartbeat", daemon=True
    ).start()


def _set_torch_threads() -> None:
    """Fix this pool process's torch threads (OMP_NUM_THREADS, as `farm worker` sets it; else 1).

    torch defaults to every core in each process; a pool of N processes would then oversubscribe the
    machine N times over, during calibration and fine-tuning too (the benchmark fixes its own threads).
    """
    if "torch" not in sys.modules:  # a worker without the engine
        return
    import torch

    try:
        threads = max(1, int(os.environ.get("OMP_NUM_THREADS") or 1))
    except ValueError:
        threads = 1
    torch.set_num_threads(threads)


@worker_process_shutdown.connect
def _shutdown(**_: Any) -> None:
    _stop.set()
    try:
        from workers.process import resources

        rt = resources()
        beat_once(rt["db"], rt["name"], _identity(), state="stopped")
    except Exception:  # noqa: BLE001 - best effort on the way out; a stale heartbeat says the same
        pass
