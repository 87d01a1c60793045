"""The qat chain in the database on SQLite: a job routed to train on the gpu queue is handed off, with its
checkpoint, to its finish stage on the CPU pool (``execution.queue_finish_stage``), and only by the worker that
holds it.

Plans come from a real spec and are routed with farm.routing as ``farm sweep submit`` routes them; nothing
here runs a model or talks to a broker.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from farm.artifacts import StoredObject
from farm.jobs import policy
from farm.routing import Pools, route
from farm.spec.load import load_spec
from farm.store import execution, graph, lifecycle, plans, scheduling, sweeps
from farm.store.db import Database
from farm.store.models import Artifact, Job

SPEC = """\
name: chain
models: [farm:digits-cnn]
methods:
  - dynamic
  - qat: {device: cuda, steps: 2}
"""  # the fp32 reference (cpu), dynamic (cpu), qat (train on gpu, finish on cpu)

RESULT = {
    "accuracy": 0.9,
    "accuracy_fp32": 0.95,
    "size_bytes": 1000,
    "simulated": False,
    "hardware": "test cpu",
    "hardware_id": "hw",
    "duration_s": 1.0,
    "latency": [{"batch_size": 1, "latency_p50_ms": 1.0, "latency_p90_ms": 1.1, "latency_p99_ms": 1.2,
                 "throughput": 1000.0, "reps": 20}],
}  # fmt: skip


def checkpoint(job_id: int, worker: str = "gpu0") -> StoredObject:
    key = f"jobs/{job_id}/checkpoint.pt"
    return StoredObject(key=key, uri=f"file:///store/{worker}/{key}", sha256="c" * 64, size_bytes=1234)


def submit(db: Database, pools: Pools | None = None) -> tuple[int, int, list[policy.Message]]:
    """Persist and route SPEC; run its reference; returns (qat job id, reference id, the messages sent then)."""
    pools = pools or Pools()
    plan = load_spec(SPEC, pools=pools)
    with db.session() as s:
        record = plans.create_sweep(s, plan, "tester@host")
        routes = {}
        for job in plan.jobs:
            r = route(job.method, job.device, pools)
            routes[record.ids[job.key]] = (r.queue, r.stage, r.finish_queue)
        plans.set_routes(s, routes)
        first = scheduling.queue_ready(s, record.to_run)
    qat_id = next(record.ids[j.key] for j in plan.jobs if j.method.method == "qat")
    ref_id = next(record.ids[j.key] for j in plan.references)
    assert [m.job_id for m in first] == [ref_id]  # the trials wait for their fp32 reference
    with db.session() as s:
        assert lifecycle.claim_job(s, ref_id, "cpu0", lease_s=60) is not None
        assert lifecycle.finish_job(s, ref_id, "cpu0", RESULT)
        sent = scheduling.queue_ready(s, graph.dependents(s, ref_id))
    return qat_id, ref_id, sent


def job_row(db: Database, job_id: int) -> dict[str, Any]:
    with db.session(write=False) as s:
        job = s.get(Job, job_id)
        assert job is not None
        cols = ("state", "stage", "queue", "finish_queue", "worker", "lease_expires_at", "attempts")
        return {c: getattr(job, c) for c in cols} | {"queued_at": job.queued_at}


def checkpoints(db: Database, job_id: int) -> list[tuple[str, str, int]]:
    with db.session(write=False) as s:
        rows = s.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == "checkpoint"))
        return [(a.uri, a.sha256, a.size_bytes) for a in rows]


def train_claim(db: Database, job_id: int, worker: str = "gpu0", lease_s: float = 60) -> None:
    with db.session() as s:
        claim = lifecycle.claim_job(s, job_id, worker, lease_s=lease_s)
        assert claim is not None and claim.stage == "train"


def test_a_qat_job_on_cuda_is_sent_to_train_on_the_gpu_queue(migrated_db: Database) -> None:
    qat_id, _, sent = submit(migrated_db)
    assert policy.Message(qat_id, "gpu", "train") in sent
    assert {(m.queue, m.stage) for m in sent if m.job_id != qat_id} == {("cpu", "all")}  # dynamic
    row = job_row(migrated_db, qat_id)
    assert (row["state"], row["stage"], row["queue"], row["finish_queue"]) == ("queued", "train", "gpu", "cpu")


def test_hand_off_moves_the_job_to_its_finish_stage_on_the_cpu_queue(migrated_db: Database) -> None:
    qat_id, _, _ = submit(migrated_db)
    train_claim(migrated_db, qat_id)
    with migrated_db.session() as s:
        message = execution.queue_finish_stage(s, qat_id, "gpu0", checkpoint(qat_id))
    assert message == policy.Message(qat_id, "cpu", "finish")
    row = job_row(migrated_db, qat_id)
    assert (row["state"], row["stage"], row["queue"]) == ("queued", "finish", "cpu")
    assert (row["worker"], row["lease_expires_at"], row["attempts"]) == (None, None, 0)  # a fresh budget
    assert row["queued_at"] is not None
    stored = checkpoint(qat_id)
    assert checkpoints(migrated_db, qat_id) == [(stored.uri, stored.sha256, stored.size_bytes)]


def test_the_finish_stage_is_claimed_by_a_cpu_worker_with_the_checkpoint_and_ends_the_job(
    migrated_db: Database,
) -> None:
    qat_id, _, _ = submit(migrated_db)
    train_claim(migrated_db, qat_id)
    with migrated_db.session() as s:
        assert execution.queue_finish_stage(s, qat_id, "gpu0", checkpoint(qat_id)) is not None
    with migrated_db.session() as s:
        claim = lifecycle.claim_job(s, qat_id, "cpu1", lease_s=60)
        assert claim is not None and (claim.stage, claim.attempts) == ("finish", 1)
        ckpt = execution.artifact_of(s, qat_id, "checkpoint")
        assert ckpt is not None and ckpt.uri == checkpoint(qat_id).uri
        model = StoredObject(key=f"jobs/{qat_id}/model.pt", uri="file:///store/model.pt", sha256="0" * 64, size_bytes=9)
        assert lifecycle.finish_job(s, qat_id, "cpu1", RESULT, [("model", model)])
    row = job_row(migrated_db, qat_id)
    assert (row["state"], row["stage"], row["worker"]) == ("succeeded", "finish", "cpu1")


def test_hand_off_goes_to_the_named_cpu_pool(migrated_db: Database) -> None:
    pools = Pools(cpu="cpu-avx512", gpu="gpu-a100")
    qat_id, _, sent = submit(migrated_db, pools)
    assert policy.Message(qat_id, "gpu-a100", "train") in sent
    train_claim(migrated_db, qat_id)
    with migrated_db.session() as s:
        assert execution.queue_finish_stage(s, qat_id, "gpu0", checkpoint(qat_id)) == policy.Message(
            qat_id, "cpu-avx512", "finish"
        )
    assert job_row(migrated_db, qat_id)["queue"] == "cpu-avx512"


def test_only_the_worker_holding_the_job_hands_it_off(migrated_db: Database) -> None:
    qat_id, _, _ = submit(migrated_db)
    train_claim(migrated_db, qat_id)
    before = job_row(migrated_db, qat_id)
    with migrated_db.session() as s:
        assert execution.queue_finish_stage(s, qat_id, "gpu9", checkpoint(qat_id, "gpu9")) is None
    assert job_row(migrated_db, qat_id) == before
    assert checkpoints(migrated_db, qat_id) == []


def test_a_duplicate_hand_off_records_one_checkpoint(migrated_db: Database) -> None:
    qat_id, _, _ = submit(migrated_db)
    train_claim(migrated_db, qat_id)
    with migrated_db.session() as s:
        first = execution.queue_finish_stage(s, qat_id, "gpu0", checkpoint(qat_id))
    assert first is not None
    with migrated_db.session() as s:  # the same hand-off again (its answer was lost): the same message, no new row
        assert execution.queue_finish_stage(s, qat_id, "gpu0", checkpoint(qat_id)) == first
    with migrated_db.session() as s:  # another attempt's checkpoint: the job is no longer running, nothing to send
        assert execution.queue_finish_stage(s, qat_id, "gpu1", checkpoint(qat_id, "gpu1")) is None
    assert len(checkpoints(migrated_db, qat_id)) == 1


def test_a_retrained_job_replaces_the_checkpoint_of_its_dead_first_worker(migrated_db: Database) -> None:
    qat_id, _, _ = submit(migrated_db)
    train_claim(migrated_db, qat_id, "gpu0", lease_s=-1)  # gpu0 dies: its lease has already run out
    train_claim(migrated_db, qat_id, "gpu1")
    with migrated_db.session() as s:
        assert execution.queue_finish_stage(s, qat_id, "gpu0", checkpoint(qat_id, "gpu0")) is None  # too late
        assert execution.queue_finish_stage(s, qat_id, "gpu1", checkpoint(qat_id, "gpu1")) is not None
    assert [uri for uri, _, _ in checkpoints(migrated_db, qat_id)] == [checkpoint(qat_id, "gpu1").uri]


def test_a_cancelled_train_stage_is_not_handed_off(migrated_db: Database) -> None:
    qat_id, _, _ = submit(migrated_db)
    train_claim(migrated_db, qat_id)
    with migrated_db.session() as s:
        assert sweeps.cancel_unfinished(s, [qat_id]) == 1
    with migrated_db.session() as s:
        assert execution.queue_finish_stage(s, qat_id, "gpu0", checkpoint(qat_id)) is None
    row = job_row(migrated_db, qat_id)
    assert (row["state"], row["stage"]) == ("cancelled", "train")
    assert checkpoints(migrated_db, qat_id) == []


def test_a_finish_stage_whose_worker_died_is_requeued_to_finish_not_to_retrain(migrated_db: Database) -> None:
    qat_id, _, _ = submit(migrated_db)
    train_claim(migrated_db, qat_id)
    with migrated_db.session() as s:
        assert execution.queue_finish_stage(s, qat_id, "gpu0", checkpoint(qat_id)) is not None
    with migrated_db.session() as s:
        assert lifecycle.claim_job(s, qat_id, "cpu1", lease_s=-1) is not None  # cpu1 dies mid-convert
    with migrated_db.session() as s:
        (expired,) = scheduling.expired_jobs(s)
        assert scheduling.requeue_expired(s, expired, max_attempts=3) == policy.Message(qat_id, "cpu", "finish")
        count = s.scalar(select(func.count()).select_from(Artifact).where(Artifact.kind == "checkpoint"))
    assert count == 1
