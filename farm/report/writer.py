"""Reading a sweep from the results database and writing its report atomically."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm.errors import ConfigError
from farm.report.model import SweepInfo
from farm.report.page import build_report

if TYPE_CHECKING:
    from farm.report.tune_data import TuneInput


@dataclass
class ReportInput:
    """Everything a report is built from, as read from the database."""

    sweep: SweepInfo
    rows: list[dict[str, Any]]
    fingerprints: dict[int, dict[str, Any]] = field(default_factory=dict)
    warnings: dict[int, list[str]] = field(default_factory=dict)
    #: The sweep's tune (its spec has a ``tune:`` section: ``farm tune``), else None.
    tune: TuneInput | None = None


def load_report_input(db: Any, sweep_id: int) -> ReportInput:
    """Read a sweep, its rows of results_flat, each job's fingerprint and warnings, and its tune if it is one.

    Args:
        db: a :class:`farm.store.db.Database`.
        sweep_id: the sweep.

    Returns:
        The report's input.

    Raises:
        NotFound: no sweep has that id.
        StoreUnavailable: the database cannot be reached.
    """
    from farm.store.sweep_report import read_sweep_report

    stored = read_sweep_report(db, sweep_id)
    record = stored.sweep
    sweep = SweepInfo(
        id=record.id,
        name=record.name,
        state=record.state,
        submitter=record.submitter,
        created_at=record.created_at,
        finished_at=record.finished_at,
    )
    data = ReportInput(sweep, stored.rows)
    for job_id, extra in stored.extras.items():
        if isinstance(extra.get("fingerprint"), dict):
            data.fingerprints[job_id] = extra["fingerprint"]
        if isinstance(extra.get("warnings"), list):
            data.warnings[job_id] = [str(w) for w in extra["warnings"]]
    data.tune = load_tune(db, sweep_id)
    return data


def load_tune(db: Any, sweep_id: int) -> TuneInput | None:
    """The tune of sweep ``sweep_id``: its settings and every job (stage jobs included), or None when the sweep
    is no tune. A sweep is a tune when its spec text has a ``tune:`` section, as ``farm tune status`` tells.

    Raises:
        NotFound: no sweep has that id.
        StoreUnavailable: the database cannot be reached.
    """
    from farm.jobs.tune_answer import settings_from_text
    from farm.report.tune_data import TuneInput
    from farm.store.expansion import sweep_head, sweep_jobs

    head = sweep_head(db, sweep_id)
    settings = settings_from_text(head.spec_text)
    if settings is None:
        return None
    return TuneInput(settings, sweep_jobs(db, sweep_id), head.state)


def check_output(path: Path) -> Path:
    """Refuse an output path the report cannot be written to, before any work is done.

    Args:
        path: where the report should go.

    Returns:
        The path, absolute.

    Raises:
        ConfigError: its directory does not exist, or the path is a directory.
    """
    path = Path(path).expanduser().absolute()
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a directory")
    return path


def write_report(db: Any, sweep_id: int, path: str | os.PathLike[str], *, generated_at: datetime | None = None) -> Path:
    """Write the HTML report of a sweep to ``path``, atomically (a temporary file renamed into place).

    Args:
        db: a :class:`farm.store.db.Database`.
        sweep_id: the sweep.
        path: the HTML file to write (replaced if it exists).
        generated_at: the time shown on the page (default: now, UTC).

    Returns:
        The absolute path written.

    Raises:
        ConfigError: the path's directory does not exist, the path is a directory, or it cannot be written.
        NotFound: no sweep has that id.
        StoreUnavailable: the database cannot be reached.
    """
    target = check_output(Path(path))
    data = load_report_input(db, sweep_id)
    html = build_report(
        data.rows,
        sweep=data.sweep,
        fingerprints=data.fingerprints,
        warnings=data.warnings,
        tune=data.tune,
        generated_at=generated_at or datetime.now(timezone.utc),
    )
    write_atomically(target, html)
    return target


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to a temporary file beside ``path``, then rename it over ``path``.

    A reader never sees a half-written report, and a failure leaves any earlier file as it was.

    Raises:
        ConfigError: the file cannot be written (permissions, disk full, ...).
    """
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temp, "x", encoding="utf-8") as f:  # mode "x": never clobber; the umask sets permissions
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as e:
        temp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from e


__all__ = ["ReportInput", "check_output", "load_report_input", "load_tune", "write_atomically", "write_report"]
