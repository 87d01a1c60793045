"""A running job's lease: renewed on a heartbeat while the job runs, and the stop flag raised when the job is no
longer this worker's to run (cancelled, or taken over after a lost lease).

A worker that dies stops renewing; once its lease has run out the reaper (or a duplicate message's claim) hands
the job to another worker. The renewals of every job a process runs share one long-lived thread
(:class:`_LeaseKeeper`): starting and joining a thread per job cost about 2 ms of a no-op job's 7.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from types import TracebackType
from typing import Any

from farm.errors import FarmError

log = logging.getLogger("farm.jobs.lease")

DEFAULT_LEASE_S = 120.0


def heartbeat_interval(lease_s: float, heartbeat_s: float | None) -> float:
    """How often a lease of ``lease_s`` is renewed: ``heartbeat_s``, or a twelfth of the lease (0.2 s to 10 s)."""
    return heartbeat_s if heartbeat_s is not None else max(0.2, min(10.0, lease_s / 12))


class JobHeartbeat:
    """Renews a running job's lease every ``interval_s`` and raises the stop flag when the job is no longer
    this worker's to run (cancelled, or taken over after a lost lease).

    Args:
        db: the :class:`farm.store.db.Database` the lease lives in.
    """

    def __init__(self, db: Any, job_id: int, worker: str, lease_s: float, interval_s: float):
        self.db, self.job_id, self.worker = db, job_id, worker
        self.lease_s, self.interval_s = lease_s, interval_s
        self.stopped = threading.Event()
        self.due = 0.0
        self.failing = False  # the last renewal could not reach the database

    def __enter__(self) -> JobHeartbeat:
        self.due = time.monotonic() + self.interval_s
        _keeper().add(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        _keeper().remove(self)

    def should_stop(self) -> bool:
        return self.stopped.is_set()

    def renew(self) -> None:
        """One renewal: extend the lease; raise the stop flag when the job is no longer ours to run."""
        from farm.store import execution

        try:
            state = execution.extend_lease(self.db, self.job_id, self.worker, self.lease_s)
        except FarmError as e:
            # A database outage: the claim stays ours (the job is running under this worker whatever its lease
            # says, until another worker or the reaper takes it), so the job goes on and the next renewal tries
            # again. Said once per outage, not every beat.
            if not self.failing:
                log.warning("job %s: cannot renew its lease, still running: %s", self.job_id, e)
            self.failing = True
            return
        if self.failing:
            log.warning("job %s: lease renewed again (database reachable)", self.job_id)
            self.failing = False
        if state != "running":
            self.stopped.set()


class _LeaseKeeper:
    """The thread that renews the leases of the jobs this process runs, each on its own schedule."""

    def __init__(self) -> None:
        self._beats: dict[int, JobHeartbeat] = {}
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, beat: JobHeartbeat) -> None:
        with self._lock:
            self._beats[id(beat)] = beat
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="farm-leases", daemon=True)
                self._thread.start()
        self._changed.set()

    def remove(self, beat: JobHeartbeat) -> None:
        with self._lock:
            self._beats.pop(id(beat), None)

    def _run(self) -> None:
        while True:
            with self._lock:
                beats = list(self._beats.values())
            now = time.monotonic()
            for beat in beats:
                if beat.due <= now and not beat.stopped.is_set():
                    try:
                        beat.renew()
                    except Exception:  # noqa: BLE001 - one bad renewal must not stop every job's renewals
                        log.exception("job %s: lease renewal failed", beat.job_id)
                    beat.due = time.monotonic() + beat.interval_s
            with self._lock:
                pending = [b.due for b in self._beats.values() if not b.stopped.is_set()]
            wait_s = max(0.0, min(pending) - time.monotonic()) if pending else 3600.0
            self._changed.wait(wait_s)
            self._changed.clear()


_KEEPER: _LeaseKeeper | None = None
_KEEPER_LOCK = threading.Lock()


def _keeper() -> _LeaseKeeper:
    global _KEEPER
    with _KEEPER_LOCK:
        if _KEEPER is None:
            _KEEPER = _LeaseKeeper()
        return _KEEPER


def _forget_keeper() -> None:
    """In a forked child (a Celery pool process), the parent's keeper thread does not exist: start afresh."""
    global _KEEPER, _KEEPER_LOCK
    _KEEPER, _KEEPER_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_keeper)
