"""The host's run-to-run drift: a small host-local history of fp32 p50s, and the spread that widens every job's p50
interval.

A p50's interval from one run (:mod:`farm.quant.timing_stats`) sees only the noise inside that run. A shared host's
level also moves between jobs (5-13 % over minutes on a 2-vCPU VM), so the same job run twice missed its own
interval in 3 of 10 pairs. Every trial times the same fp32 baseline side by side, and the fp32 job times it alone:
the spread of that baseline's p50 across the host's recent jobs is the host's run-to-run noise for that model, batch
size and thread count. Each job records its fp32 p50 here and widens its own interval by the spread.

The history is a JSON-lines file beside the measurement lock (``drift-history.jsonl`` in
:func:`farm.quant.isolation.lock_dir`, so per host and per user; ``FARM_DRIFT_FILE`` names another file), appended
under an ``flock`` and compacted now and then: the last :data:`MAX_ENTRIES` entries per key, none older than
:data:`MAX_AGE_S`. It is advisory: a history that cannot be read or written costs a job its widening (and a logged
warning), never the job. Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from farm.quant.timing_stats import run_to_run_spread

log = logging.getLogger("farm.drift")

#: Names the history file (default: ``drift-history.jsonl`` in the lock directory).
HISTORY_ENV = "FARM_DRIFT_FILE"
HISTORY_FILE = "drift-history.jsonl"
#: Entries kept per key: enough for a steady 95th percentile of the pairwise differences, few enough to follow the
#: host as it changes.
MAX_ENTRIES = 20
#: Entries older than this are ignored (and dropped at the next compaction): a host's load moves over hours.
MAX_AGE_S = 6 * 3600.0
#: The file is compacted once it grows past this (~5000 entries).
MAX_FILE_BYTES = 1 << 20
#: How long a job waits for another process's append or compaction before it goes without (a hung holder must not
#: hold up a job).
LOCK_TIMEOUT_S = 5.0
#: What a history entry timed: the fp32 model, side by side with a trial or alone in the fp32 job.
FP32_BASELINE = "fp32 baseline"
#: What an fp32 job times on its own (not alternating with a trial): kept apart from the paired baseline.
FP32_ALONE = "fp32 alone"


@dataclass(frozen=True)
class DriftKey:
    """One measurement whose p50s are comparable from job to job on one host.

    Attributes:
        hardware_id: the machine's fingerprint hash (:func:`farm.quant.fingerprint.hardware_id`).
        model, weights, dataset: the model reference, its weights and the data (the inputs' shape) it is timed on.
        batch_size, threads, device: how it is timed.
        runtime, provider: what runs it (``torch``, ``onnxruntime`` with its execution provider, ...).
        isolation: ``exclusive``, ``pinned`` or ``none``: a less shielded timing wanders more.
        timed: what was timed (:data:`FP32_BASELINE`).
    """

    hardware_id: str | None
    model: str
    weights: str | None
    dataset: str
    batch_size: int
    threads: int | None
    device: str
    runtime: str = "torch"
    provider: str | None = None
    isolation: str = "exclusive"
    timed: str = FP32_BASELINE

    def text(self) -> str:
        """The key as one canonical string (what the history file stores)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Spread:
    """The run-to-run spread of one key: ``rel`` (a fraction; None with fewer than 3 entries or no history) and
    ``n``, the entries it came from."""

    rel: float | None
    n: int


class History:
    """The host's history of p50s, one JSON line per measurement: ``{"key": ..., "t": unix s, "p50_ms": ...}``.

    Args:
        path: the file (default: ``$FARM_DRIFT_FILE``, else ``drift-history.jsonl`` in the lock directory; read
            when first used).
        max_entries: entries per key that count (the newest).
        max_age_s: older entries are ignored.
        clock: seconds since the epoch (tests pass a fake one).
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        max_entries: int = MAX_ENTRIES,
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = path
        self.max_entries, self.max_age_s, self._clock = max_entries, max_age_s, clock

    @property
    def path(self) -> Path:
        if self._path is not None:
            return self._path
        configured = os.environ.get(HISTORY_ENV)
        if configured:
            return Path(configured)
        from farm.quant.isolation import lock_dir

        return lock_dir() / HISTORY_FILE

    def record(self, key: DriftKey, p50_ms: float) -> None:
        """Append one p50 of ``key`` (ignored unless positive and finite); never raises: a history that cannot be
        written is logged and skipped."""
        if not (isinstance(p50_ms, int | float) and p50_ms > 0 and math.isfinite(p50_ms)):
            return
        line = json.dumps({"key": key.text(), "t": round(self._clock(), 3), "p50_ms": float(p50_ms)}) + "\n"
        try:
            with self._locked(fcntl.LOCK_EX):
                path = self.path
                # One write() of an O_APPEND descriptor: a reader never sees half a line from this process.
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
                if path.stat().st_size > MAX_FILE_BYTES:
                    self._compact(path)
        except (OSError, TimeoutError, ValueError) as e:
            log.warning("drift history %s not written (%s): this job's p50 is not recorded", self._where(), e)

    def values(self, key: DriftKey) -> list[float]:
        """The p50s of ``key`` that count (the newest :attr:`max_entries`, none older than :attr:`max_age_s`),
        oldest first; [] when the history cannot be read."""
        try:
            with self._locked(fcntl.LOCK_SH):
                entries = self._read(self.path)
        except (OSError, TimeoutError, ValueError) as e:
            log.warning("drift history %s not read (%s): p50 intervals are not widened", self._where(), e)
            return []
        wanted = key.text()
        return [p50 for k, _, p50 in entries if k == wanted][-self.max_entries :]

    def spread(self, key: DriftKey) -> Spread:
        """The run-to-run spread of ``key`` (:func:`farm.quant.timing_stats.run_to_run_spread`) and how many
        entries it came from."""
        values = self.values(key)
        return Spread(run_to_run_spread(values), len(values))

    def _read(self, path: Path) -> list[tuple[str, float, float]]:
        """(key, time, p50) of every well-formed line young enough, in file order; a malformed line (a crash
        mid-write, a foreign edit) is skipped."""
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        oldest = self._clock() - self.max_age_s
        out = []
        for line in text.splitlines():
            entry = _parse(line)
            if entry is not None and entry[1] >= oldest:
                out.append(entry)
        return out

    def _compact(self, path: Path) -> None:
        """Rewrite the file with only what still counts (called holding the exclusive lock); atomic, so a reader
        sees the old file or the new one."""
        kept: dict[str, list[tuple[str, float, float]]] = {}
        for entry in self._read(path):
            kept.setdefault(entry[0], []).append(entry)
        lines = sorted((e for entries in kept.values() for e in entries[-self.max_entries :]), key=lambda e: e[1])
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(json.dumps({"key": k, "t": t, "p50_ms": v}) + "\n" for k, t, v in lines))
        os.replace(tmp, path)

    @contextlib.contextmanager
    def _locked(self, how: int) -> Iterator[None]:
        """The history's lock file (beside it: the history itself is replaced when compacted), within
        :data:`LOCK_TIMEOUT_S`."""
        path = self.path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, how | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"its lock was held for over {LOCK_TIMEOUT_S:g} s") from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _where(self) -> str:
        try:
            return str(self.path)
        except OSError:
            return "(lock directory unavailable)"


def _parse(line: str) -> tuple[str, float, float] | None:
    try:
        data: Any = json.loads(line)
        key, t, p50 = data["key"], float(data["t"]), float(data["p50_ms"])
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(key, str) or not math.isfinite(t) or not (p50 > 0 and math.isfinite(p50)):
        return None
    return key, t, p50


def record(key: DriftKey, p50_ms: float) -> None:
    """Append one p50 of ``key`` to this host's history (:meth:`History.record`); never raises."""
    History().record(key, p50_ms)


def spread(key: DriftKey) -> float | None:
    """This host's run-to-run spread of ``key`` as a fraction of the p50, or None with fewer than 3 entries
    (:meth:`History.spread`); never raises."""
    return History().spread(key).rel
