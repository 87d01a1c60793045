"""The audit of one chaos round (bench/chaos.py), and the table of every round: what the database, the artifact
store and the workers' own logs say happened to a sweep, read directly (never through the proxies that the faults
go through).

Every figure is counted from the ground truth of its own: job states and rows from PostgreSQL, objects and their
bytes from S3 (each object a row points at is downloaded and hashed), and the runs that computed a job to the end
from the workers' logs (Celery logs each task's return value). A run returns the job's state, so a late run whose
record was refused (a stalled worker waking up) returns 'succeeded' too: that figure is the compute spent, not the
results recorded; "exactly once" is judged from the rows.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

# Faults where a worker really died or stalled: one worker loss is the truth there; anywhere else it is a bug.
LOSS_ALLOWED = {"pool-kill": 1, "worker-kill": 1, "worker-stall": 1}
TASK_RESULT = re.compile(r"Task (farm\.run_job|farm\.qat_train)\[[^\]]+\] succeeded in [0-9.e+-]+s: '(\w+)'")


@dataclass
class Audit:
    """One round's findings. ``problems`` says in words what each non-zero figure was."""

    jobs: int = 0
    succeeded: int = 0
    lost: int = 0  # jobs that did not end succeeded with their result (metrics and model rows)
    runs_completed: int = 0  # task runs that returned 'succeeded' (the job's state at their end), from the logs
    mixed_records: int = 0  # succeeded jobs whose artifact rows come from more than one attempt
    duplicate_rows: int = 0  # metrics rows past one per (job, batch size), artifact rows past one per (job, kind)
    missing_objects: int = 0  # artifact rows whose object is gone
    sha_mismatches: int = 0  # artifact rows whose object's bytes hash to another sha256 (or another size)
    orphans: int = 0  # objects under jobs/ that no artifact row points at
    orphan_bytes: int = 0
    worker_losses: int = 0
    attempts: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def exactly_once(self) -> bool:
        return self.succeeded == self.jobs and self.duplicate_rows == 0 and self.mixed_records == 0


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> (bucket, key)."""
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        raise ValueError(f"not an s3:// URI: {uri}")
    return parts.netloc, parts.path.lstrip("/")


def audit_round(engine: sa.Engine, sweep_id: int, s3: Any, bucket: str, prefix: str, worker_logs: list[Path]) -> Audit:
    """Audit one settled (or abandoned) round.

    Args:
        engine: a direct connection to the round's database.
        sweep_id: the round's sweep.
        s3: a boto3 S3 client on the store's endpoint, directly.
        bucket: the store's bucket.
        prefix: the store's key prefix (the round's own): its ``jobs/`` is listed for orphans.
        worker_logs: every log of every worker process the round started (killed ones included).

    Returns:
        The :class:`Audit`.
    """
    a = Audit()
    with engine.connect() as c:
        jobs = list(
            c.execute(
                sa.text(
                    "SELECT j.id, j.state, j.method, j.attempts, j.worker_losses, j.error FROM jobs j "
                    "JOIN sweep_jobs sj ON sj.job_id = j.id WHERE sj.sweep_id = :s ORDER BY j.id"
                ),
                {"s": sweep_id},
            ).mappings()
        )
        metrics = list(c.execute(sa.text("SELECT job_id, batch_size FROM metrics")).mappings())
        artifacts = list(c.execute(sa.text("SELECT job_id, kind, uri, sha256, size_bytes FROM artifacts")).mappings())
    ids = {j["id"] for j in jobs}
    a.jobs = len(jobs)
    a.worker_losses = sum(j["worker_losses"] or 0 for j in jobs)
    a.attempts = sum(j["attempts"] or 0 for j in jobs)

    metric_count: dict[tuple[int, int], int] = {}
    for m in metrics:
        metric_count[(m["job_id"], m["batch_size"])] = metric_count.get((m["job_id"], m["batch_size"]), 0) + 1
    kinds: dict[tuple[int, str], int] = {}
    for r in artifacts:
        kinds[(r["job_id"], r["kind"])] = kinds.get((r["job_id"], r["kind"]), 0) + 1
    for (job_id, what), n in [*metric_count.items(), *kinds.items()]:
        if n > 1:
            a.duplicate_rows += n - 1
            a.problems.append(f"job {job_id}: {n} rows for {what}")

    for j in jobs:
        has_metrics = any(k[0] == j["id"] for k in metric_count)
        has_model = (j["id"], "model") in kinds
        if j["state"] == "succeeded" and has_metrics and has_model:
            a.succeeded += 1
            continue
        a.lost += 1
        why = j["state"] if j["state"] != "succeeded" else "succeeded without its metrics or model rows"
        error = f": {j['error'][:160]}" if j["error"] else ""
        a.problems.append(f"job {j['id']} ({j['method']}) {why}{error}")

    referenced: set[str] = set()
    for r in artifacts:
        if r["job_id"] not in ids:
            continue
        row_bucket, key = split_s3_uri(r["uri"])
        referenced.add(key)
        digest, size = _download_sha256(s3, row_bucket, key)
        if digest is None:
            a.missing_objects += 1
            a.problems.append(f"job {r['job_id']} {r['kind']}: object {r['uri']} is missing")
        elif digest != r["sha256"] or size != r["size_bytes"]:
            a.sha_mismatches += 1
            a.problems.append(
                f"job {r['job_id']} {r['kind']}: {r['uri']} hashes to {digest[:12]}…, row says {r['sha256'][:12]}…"
            )

    attempts_of: dict[int, set[str]] = {}
    for r in artifacts:  # jobs/<job key>/<attempt>/<file>: one recorded attempt per job
        parts = ("/" + split_s3_uri(r["uri"])[1]).split("/jobs/", 1)[-1].split("/")
        attempts_of.setdefault(r["job_id"], set()).add(parts[1] if len(parts) > 2 else "")
    for job_id, seen in sorted(attempts_of.items()):
        if job_id in ids and len(seen) > 1:
            a.mixed_records += 1
            a.problems.append(f"job {job_id}: artifact rows from {len(seen)} attempts ({', '.join(sorted(seen))})")

    jobs_prefix = f"{prefix.strip('/')}/jobs/" if prefix.strip("/") else "jobs/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=jobs_prefix):
        for obj in page.get("Contents", []):
            if obj["Key"] not in referenced:
                a.orphans += 1
                a.orphan_bytes += int(obj["Size"])
                a.problems.append(f"orphan object s3://{bucket}/{obj['Key']} ({obj['Size']} bytes)")

    for log in worker_logs:
        text = log.read_text(errors="replace") if log.exists() else ""
        a.runs_completed += sum(1 for m in TASK_RESULT.finditer(text) if m.group(2) == "succeeded")
    return a


def _download_sha256(s3: Any, bucket: str, key: str) -> tuple[str | None, int]:
    """(sha256 hex, size) of an object's bytes, downloaded; (None, 0) when there is no such object."""
    from botocore.exceptions import ClientError

    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None, 0
        raise
    h, size = hashlib.sha256(), 0
    for chunk in iter(lambda: body.read(1 << 20), b""):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


@dataclass
class Outcome:
    number: int
    fault: str
    hit: str
    wait_rc: int | None  # None: --wait never returned by itself
    state_at_return: str | None
    final_state: str
    settled: bool
    seconds: float
    audit: Audit

    @property
    def wait_truthful(self) -> bool:
        if self.wait_rc not in (0, 1) or self.state_at_return != self.final_state:
            return False
        return (self.wait_rc == 0) == (self.final_state == "succeeded" and self.audit.lost == 0)

    @property
    def faulted(self) -> bool:
        """Whether the fault hit anything (a sweep can end before its moment comes)."""
        return "no fault" not in self.hit

    @property
    def passed(self) -> bool:
        a = self.audit
        bad = a.lost + a.duplicate_rows + a.missing_objects + a.sha_mismatches + a.orphans
        return (
            self.faulted
            and bad == 0
            and a.exactly_once
            and a.worker_losses <= LOSS_ALLOWED.get(self.fault, 0)
            and self.settled
            and self.wait_truthful
        )

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "FAIL" if self.faulted else "no fault"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} logical CPUs"
    return f"unknown CPU, {os.cpu_count()} logical CPUs"


def table(outcomes: list[Outcome]) -> str:
    head = "| round | fault | what it hit | succeeded | runs completed | duplicate rows | lost | missing objects |"
    head += " sha256 differs | orphans | worker losses | `--wait` | resume needed | s | verdict |"
    lines = [head, "|" + "---|" * 15]
    for o in outcomes:
        a = o.audit
        wait = "hung" if o.wait_rc is None else f"exit {o.wait_rc}, {o.state_at_return}"
        wait += "" if o.wait_truthful else " (wrong)"
        lines.append(
            f"| {o.number} | {o.fault} | {o.hit} | {a.succeeded}/{a.jobs} | {a.runs_completed} | {a.duplicate_rows} "
            f"| {a.lost} | {a.missing_objects} | {a.sha_mismatches} | {a.orphans} | {a.worker_losses} | {wait} "
            f"| {'no' if o.settled else 'YES'} | {o.seconds:.0f} | {o.verdict} |"
        )
    t = [o.audit for o in outcomes]
    lines.append(
        f"| total | | | {sum(a.succeeded for a in t)}/{sum(a.jobs for a in t)} | {sum(a.runs_completed for a in t)} "
        f"| {sum(a.duplicate_rows for a in t)} | {sum(a.lost for a in t)} | {sum(a.missing_objects for a in t)} "
        f"| {sum(a.sha_mismatches for a in t)} | {sum(a.orphans for a in t)} | {sum(a.worker_losses for a in t)} "
        f"| {sum(not o.wait_truthful for o in outcomes)} wrong | {sum(not o.settled for o in outcomes)} "
        f"| {sum(o.seconds for o in outcomes):.0f} | {sum(o.passed for o in outcomes)}/{len(outcomes)} pass |"
    )
    return "\n".join(lines)
