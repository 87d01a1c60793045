"""One job from the database to a recorded result: claim -> run_job -> upload -> record.

Shared by the local runner (worker processes on this machine) and the Celery tasks (a farm). The
database decides who runs what: the claim is a conditional update, and a result is recorded only by the
worker still holding the claim, so a duplicate message never runs a job twice or writes two results.
While a job runs, a heartbeat thread renews its lease and watches for cancellation; a worker that dies
stops renewing, and a reaper hands the job to another worker once the lease has run out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from farm.artifacts.attempts import attempt_prefix, new_attempt
from farm.errors import ArtifactError, Cancelled, FarmError, QuantizationError, TransientError
from farm.outage import Patience
from farm.settings import cache_dir

log = logging.getLogger("farm.jobs.execute")

DEFAULT_LEASE_S = 120.0
_KINDS = {"model.pt": "model", "model_state.pt": "model", "manifest.json": "manifest", "reference.pt": "reference"}


@dataclass(frozen=True)
class Outcome:
    """How an attempt at a job ended.

    Attributes:
        state: succeeded, failed, cancelled, skipped (someone else has it, or it is finished), or handoff (the
            train stage is done and the finish stage must be sent to ``queue``).
    """

    job_id: int
    state: str
    error: str | None = None
    duration_s: float = 0.0
    queue: str | None = None
    role: str | None = None


class ReferenceNotReady(TransientError):
    """The fp32 reference this job compares with has not succeeded yet."""


class JobHeartbeat:
    """Renews a running job's lease every ``interval_s`` and raises the stop flag when the job is no longer
    this worker's to run (cancelled, or taken over after a lost lease).

    The renewals run on one long-lived thread per process (:class:`_LeaseKeeper`), not a thread per job:
    starting and joining a thread for every job cost about 2 ms of a no-op job's 7.
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
        from farm.store import queries

        try:
            with self.db.session() as s:
                state = queries.extend_lease(s, self.job_id, self.worker, self.lease_s)
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


def execute_job(
    job_id: int,
    *,
    db: Any,
    store: Any,
    worker: str,
    lease_s: float = DEFAULT_LEASE_S,
    heartbeat_s: float | None = None,
    max_losses: int | None = None,
    record_retry_s: float | None = None,
) -> Outcome:
    """Claim and run one job (or its current stage), then record the result.

    Args:
        job_id: the job's id.
        db: a :class:`farm.store.db.Database`.
        store: the artifact store results are uploaded to.
        worker: this worker's name (recorded on the job).
        lease_s: how long the claim holds without a renewal.
        heartbeat_s: how often the lease is renewed and cancellation checked (default: lease_s / 12).
        max_losses: refuse to take over an expired lease once the job's worker died under it this many times
            (the reaper fails it instead).
        record_retry_s: while the database is unreachable, keep the computed result and retry recording it (or
            ending the job, or handing it back) with backoff for this long (default FARM_RECORD_RETRY_S).

    Returns:
        The outcome. Deterministic errors (bad config, untraceable model, missing bucket) end the job as
        failed here and are not retried.

    Raises:
        TransientError: the database or object store was unreachable, or the reference is not ready; the
            job has been handed back to the queue and the caller should retry later.
    """
    from farm.store import queries

    started = time.perf_counter()
    with db.autocommit() as conn:  # one conditional UPDATE: atomic on its own, no transaction around it
        job = queries.claim_job(conn, job_id, worker, lease_s, max_losses=max_losses)
    if job is None:
        return Outcome(job_id, "skipped")
    key, spec_data, reference_id, stage, role = job.key, dict(job.spec), job.reference_job_id, job.stage, job.role
    checkpoint_ref = None
    if stage == "finish":
        try:
            with db.session(write=False) as s:
                checkpoint = queries.artifact_of(s, job_id, "checkpoint")
                checkpoint_ref = (checkpoint.uri, checkpoint.sha256) if checkpoint is not None else None
        except TransientError as e:  # hand the claim back, or the job would sit running until its lease ran out
            reason = str(e)
            with contextlib.suppress(FarmError):
                _patience(job_id, record_retry_s).call(lambda: _release(db, job_id, worker, reason))
            raise
    patience = _patience(job_id, record_retry_s)
    interval = heartbeat_s if heartbeat_s is not None else max(0.2, min(10.0, lease_s / 12))
    # This claim's own keys: a worker that lost the job (stalled past its lease) never writes over the objects
    # of the attempt that recorded it, and deletes its own when its record finds the job no longer its own.
    upload = AttemptUpload(store, attempt_prefix(key, new_attempt(job.attempts, worker)), claims=job.attempts)
    try:
        with JobHeartbeat(db, job_id, worker, lease_s, interval) as beat:
            spec = _job_spec(spec_data)
            if stage == "train":
                return _train_stage(
                    job_id, spec, db=db, upload=upload, worker=worker, beat=beat, started=started, patience=patience
                )
            reference = _load_reference(reference_id, db, store) if reference_id is not None else None
            ckpt_path = _fetch(store, *checkpoint_ref, "checkpoint.pt") if checkpoint_ref else None
            from farm.jobs.steps import run_job

            with tempfile.TemporaryDirectory(prefix="farm-job-") as tmp:
                result = run_job(
                    spec, Path(tmp), reference=reference, should_stop=beat.should_stop, checkpoint=ckpt_path
                )
                uploaded = upload.put_dir(Path(tmp))
        stored = [(_KINDS.get(obj.key.rsplit("/", 1)[-1], "other"), obj) for obj in uploaded]
        model = next((obj for kind, obj in stored if kind == "model"), None)
        result.artifact_uri = model.uri if model is not None else None
        upload.recording = True  # from here a failure may hide a COMMIT that landed: keep the objects (gc decides)
        # The result is kept through a database outage: recording is retried until the database is back.
        record = result.to_dict()
        state, recorded = patience.call(lambda: _record_result(db, job_id, worker, record, stored))
        upload.settle(db, job_id, state, stored, recorded=recorded)
        return Outcome(job_id, state, None, time.perf_counter() - started, role=role)
    # Each ending is recorded first, and the attempt's objects deleted after: a slow store must not hold the job.
    except Cancelled:
        with upload.discarding():
            return _end(db, job_id, worker, "cancelled", "cancelled while running", started, role, patience)
    except TransientError as e:
        reason = str(e)
        with upload.discarding():
            patience.call(lambda: _release(db, job_id, worker, reason))
        raise
    except FarmError as e:
        with upload.discarding():
            return _end(db, job_id, worker, "failed", str(e), started, role, patience)
    except Exception as e:  # a bug, or a time limit: the traceback goes to the log, one line to the job
        log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
        with upload.discarding():
            return _end(db, job_id, worker, "failed", _describe(e), started, role, patience)


def _train_stage(
    job_id: int,
    spec: Any,
    *,
    db: Any,
    upload: AttemptUpload,
    worker: str,
    beat: JobHeartbeat,
    started: float,
    patience: Patience,
) -> Outcome:
    """Fine-tune (on this GPU worker), upload the checkpoint under this attempt's keys, and queue the finish
    stage; a train stage that finds the job no longer its own deletes the checkpoint it uploaded."""
    from farm.jobs.steps import train_job
    from farm.store import queries

    with tempfile.TemporaryDirectory(prefix="farm-train-") as tmp:
        path = train_job(spec, Path(tmp), should_stop=beat.should_stop)
        stored = upload.put_file(path, "checkpoint.pt")
    upload.recording = True

    def hand_off() -> Any:
        with db.session() as s:
            return queries.hand_off(s, job_id, worker, stored)

    message = patience.call(hand_off)
    if message is None:
        # Cancelled or taken over, or a retry after a COMMIT that landed unseen: the rows decide whether the
        # checkpoint is recorded (kept) or not (deleted).
        upload.settle(db, job_id, "succeeded", [("checkpoint", stored)])
        return Outcome(job_id, "cancelled", None, time.perf_counter() - started)
    return Outcome(job_id, "handoff", None, time.perf_counter() - started, queue=message.queue)


class AttemptUpload:
    """What one claim uploads, below its own prefix ``jobs/<job_key>/<attempt>`` (farm.artifacts.attempts), and
    how it goes away when the attempt does not end recorded.

    Deleting is best-effort: a store that cannot be reached keeps the objects, and ``farm artifacts gc`` removes
    them later (no row points at them, and their attempt no longer holds the job).
    """

    def __init__(self, store: Any, prefix: str, claims: int = 0):
        self.store, self.prefix = store, prefix
        self.claims = claims  # the job's claim counter at this claim: 1 means no earlier attempt left anything
        self.started = False  # something may have been written below the prefix
        self.recording = False  # the result is being recorded: a failure no longer proves no row points here

    def put_dir(self, local_dir: Path) -> list[Any]:
        self.started = True
        return list(self.store.put_dir(local_dir, self.prefix))

    def put_file(self, path: Path, name: str) -> Any:
        self.started = True
        return self.store.put_file(path, f"{self.prefix}/{name}")

    @contextlib.contextmanager
    def discarding(self) -> Iterator[None]:
        """Run the block (recording how the attempt ended), then :meth:`discard`, even when the block fails."""
        try:
            yield
        finally:
            self.discard()

    def discard(self, *, force: bool = False) -> None:
        """Delete what this attempt uploaded, unless a row may point at it (the record was under way)."""
        if not self.started or (self.recording and not force):
            return
        try:
            self.store.delete_prefix(self.prefix)
        except FarmError as e:
            log.warning("could not delete the lost attempt's objects %s (farm artifacts gc will): %s", self.prefix, e)

    def settle(self, db: Any, job_id: int, state: str, stored: list[tuple[str, Any]], recorded: bool = False) -> None:
        """After the record: a loser (the job was cancelled, taken over, or recorded by another attempt) deletes
        its objects. "succeeded" alone does not say whose result was recorded (another attempt's, or this one's
        in a COMMIT whose answer was lost), so the rows are asked."""
        if not self.started or not stored:
            return
        if state == "succeeded":
            from farm.store import artifact_refs

            try:
                if recorded:  # this attempt's own COMMIT recorded it: no need to ask the rows
                    ours = True
                else:
                    with db.session(write=False) as s:
                        ours = artifact_refs.points_at(s, job_id, [obj.uri for _, obj in stored])
            except FarmError as e:  # can't tell: keep them (gc decides once the job's rows are readable)
                log.warning("job %s: could not check whose artifacts were recorded: %s", job_id, e)
                return
            if ours:
                # The winner: earlier attempts that died mid-upload, or a stalled one that lost its claim, may have
                # left objects below the job's key. None may outlive the settled sweep without a row. The first
                # claim has no earlier attempt: it skips the listing (a no-op job's bookkeeping is milliseconds).
                if self.claims != 1:
                    from farm.artifact_gc import collect_job

                    collect_job(db, self.store, self.prefix.split("/")[1])
                return
        self.discard(force=True)


def _record(db: Any, job_id: int, worker: str, result: dict[str, Any], stored: list[tuple[str, Any]]) -> str:
    """Record a success (settling the sweeps it was the last of); returns the job's state.

    One try: the caller retries it while the database is unreachable (:class:`_Patience`). The conditional UPDATE
    records nothing twice: had an earlier COMMIT landed unseen, the retry finds the job succeeded already.
    """
    return _record_result(db, job_id, worker, result, stored)[0]


def _record_result(
    db: Any, job_id: int, worker: str, result: dict[str, Any], stored: list[tuple[str, Any]]
) -> tuple[str, bool]:
    """:func:`_record`, and whether this very call recorded the result (then the rows are this attempt's)."""
    from farm.store import queries

    with db.session() as s:
        recorded = queries.finish_job(s, job_id, worker, result, stored)  # settles when last
        state = "succeeded" if recorded else (queries.job_state(s, job_id) or "cancelled")
        if not recorded:
            queries.settle_sweeps(s, job_id)
    return state, recorded


def _release(db: Any, job_id: int, worker: str, reason: str) -> None:
    """Hand the job back to the queue (a transient failure the task retries), if this worker still holds it."""
    from farm.store import queries

    with db.session() as s:
        queries.release_job(s, job_id, worker, f"retrying: {reason}")


def _patience(job_id: int, retry_s: float | None) -> Patience:
    """How a job's database steps ride out an outage (FARM_RECORD_RETRY_S): recording a computed result, ending the
    job, handing it back. Losing such a step would cost the job's work, or leave it running under a worker that
    gave it up, until the reaper re-ran it as a worker loss. Each is a conditional statement that writes nothing
    twice, so a retry after a COMMIT that landed unseen is harmless."""
    if retry_s is None:
        from farm.settings import FarmSettings

        retry_s = FarmSettings.from_env().record_retry_s

    def waiting(e: Exception, left_s: float) -> None:
        log.warning("job %s: %s; keeping its state and retrying for up to %.0f s", job_id, e, left_s)

    def back() -> None:
        log.warning("job %s: database reachable again", job_id)

    return Patience(retry_s, setting="FARM_RECORD_RETRY_S", on_wait=waiting, on_back=back)


def _end(
    db: Any,
    job_id: int,
    worker: str,
    state: str,
    error: str,
    started: float,
    role: str | None,
    patience: Patience | None = None,
) -> Outcome:
    from farm.store import queries

    def end() -> str:
        with db.session() as s:
            queries.fail_job(s, job_id, error, worker=worker, state=state)
            final = queries.job_state(s, job_id) or state
            queries.settle_sweeps(s, job_id)
        return final

    final = (patience or _patience(job_id, None)).call(end)
    return Outcome(job_id, final, error, time.perf_counter() - started, role=role)


def _describe(e: BaseException) -> str:
    name = type(e).__name__
    if name == "SoftTimeLimitExceeded":
        return "the job ran past its soft time limit (FARM_TASK_SOFT_TIME_LIMIT_S) and was stopped"
    return f"{name}: {e}"


def _job_spec(data: dict[str, Any]) -> Any:
    from farm.jobs.contract import JobSpec

    spec = JobSpec.from_dict(data)
    if spec.weights and spec.weights.startswith("s3://"):
        from farm.artifacts import fetch_uri

        spec = dataclasses.replace(spec, weights=str(fetch_uri(spec.weights, cache_dir() / "weights")))
    return spec


def _fetch(store: Any, uri: str, sha256: str, name: str) -> Path:
    """A stored artifact in the local content-addressed cache (downloaded once, sha256 verified)."""
    local = cache_dir() / "artifacts" / sha256[:2] / sha256 / name
    if local.exists():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        key = store.key_for(uri)
    except ArtifactError:
        # Stored under another artifact URL (FARM_ARTIFACTS_URL changed since): fetch it from there.
        from farm.artifacts import fetch_uri
        from farm.artifacts.files import sha256_file

        fetched = fetch_uri(uri, cache_dir() / "artifacts" / "foreign")
        if sha256_file(fetched) != sha256:
            raise ArtifactError(f"{uri} does not match the sha256 recorded for it: corrupted or altered") from None
        return fetched
    store.get_file(key, local, sha256=sha256)
    return local


def _load_reference(reference_id: int, db: Any, store: Any) -> Any:
    from farm.jobs.steps import Reference
    from farm.store import queries

    with db.session(write=False) as s:
        state = queries.job_state(s, reference_id)
        artifact = queries.artifact_of(s, reference_id, "reference")
        ref_job = s.get(queries.Job, reference_id)
        error = ref_job.error if ref_job is not None else None
        uri, sha256 = (artifact.uri, artifact.sha256) if artifact is not None else (None, None)
    if state in ("failed", "cancelled"):
        raise QuantizationError(f"the fp32 reference (job {reference_id}) {state}: {error}")
    if state != "succeeded" or uri is None or sha256 is None:
        raise ReferenceNotReady(f"the fp32 reference (job {reference_id}) has not finished")
    return Reference.load(_fetch(store, uri, sha256, "reference.pt"))
