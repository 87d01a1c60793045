"""Helpers for the sweep tests: short specs, the ``farm`` CLI in-process, and reading the results database.

Importable as ``tests.sweeps``. The database helpers read whatever FARM_HOME / FARM_DATABASE_URL name (the
``sweep_home`` fixture gives each test its own).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from sqlalchemy import text

from farm.cli import cli
from farm.store.db import Database

TOY_DATA = "synthetic:1x8x8?n_test=32&n_calibration=32&n_train=64"  # tests.toys.SYNTHETIC, without torch
TOY_MLP = "entrypoint:tests.toys:tiny_mlp"
BRANCHY = "entrypoint:tests.toys:branchy"
NAN_MODEL = "entrypoint:tests.toys:nan_model"
#: A benchmark short enough for unit tests (one spec line).
FAST_BENCHMARK = "benchmark: {batch_size: [1], max_time_s: 0.2, min_reps: 5, warmup_s: 0}"


def write_spec(directory: Path, text: str, name: str = "spec.yaml") -> Path:
    """Write a spec file and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def farm(*args: str) -> Result:
    """``farm ARGS`` in this process, through click's test runner (stdout and stderr kept apart)."""
    return CliRunner().invoke(cli, list(args))


def describe(result: Result) -> str:
    """Everything worth printing when an assertion on a CLI result fails."""
    return (
        f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}\nexception: {result.exception!r}"
    )


def query(sql: str, url: str | None = None, **params: Any) -> list[dict[str, Any]]:
    """Rows of ``sql`` on the results database (default: the one FARM_* settings name), as dicts."""
    db = Database(url)
    try:
        with db.session(write=False) as s:
            return [dict(row) for row in s.execute(text(sql), params).mappings()]
    finally:
        db.dispose()


def sweep_count(home: Path) -> tuple[int, int]:
    """(sweeps, jobs) in the SQLite database under ``home``; (0, 0) when the file was never created."""
    if not (home / "farm.db").exists():
        return 0, 0
    url = f"sqlite:///{home / 'farm.db'}"
    tables = {r["name"] for r in query("SELECT name FROM sqlite_master WHERE type = 'table'", url)}
    if "sweeps" not in tables:
        return 0, 0
    (row,) = query("SELECT (SELECT COUNT(*) FROM sweeps) AS sweeps, (SELECT COUNT(*) FROM jobs) AS jobs", url)
    return row["sweeps"], row["jobs"]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
