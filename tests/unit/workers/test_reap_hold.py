"""The reaper holds off after a database outage: a lease that ran out while no worker could renew is no proof
that its worker died (bench/chaos.py's db-drop rounds charged live workers a loss before)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from farm.errors import StoreUnavailable
from workers import runtime


class FlakyDb:
    """A database that is away while ``down`` is set (ping and every reap raise StoreUnavailable)."""

    def __init__(self) -> None:
        self.down = False
        self.pings = 0

    def ping(self) -> None:
        self.pings += 1
        if self.down:
            raise StoreUnavailable("database is unreachable")


def test_leases_are_left_alone_until_one_lease_after_the_outage_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    db = FlakyDb()
    reaped: list[float] = []

    def reap(db_: Any, app: Any, max_attempts: int, sweep_id: Any = None, store: Any = None) -> tuple[int, int]:
        if db.down:
            raise StoreUnavailable("database is unreachable")
        reaped.append(time.monotonic())
        return 0, 0

    monkeypatch.setattr("workers.dispatch.reap", reap)
    monkeypatch.setattr("workers.dispatch.resend_lost", lambda *a, **k: 0)
    farm = SimpleNamespace(max_attempts=3, requeue_after_s=600.0)
    hold = runtime._ReapHold(lease_s=0.3)

    runtime._reap_round(db, None, farm, None, hold)  # the database is up: a normal round
    assert len(reaped) == 1
    db.down = True
    runtime._reap_round(db, None, farm, None, hold)  # the outage is seen: hold
    assert hold.holding()
    for _ in range(3):  # an outage longer than the lease: each round's ping fails and extends the hold
        time.sleep(0.15)
        runtime._reap_round(db, None, farm, None, hold)
    assert db.pings == 3 and len(reaped) == 1
    db.down = False
    runtime._reap_round(db, None, farm, None, hold)  # back, but within a lease of the last failure: still held
    assert len(reaped) == 1
    time.sleep(0.35)
    runtime._reap_round(db, None, farm, None, hold)  # one lease after the outage: reaping again
    assert len(reaped) == 2
