"""One claimed job on a worker: claim -> run -> record.

Shared by the local runner (worker processes on this machine) and the Celery tasks (a farm). The database decides
who runs what: the claim is a conditional update, and a result is recorded only by the worker still holding the
claim, so a duplicate message never runs a job twice or writes two results. While a job runs, its lease is renewed
(:mod:`farm.jobs.lease`); what it uploads lives below its own attempt's keys (:mod:`farm.jobs.attempt`). Every read
and write goes through :mod:`farm.store.execution`, one transaction each.

What a job's end releases or ends (its dependents, the sweeps it settles) is not decided here: the executor that
called :func:`execute_job` asks the scheduling policy (farm.store.scheduling) with the returned :class:`Outcome`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.errors import ArtifactError, Cancelled, FarmError, QuantizationError, TransientError
from farm.jobs.attempt import AttemptUpload, Stored
from farm.jobs.lease import DEFAULT_LEASE_S, JobHeartbeat, heartbeat_interval
from farm.outage import Patience
from farm.settings import cache_dir

log = logging.getLogger("farm.jobs.execute")

__all__ = ["DEFAULT_LEASE_S", "Outcome", "ReferenceNotReady", "execute_job"]


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
    #: Some job waits for this one (read with the claim): its end must be decided (farm.store.scheduling.job_ended).
    has_dependents: bool = False


class ReferenceNotReady(TransientError):
    """The fp32 reference this job compares with has not succeeded yet."""


@dataclass(frozen=True)
class _Attempt:
    """This worker's claim of one job, and what ending it needs."""

    job_id: int
    role: str | None
    worker: str
    db: Any
    store: Any
    upload: AttemptUpload
    patience: Patience
    started: float
    has_dependents: bool = False

    def outcome(self, state: str, error: str | None = None) -> Outcome:
        duration_s = time.perf_counter() - self.started
        return Outcome(self.job_id, state, error, duration_s, role=self.role, has_dependents=self.has_dependents)


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
    from farm.store import execution

    started = time.perf_counter()
    claim = execution.claim(db, job_id, worker, lease_s, max_losses=max_losses)
    if claim is None:
        return Outcome(job_id, "skipped")
    patience = _patience(job_id, record_retry_s)
    checkpoint = _checkpoint_of(db, job_id, worker, patience) if claim.stage == "finish" else None
    # This claim's own keys: a worker that lost the job (stalled past its lease) never writes over the objects
    # of the attempt that recorded it, and deletes its own when its record finds the job no longer its own.
    upload = AttemptUpload.for_claim(store, claim.key, claim.attempts, worker)
    attempt = _Attempt(job_id, claim.role, worker, db, store, upload, patience, started, claim.has_dependents)
    try:
        with JobHeartbeat(db, job_id, worker, lease_s, heartbeat_interval(lease_s, heartbeat_s)) as beat:
            if claim.role == "stage":  # no engine work: it adds the next stage's jobs, with its own success
                from farm.jobs.stages import run_stage

                return attempt.outcome(run_stage(db, job_id, worker, claim.spec, claim.key, patience))
            spec = _job_spec(dict(claim.spec))
            if claim.stage == "train":
                return _train_stage(attempt, spec, beat.should_stop)
            reference = (
                _load_reference(claim.reference_job_id, db, store) if claim.reference_job_id is not None else None
            )
            result, stored = _run_trial(attempt, spec, reference, checkpoint, beat.should_stop)
        return _record_success(attempt, result, stored)
    # Each ending is recorded first, and the attempt's objects deleted after: a slow store must not hold the job.
    except Cancelled:
        with upload.discarding():
            return _end(attempt, "cancelled", "cancelled while running")
    except TransientError as e:
        reason = str(e)
        with upload.discarding():
            patience.call(lambda: _release(db, job_id, worker, reason))
        raise
    except FarmError as e:
        with upload.discarding():
            return _end(attempt, "failed", str(e))
    except Exception as e:  # a bug, or a time limit: the traceback goes to the log, one line to the job
        log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
        with upload.discarding():
            return _end(attempt, "failed", _describe(e))


def _checkpoint_of(db: Any, job_id: int, worker: str, patience: Patience) -> tuple[str, str] | None:
    """The (uri, sha256) of the checkpoint a finish stage converts; a transient failure hands the claim back first,
    or the job would sit running until its lease ran out."""
    from farm.store import execution

    try:
        found = execution.checkpoint_of(db, job_id)
    except TransientError as e:
        reason = str(e)
        with contextlib.suppress(FarmError):
            patience.call(lambda: _release(db, job_id, worker, reason))
        raise
    return (found.uri, found.sha256) if found is not None else None


def _run_trial(
    attempt: _Attempt,
    spec: Any,
    reference: Any,
    checkpoint: tuple[str, str] | None,
    should_stop: Callable[[], bool],
) -> tuple[Any, list[Stored]]:
    """Run the job's steps in a scratch directory and upload what they wrote under this attempt's keys."""
    from farm.jobs.steps import run_job  # looked up per call: tests replace the engine with a fake

    ckpt_path = _fetch(attempt.store, *checkpoint, "checkpoint.pt") if checkpoint else None
    with tempfile.TemporaryDirectory(prefix="farm-job-") as tmp:
        result = run_job(spec, Path(tmp), reference=reference, should_stop=should_stop, checkpoint=ckpt_path)
        stored = attempt.upload.put_dir(Path(tmp))
    result.artifact_uri = model_uri(result, stored)
    # One "model" per job (the file a user deploys; the results view joins on it): another model-like file the job
    # kept, such as the ONNX graph a TensorRT engine was built from, is recorded as "other".
    stored = [("other" if kind == "model" and obj.uri != result.artifact_uri else kind, obj) for kind, obj in stored]
    return result, stored


def model_uri(result: Any, stored: list[Stored]) -> str | None:
    """The URI of the file a user deploys: the one the result names (a TensorRT job also keeps the ONNX graph it
    built its engine from), else the first model file."""
    main = (result.artifact or {}).get("file")
    models = [(kind, obj) for kind, obj in stored if kind == "model"]
    named = next((obj.uri for _, obj in models if main and obj.uri.rsplit("/", 1)[-1] == main), None)
    return named or next((obj.uri for _, obj in models), None)


def _record_success(attempt: _Attempt, result: Any, stored: list[Stored]) -> Outcome:
    """Record the result (kept through a database outage: retried until the database is back), then settle what
    this attempt uploaded: kept when its record won, deleted otherwise."""
    attempt.upload.recording = True  # from here a failure may hide a COMMIT that landed: keep the objects
    record = result.to_dict()
    db, job_id, worker = attempt.db, attempt.job_id, attempt.worker
    state, recorded = attempt.patience.call(lambda: _record_result(db, job_id, worker, record, stored))
    attempt.upload.settle(db, job_id, state, stored, recorded=recorded)
    return attempt.outcome(state)


def _train_stage(attempt: _Attempt, spec: Any, should_stop: Callable[[], bool]) -> Outcome:
    """Fine-tune (on this GPU worker), upload the checkpoint under this attempt's keys, and queue the finish
    stage; a train stage that finds the job no longer its own deletes the checkpoint it uploaded."""
    from farm.jobs.train import train_job
    from farm.store import execution

    with tempfile.TemporaryDirectory(prefix="farm-train-") as tmp:
        path = train_job(spec, Path(tmp), should_stop=should_stop)
        stored = attempt.upload.put_file(path, "checkpoint.pt")
    attempt.upload.recording = True
    db, job_id, worker = attempt.db, attempt.job_id, attempt.worker
    message = attempt.patience.call(lambda: execution.hand_off(db, job_id, worker, stored))
    if message is None:
        # Cancelled or taken over, or a retry after a COMMIT that landed unseen: the rows decide whether the
        # checkpoint is recorded (kept) or not (deleted).
        attempt.upload.settle(db, job_id, "succeeded", [("checkpoint", stored)])
        return Outcome(job_id, "cancelled", None, time.perf_counter() - attempt.started)
    return Outcome(job_id, "handoff", None, time.perf_counter() - attempt.started, queue=message.queue)


def _record_result(db: Any, job_id: int, worker: str, result: dict[str, Any], stored: list[Stored]) -> tuple[str, bool]:
    """Record a success (settling the sweeps it was the last of): the job's state, and whether this very call
    recorded the result (then the rows are this attempt's).

    One try: the caller retries it while the database is unreachable (:func:`_patience`). The conditional UPDATE
    records nothing twice: had an earlier COMMIT landed unseen, the retry finds the job succeeded already.
    """
    from farm.store import execution

    recorded = execution.record_result(db, job_id, worker, result, stored)
    return recorded.state, recorded.recorded


def _release(db: Any, job_id: int, worker: str, reason: str) -> None:
    """Hand the job back to the queue (a transient failure the task retries), if this worker still holds it."""
    from farm.store import execution

    execution.release(db, job_id, worker, reason)


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


def _end(attempt: _Attempt, state: str, error: str) -> Outcome:
    """End the job as ``state`` with ``error`` (if this worker still holds it), riding out an outage."""
    from farm.store import execution

    db, job_id, worker = attempt.db, attempt.job_id, attempt.worker
    final = attempt.patience.call(lambda: execution.end_job(db, job_id, worker, state, error))
    return attempt.outcome(final, error)


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
    """The fp32 reference a trial compares with, loaded from its recorded ``reference.pt``.

    Raises:
        QuantizationError: the reference failed or was cancelled (the trial can never run).
        ReferenceNotReady: it has not succeeded yet (the trial goes back to the queue).
    """
    from farm.quant.reference import Reference
    from farm.store import execution

    ref = execution.reference_of(db, reference_id)
    if ref.state in ("failed", "cancelled"):
        raise QuantizationError(f"the fp32 reference (job {reference_id}) {ref.state}: {ref.error}")
    if ref.state != "succeeded" or ref.file is None:
        raise ReferenceNotReady(f"the fp32 reference (job {reference_id}) has not finished")
    return Reference.load(_fetch(store, ref.file.uri, ref.file.sha256, "reference.pt"))
