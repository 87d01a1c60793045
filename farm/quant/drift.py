"""The host's run-to-run drift: a small host-local history of fp32 p50s, and the spread that widens every job's p50
interval.

A p50's interval from one run (:mod:`farm.quant.timing_stats`) sees only the noise inside that run. A shared host's
level also moves between jobs (5-13 % over minutes on a 2-vCPU VM), so the same job run twice missed its own
interval in 3 of 10 pairs. Every trial times the same fp32 baseline side by side, and the fp32 job times it alone:
the spread of that baseline's p50 across the host's recent jobs is the host's run-to-run noise for that model, batch
size and thread count. Each job records its fp32 p50 here and widens its own interval by the spread. Until a
measurement has 3 runs, the spread is the host's (the median of its other measurements') or, on a host that has
measured nothing yet, an assumed :data:`DEFAULT_PRIOR` (``FARM_DRIFT_PRIOR``): a first run claimed +-1-3 % and
missed its re-run.

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
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from farm.quant.timing_stats import relative_halfwidth, run_to_run_spread, wide_interval_reason, widen_interval

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
#: The spread assumed for a measurement the host has fewer than 3 runs of, when none of its other measurements
#: has 3 either: what a 2-thread ResNet-18 p50 moves between runs on a shared 2-vCPU cloud VM (+-8-11 %, the 95 %
#: bound). A first run on an unknown host claims no more than that; a dedicated host's owner may set less.
DEFAULT_PRIOR = 0.10
#: Overrides :data:`DEFAULT_PRIOR` on this host (a fraction: ``0.02`` for +-2 %; ``0`` widens nothing before 3 runs).
PRIOR_ENV = "FARM_DRIFT_PRIOR"
#: Where a spread came from: the key's own runs, the host's other measurements, or the assumption.
FROM_RUNS, FROM_HOST, FROM_PRIOR = "runs", "host", "assumed"


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
        engine_version: the engine that timed it (:data:`farm.jobs.contract.ENGINE_VERSION`): a new engine times
            differently (version 6 reloads TorchScript and fixes the allocator: 10-40 % on some models), and its
            history starts anew rather than read that change as drift.
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
    engine_version: str | None = None

    def text(self) -> str:
        """The key as one canonical string (what the history file stores)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Spread:
    """The run-to-run spread of one key.

    Attributes:
        rel: a fraction; None where nothing is known or assumed (a history that cannot be read, a prior of 0).
        n: the key's own entries.
        source: :data:`FROM_RUNS` (from the key's ``n`` >= 3 entries), :data:`FROM_HOST` (fewer: the median spread of
            the host's other measurements, same device and isolation, that have 3), :data:`FROM_PRIOR` (fewer, and
            no other measurement has 3: :func:`prior`), or None with ``rel``.
    """

    rel: float | None
    n: int
    source: str | None = None


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
        return (self._by_key() or {}).get(key.text(), [])

    def spread(self, key: DriftKey) -> Spread:
        """The run-to-run spread of ``key`` (:func:`farm.quant.timing_stats.run_to_run_spread`) from its own
        entries once it has 3; before that, what the host's other measurements say, else :func:`prior`. A first
        run on a host then claims no narrower interval than the host is known (or assumed) to keep between runs.
        Nothing is widened when the history cannot be read."""
        by_key = self._by_key()
        if by_key is None:
            return Spread(None, 0)
        values = by_key.get(key.text(), [])
        own = run_to_run_spread(values)
        if own is not None:
            return Spread(own, len(values), FROM_RUNS)
        host = _host_spread(by_key, key)
        if host is not None:
            return Spread(host, len(values), FROM_HOST)
        assumed = prior()
        return Spread(assumed or None, len(values), FROM_PRIOR if assumed else None)

    def _by_key(self) -> dict[str, list[float]] | None:
        """Every key's p50s that count, oldest first; None when the history cannot be read."""
        try:
            with self._locked(fcntl.LOCK_SH):
                entries = self._read(self.path)
        except (OSError, TimeoutError, ValueError) as e:
            log.warning("drift history %s not read (%s): p50 intervals are not widened", self._where(), e)
            return None
        out: dict[str, list[float]] = {}
        for k, _, p50 in entries:
            out.setdefault(k, []).append(p50)
        return {k: v[-self.max_entries :] for k, v in out.items()}

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


def _host_spread(by_key: dict[str, list[float]], key: DriftKey) -> float | None:
    """The median run-to-run spread of the host's other measurements with 3 runs or more, on the same hardware,
    device, isolation (a less shielded timing wanders more) and engine version; None when there are none. A host's
    level moves every model it runs, so their typical spread is the best guess for a model it has not yet run 3
    times."""
    spreads = []
    for text, values in by_key.items():
        try:
            other = json.loads(text)
        except ValueError:
            continue
        same = isinstance(other, dict) and all(
            other.get(f) == getattr(key, f) for f in ("hardware_id", "device", "isolation", "engine_version")
        )
        rel = run_to_run_spread(values) if same and text != key.text() else None
        if rel is not None:
            spreads.append(rel)
    return statistics.median(spreads) if spreads else None


def prior() -> float:
    """The spread assumed before a host knows its own: ``$FARM_DRIFT_PRIOR`` (a fraction), else
    :data:`DEFAULT_PRIOR`; a value that is not a fraction in [0, 1] is logged and the default used."""
    text = os.environ.get(PRIOR_ENV)
    if not text:
        return DEFAULT_PRIOR
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        log.warning("%s=%r is not a fraction in [0, 1] (0.05 for ±5 %%): %g used", PRIOR_ENV, text, DEFAULT_PRIOR)
        return DEFAULT_PRIOR
    return value


def _parse(line: str) -> tuple[str, float, float] | None:
    try:
        data: Any = json.loads(line)
        key, t, p50 = data["key"], float(data["t"]), float(data["p50_ms"])
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(key, str) or not math.isfinite(t) or not (p50 > 0 and math.isfinite(p50)):
        return None
    return key, t, p50


def allow_for_drift(entry: dict[str, Any], rel: float | None, n: int, source: str | None = FROM_RUNS) -> dict[str, Any]:
    """A latency entry whose p50 interval also holds the host's run-to-run drift.

    The interval becomes the union of the within-run one and ``p50 * (1 +- rel)``
    (:func:`farm.quant.timing_stats.widen_interval`), and ``stable`` is judged again by the same rule on it: a p50
    the host moves by more than 5 % between runs (the 95 % bound from its recent runs, which few runs widen) is not
    stable, however long it was timed. The speedup's interval is
    left alone: it is measured side by side, where the host's level cancels.

    Args:
        entry: a latency entry (:meth:`Latency.to_dict`, or a pair's :meth:`farm.quant.side_by_side.PairLatency.entry`).
        rel: the host's run-to-run spread as a fraction (:func:`farm.quant.timing_stats.run_to_run_spread`);
            None: nothing known or assumed, nothing widened.
        n: the recorded runs of this measurement.
        source: where ``rel`` came from (:class:`farm.quant.drift.Spread`): ``runs`` (its own ``n``), ``host``
            (the host's other measurements) or ``assumed``.

    Returns:
        A new entry with the widened interval, ``stable``, ``unstable_reason``, ``drift_rel``, ``drift_n`` and
        ``drift_from`` (``source``; None with no ``rel``).
    """
    out = {**entry, "drift_rel": rel, "drift_n": n, "drift_from": source if rel is not None else None}
    p50 = entry.get("latency_p50_ms")
    low, high = entry.get("latency_p50_ci_low_ms"), entry.get("latency_p50_ci_high_ms")
    if rel is None or not isinstance(p50, int | float) or low is None or high is None or not p50 > 0:
        return out
    within = relative_halfwidth(p50, low, high)
    low, high = widen_interval(p50, low, high, rel)
    out["latency_p50_ci_low_ms"], out["latency_p50_ci_high_ms"] = low, high
    wide = wide_interval_reason(p50, low, high)
    if wide:  # the rule's first clause: it replaces a later one (tail, not settled) as unstable_reason does
        if rel > within:  # the drift, not the run's own noise, made it wide: say so
            wide += f": a re-run here may land ±{rel:.1%} away ({_drift_basis(source, n)})"
        out["unstable_reason"], out["stable"] = wide, False
    return out


def _drift_basis(source: str | None, n: int) -> str:
    """What a drift allowance rests on, in words (every wording says "between runs": the warning's remedy keys on
    it)."""
    if source == FROM_HOST:
        return f"the 95 % bound on this host's moves between runs, from its other measurements; this one has {n} runs"
    if source == FROM_PRIOR:
        return (
            "assumed: the host has no measurement with 3 runs yet to bound its moves between runs "
            f"(FARM_DRIFT_PRIOR sets it); this one has {n}"
        )
    return f"the 95 % bound on the p50's moves between runs, from its last {n}"


def drift_remedy(entry: dict[str, Any], *, fp32: bool) -> str:
    """What to do about a p50 that the host's drift between runs made too wide to trust (``entry`` from
    :func:`allow_for_drift`; ``fp32``: the job times fp32 itself, as a trial times its baseline)."""
    if entry.get("drift_from") in (FROM_HOST, FROM_PRIOR):
        if fp32 or entry.get("baseline_p50_ms") is not None:  # the job recorded a run of its key: a re-run adds one
            return (
                "run it again: from 3 runs its own spread replaces this one; meanwhile compare recipes by their "
                "side-by-side speedup"
            )
        return "each fp32 job of this model here records a run of it: from 3 runs their own spread replaces this one"
    # A host whose level moves between runs is not helped by timing one run longer; the side-by-side speedup is.
    return "compare recipes by their side-by-side speedup, or measure on a quieter (dedicated) host"
