"""Where one attempt at a job puts its objects: ``jobs/<job_key>/<attempt>/<file>``.

A job can be run by more than one worker: a worker stalled past its lease wakes up while another worker, which
took the job over, has already recorded it. If both wrote the same keys, the late one would replace the
objects that the recorded rows point at, and their sha256 would no longer match. So every claim uploads under
a key of its own, ``<attempts>-<worker>-<random>``, that no other claim can produce; the database records the
winner's URIs, and a loser deletes what it uploaded. An object that a row points at is never written again.

The attempt name says which claim wrote it: ``attempts`` (the job's claim counter at the claim) and the worker's
name, so that ``farm artifacts gc`` can tell an attempt that still runs (leave it alone) from one that ended.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_UNSAFE = re.compile(r"[^A-Za-z0-9._]+")
_ATTEMPT = re.compile(r"^(\d+)-([A-Za-z0-9._-]*)-([0-9a-f]{8})$")
_MAX_WORKER_CHARS = 80


def worker_slug(worker: str | None) -> str:
    """A worker name as it appears in an attempt key: runs of characters other than ``[A-Za-z0-9._]`` become one
    ``_`` (``host:1234`` -> ``host_1234``), cut to 80 characters."""
    return _UNSAFE.sub("_", worker or "")[:_MAX_WORKER_CHARS]


def new_attempt(attempts: int, worker: str) -> str:
    """A fresh attempt name for the claim that made the job's claim counter ``attempts``.

    Args:
        attempts: the job's ``attempts`` after the claim.
        worker: the claiming worker's name.

    Returns:
        ``<attempts>-<worker slug>-<8 random hex digits>``: unique to this claim.
    """
    return f"{attempts}-{worker_slug(worker)}-{secrets.token_hex(4)}"


def attempt_prefix(job_key: str, attempt: str) -> str:
    """The key prefix an attempt uploads below: ``jobs/<job_key>/<attempt>``."""
    return f"jobs/{job_key}/{attempt}"


@dataclass(frozen=True)
class AttemptKey:
    """An object key of the attempt layout, taken apart."""

    job_key: str
    attempt: str
    attempts: int
    worker_slug: str


def parse_key(key: str) -> AttemptKey | None:
    """Take ``jobs/<job_key>/<attempt>/<file...>`` apart; None for any other key (the layout before attempts,
    ``jobs/<job_key>/model.pt``, or a stray object)."""
    parts = key.split("/")
    if len(parts) < 4 or parts[0] != "jobs":
        return None
    match = _ATTEMPT.match(parts[2])
    if match is None:
        return None
    return AttemptKey(parts[1], parts[2], int(match.group(1)), match.group(2))


def is_live(parsed: AttemptKey, state: str | None, attempts: int | None, worker: str | None) -> bool:
    """Whether the attempt ``parsed`` still holds its job, given the job's row (``state``, ``attempts``, ``worker``):
    the job runs, under the same claim counter and the same worker."""
    return state == "running" and attempts == parsed.attempts and worker_slug(worker) == parsed.worker_slug
