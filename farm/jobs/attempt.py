"""What one claim of a job uploads, and how it goes away when the attempt does not end recorded.

Every claim uploads below its own prefix ``jobs/<job_key>/<attempt>`` (:mod:`farm.artifacts.attempts`): a worker
that lost the job (stalled past its lease, cancelled) never writes over the objects a row points at, and deletes
what it uploaded. The attempt that records the job deletes what earlier, dead attempts left below its job's key.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from farm.artifacts.attempts import attempt_prefix, new_attempt
from farm.errors import FarmError

log = logging.getLogger("farm.jobs.attempt")

#: The artifact kind of each file a job writes (a manifest, a model, an fp32 reference); others are "other".
_KINDS = {"model.pt": "model", "model_state.pt": "model", "manifest.json": "manifest", "reference.pt": "reference"}
_KINDS.update({"model.onnx": "model", "model.xml": "model", "model.plan": "model"})  # runtime jobs' model files

#: A stored object with the artifact kind it is recorded as.
Stored = tuple[str, Any]


class AttemptUpload:
    """What one claim uploads, below its own prefix ``jobs/<job_key>/<attempt>``, and how it goes away when the
    attempt does not end recorded.

    Deleting is best-effort: a store that cannot be reached keeps the objects, and ``farm artifacts gc`` removes
    them later (no row points at them, and their attempt no longer holds the job).
    """

    def __init__(self, store: Any, prefix: str, claims: int = 0):
        self.store, self.prefix = store, prefix
        self.claims = claims  # the job's claim counter at this claim: 1 means no earlier attempt left anything
        self.started = False  # something may have been written below the prefix
        self.recording = False  # the result is being recorded: a failure no longer proves no row points here

    @classmethod
    def for_claim(cls, store: Any, job_key: str, attempts: int, worker: str) -> AttemptUpload:
        """The upload of the claim by ``worker`` that made the job's claim counter ``attempts``: keys no other
        claim can produce."""
        return cls(store, attempt_prefix(job_key, new_attempt(attempts, worker)), claims=attempts)

    def put_dir(self, local_dir: Path) -> list[Stored]:
        """Upload a job's output directory; returns each object with the artifact kind it is recorded as."""
        self.started = True
        return [
            (_KINDS.get(obj.key.rsplit("/", 1)[-1], "other"), obj) for obj in self.store.put_dir(local_dir, self.prefix)
        ]

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

    def settle(self, db: Any, job_id: int, state: str, stored: list[Stored], recorded: bool = False) -> None:
        """After the record: a loser (the job was cancelled, taken over, or recorded by another attempt) deletes
        its objects. "succeeded" alone does not say whose result was recorded (another attempt's, or this one's
        in a COMMIT whose answer was lost), so the rows are asked, unless this very call recorded it."""
        if not self.started or not stored:
            return
        if state == "succeeded":
            from farm.store import execution

            try:
                ours = recorded or execution.recorded_here(db, job_id, [obj.uri for _, obj in stored])
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
