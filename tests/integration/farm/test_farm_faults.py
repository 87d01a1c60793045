"""The farm survives a worker dying, a duplicate message, a broker restart and an S3 outage without losing or
duplicating a result.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.farm.farm_support import Farm, closed_port, group_members, wait_for

pytestmark = pytest.mark.integration


def _job(farm: Farm, job_id: int) -> Any:
    (row,) = farm.rows("SELECT * FROM jobs WHERE id = :j", j=job_id)
    return row


def _counts(farm: Farm, sweep_id: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for j in farm.jobs(sweep_id):
        counts[j["state"]] = counts.get(j["state"], 0) + 1
    return counts


def test_a_worker_killed_mid_job_is_taken_over_and_the_job_succeeds_once(make_farm: Any, s3_artifacts: Any):
    # A short lease: the surviving worker's reaper re-queues the dead worker's job within seconds.
    farm = make_farm(artifacts_url=s3_artifacts.url, FARM_LEASE_S="4")
    workers = (farm.start_worker("-Q", "cpu", "-c", "1"), farm.start_worker("-Q", "cpu", "-c", "1"))
    farm.wait_ready(*workers)
    # qat fine-tuning for several seconds: long enough to be killed in the middle of it.
    spec = farm.write_spec("sigkill", "models: [farm:digits-mlp]\nmethods:\n  - fp32\n  - qat: {steps: 2500}")
    sweep_id = farm.submit(spec)
    qat_id = next(j["id"] for j in farm.jobs(sweep_id) if j["method"] == "qat")

    def renewed_lease() -> Any:
        # Running, and its lease renewed by a heartbeat at least once: well into the job.
        job = _job(farm, qat_id)
        assert job["state"] in ("pending", "queued", "running"), f"qat job ended {job['state']} before the kill"
        lease = job["lease_expires_at"]
        return (
            job["state"] == "running"
            and lease is not None
            and (lease - job["started_at"]).total_seconds() > 4.5
            and job
        )

    running = wait_for(renewed_lease, 120, "the qat job to run", logs=farm.logs)
    (victim,) = [w for w in workers if w.owns(running["worker"])]
    (survivor,) = [w for w in workers if w is not victim]

    victim.kill_group()

    assert group_members(victim.pgid) == []
    job = _job(farm, qat_id)
    assert (job["state"], job["worker"]) == ("running", running["worker"]), "the job was not cut off mid-run"
    assert farm.wait_sweep_done(sweep_id, timeout_s=120) == "succeeded"
    job = _job(farm, qat_id)
    assert job["state"] == "succeeded" and job["attempts"] == 2
    assert survivor.owns(job["worker"]) and job["worker"] != running["worker"]
    assert farm.metric_counts(sweep_id)[qat_id] == [1]
    assert farm.artifact_kinds(qat_id) == ["manifest", "model"]
    assert "reaper: 1 job(s) re-queued" in survivor.log()


def test_a_message_delivered_three_times_runs_the_job_once(farm: Farm):
    spec = farm.write_spec(
        "duplicate",
        "models: [farm:digits-mlp]\nmethods: [fp32]",
        benchmark="benchmark: {batch_size: [1, 4], max_time_s: 0.2, min_reps: 5, warmup_s: 0}",
    )
    sweep_id = farm.submit(spec)  # no worker yet: the job's message waits in the queue
    (job,) = farm.jobs(sweep_id)
    assert job["state"] == "queued"

    # The same job sent twice more: once through dispatch.send, once by task name.
    from farm.jobs.policy import Message
    from workers import dispatch
    from workers.app import RUN_JOB, make_app

    app = make_app(farm.broker_url)
    try:
        assert dispatch.send(app, [Message(job["id"], "cpu", "all")]) == 1
        app.send_task(RUN_JOB, args=[job["id"]], queue="cpu", routing_key="cpu")
        with app.connection_for_write() as conn:
            assert conn.default_channel.client.llen("cpu") == 3
    finally:
        app.close()
    # Two pool processes, so that two deliveries can be taken at once.
    worker = farm.start_worker("-Q", "cpu", "-c", "2")

    assert farm.wait_sweep_done(sweep_id) == "succeeded"
    wait_for(lambda: len(worker.results()) == 3, 60, "all three deliveries to be handled", logs=farm.logs)
    assert sorted(worker.results()) == ["skipped", "skipped", "succeeded"]
    job = _job(farm, job["id"])
    assert job["state"] == "succeeded" and job["attempts"] == 1 and worker.owns(job["worker"])
    assert farm.metric_counts(sweep_id) == {job["id"]: [1, 4]}
    assert farm.artifact_kinds(job["id"]) == ["manifest", "model", "reference"]


RESTART_SPEC = """
models: [farm:digits-mlp]
methods:
  - fp32
  - qat:
      steps: 150
      lr: [0.0001, 0.0002, 0.0003, 0.0004, 0.0005, 0.0006, 0.0007, 0.0008, 0.0009, 0.001, 0.0011]
"""


def test_a_broker_restart_mid_sweep_then_resume_finishes_every_job_once(
    make_farm: Any, own_redis: Any, s3_artifacts: Any
):
    farm = make_farm(broker_url=own_redis.url, artifacts_url=s3_artifacts.url, FARM_LEASE_S="4")
    worker = farm.start_worker("-Q", "cpu", "-c", "1")
    farm.wait_ready(worker)
    spec = farm.write_spec("broker-restart", RESTART_SPEC)
    sweep_id = farm.submit(spec)
    total = len(farm.jobs(sweep_id))
    assert total == 12

    def midway() -> dict[str, int] | None:
        counts = _counts(farm, sweep_id)
        assert counts.get("succeeded", 0) < total, "the sweep finished before the broker could be restarted"
        return counts if counts.get("succeeded", 0) >= 3 and counts.get("queued", 0) >= 4 else None

    wait_for(midway, 120, "some jobs done and some still queued", interval_s=0.05, logs=farm.logs)

    own_redis.kill()
    own_redis.start()  # same port, empty: every queued message is lost

    # Jobs the database holds as queued, whose messages are gone: only `farm sweep resume` brings them back.
    assert own_redis.queue_length() == 0
    assert _counts(farm, sweep_id).get("queued", 0) >= 2
    resumed = farm.cli("sweep", "resume", str(sweep_id))
    assert resumed.returncode == 0, resumed.stderr
    assert "message(s) sent" in resumed.stdout
    assert farm.wait_sweep_done(sweep_id, timeout_s=180) == "succeeded"
    jobs = farm.jobs(sweep_id)
    assert {j["state"] for j in jobs} == {"succeeded"}
    assert farm.metric_counts(sweep_id) == {j["id"]: [1] for j in jobs}
    assert all(farm.artifact_kinds(j["id"])[:2] == ["manifest", "model"] for j in jobs)
    # Exactly once: one run of each job ended in a recorded result. The worker reconnected by itself: the same
    # process, and its Celery child was never restarted by the supervisor.
    assert worker.results().count("succeeded") == total
    assert worker.proc.poll() is None and "restarting in" not in worker.log()


def test_s3_down_during_upload_fails_the_jobs_after_retrying_and_records_no_artifact(make_farm: Any, s3_artifacts: Any):
    farm = make_farm(artifacts_url=s3_artifacts.url)
    # The farm's only worker: its S3 endpoint refuses connections; one transient retry (5 s later).
    port = closed_port()
    broken = farm.start_worker(
        "-Q", "cpu", "-c", "2", env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "FARM_TRANSIENT_RETRIES": "1"}
    )
    # Meanwhile, with S3 up, a local run records the fp32 reference in the same database and store, and its
    # trial brings the reference's outputs into the shared local cache: a later trial of that model then needs
    # S3 only to upload.
    local = farm.cli(
        "sweep", "run", str(farm.write_spec("s3-up", "models: [farm:digits-mlp]\nmethods: [fp32, static]"))
    )
    assert local.returncode == 0, local.stderr
    farm.wait_ready(broken)

    # A trial (its reference reused from the first sweep) and a reference (another seed: another job).
    trial_sweep = farm.submit(farm.write_spec("s3-down-trial", "models: [farm:digits-mlp]\nmethods: [fp32, dynamic]"))
    reference_sweep = farm.submit(
        farm.write_spec("s3-down-reference", "models: [farm:digits-mlp]\nmethods: [fp32]\nseed: 1")
    )

    for sweep_id, role in ((trial_sweep, "trial"), (reference_sweep, "reference")):
        assert farm.wait_sweep_done(sweep_id, timeout_s=90) == "failed", role
        (job,) = [j for j in farm.jobs(sweep_id) if j["role"] == role]
        assert job["state"] == "failed" and job["attempts"] == 2 and broken.owns(job["worker"]), role
        assert job["error"].startswith("gave up after 2 attempts: ") and f"127.0.0.1:{port}" in job["error"]
        assert "during upload" in job["error"] and "\n" not in job["error"]
        assert farm.artifact_kinds(job["id"]) == []
        assert farm.metric_counts(sweep_id)[job["id"]] == []
    assert broken.log().count("retry: Retry in 5s") == 2
