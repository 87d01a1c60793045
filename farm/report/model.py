"""What a report is built from: the sweep's header, and helpers that group and label rows of results_flat."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: Job states in the order the summary lists them.
STATE_ORDER = ("succeeded", "failed", "cancelled", "running", "queued", "pending")
#: Float methods and the bit-width the bits chart places them at.
FLOAT_BITS = {"fp32": 32, "fp16": 16, "bf16": 16}


@dataclass(frozen=True)
class SweepInfo:
    """The sweep a report describes (a row of the ``sweeps`` table).

    Attributes:
        id: the sweep id.
        name: the spec's name.
        state: pending, running, succeeded, failed or cancelled.
        submitter: who submitted it (user@host), if known.
        created_at: submission time (UTC).
        finished_at: when its last job finished, if it has.
    """

    id: int
    name: str
    state: str
    submitter: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None


def per_job(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first row of each job (job-wide figures repeat on every batch-size row), in order."""
    seen: set[Any] = set()
    out = []
    for r in rows:
        if r["job_id"] not in seen:
            seen.add(r["job_id"])
            out.append(r)
    return out


def is_stage(row: dict[str, Any]) -> bool:
    """Whether the row is a stage job's (a tune's search adding jobs): it measures nothing and is no configuration,
    so it has no batch size, figures or machine fingerprint even when it succeeded."""
    return row.get("method") == "stage"


def measured(rows: Iterable[dict[str, Any]], *figures: str) -> list[dict[str, Any]]:
    """Succeeded rows that have every one of ``figures``."""
    return [r for r in rows if r.get("state") == "succeeded" and all(r.get(f) is not None for f in figures)]


def state_counts(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Jobs per state (each job counted once), known states first in :data:`STATE_ORDER`."""
    counts: dict[str, int] = {}
    for r in per_job(rows):
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    known = {s: counts[s] for s in STATE_ORDER if s in counts}
    return {**known, **{s: n for s, n in sorted(counts.items()) if s not in known}}


def method_label(row: dict[str, Any]) -> str:
    """``fp32``, ``bf16``, ``static int8``, ``qat int4 (simulated)``: the method and its weight bits."""
    label = str(row["method"])
    if row.get("bits") is not None and row["method"] not in FLOAT_BITS:
        label += f" int{row['bits']}"
    return label + (" (simulated)" if row.get("simulated") else "")


def config_label(row: dict[str, Any]) -> str:
    """Every parameter that tells a job of a model from another: ``static int8 · minmax · cal 16 · ...``."""
    parts = [method_label(row)]
    if row.get("observer"):
        parts.append(str(row["observer"]))
    if row.get("calibration_size") is not None:
        parts.append(f"cal {row['calibration_size']}")
    for key in ("granularity", "backend"):
        if row.get(key):
            parts.append(str(row[key]))
    if row.get("device") not in (None, "cpu"):
        parts.append(str(row["device"]))
    if row.get("runtime") not in (None, "torch"):  # a deployment on another runtime is another configuration
        parts.append(str(row["runtime"]))
    return " · ".join(parts)


def ordered(values: Iterable[Any]) -> list[Any]:
    """Distinct values in a stable order (numbers numerically, None last, the rest as text)."""
    distinct = set(values)
    return sorted(
        distinct, key=lambda v: (v is None, not isinstance(v, int | float), v if isinstance(v, int | float) else str(v))
    )


def runtime_of(row: dict[str, Any]) -> str:
    """The row's runtime (``torch`` for rows from before runtimes were recorded)."""
    return str(row.get("runtime") or "torch")


def spans_runtimes(rows: Iterable[dict[str, Any]]) -> bool:
    """Whether ``rows`` come from more than one runtime (a chart then marks each point's runtime, a table adds a
    runtime column)."""
    return len({runtime_of(r) for r in rows}) > 1
