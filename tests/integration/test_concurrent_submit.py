"""Two submits of the same spec at once: the second gets the first's sweep, never an IntegrityError.

The store-level test makes the race certain: the first creation is flushed but not committed when the second
starts, so without a lock the second finds no sweep, inserts its own, and fails on the first's job keys once
the first commits. tests/integration/farm/test_concurrent_submit_cli.py races real ``farm sweep submit``s.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from farm.spec.load import load_spec
from farm.store import plans, sweeps
from farm.store.db import Database
from farm.store.migrate import ensure_schema
from tests.sweeps import TOY_DATA, TOY_MLP

SPEC = f"""name: raced
models: ['{TOY_MLP}']
dataset: '{TOY_DATA}'
methods: [fp32, dynamic, {{static: {{observer: [minmax, histogram], granularity: [per_tensor, per_channel]}}}}]
calibration_size: [8, 16, 32]
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'farm.db'}"
    return str(request.getfixturevalue("fresh_pg_url"))


def test_a_submit_racing_an_uncommitted_one_gets_its_sweep(database_url: str) -> None:
    plan = load_spec(SPEC)
    first, second = Database(database_url), Database(database_url)
    ensure_schema(first)
    outcome: dict[str, Any] = {}
    started = threading.Event()

    def submit_second() -> None:
        started.set()
        try:
            with second.session() as s:
                outcome["record"] = plans.create_sweep(s, plan, "second")
        except Exception as e:  # noqa: BLE001 - the assertion below shows it
            outcome["error"] = e

    try:
        with first.session() as s:
            record = plans.create_sweep(s, plan, "first")
            racer = threading.Thread(target=submit_second)
            racer.start()
            started.wait(5)
            time.sleep(0.5)  # the second is now waiting (on the lock; without it, on the first's job keys)
        racer.join(60)
        assert not racer.is_alive()
        assert "error" not in outcome, repr(outcome.get("error"))
        assert outcome["record"].sweep_id == record.sweep_id
        assert not outcome["record"].created
        assert len(sweeps.list_sweeps(first, 50)) == 1
    finally:
        first.dispose()
        second.dispose()
