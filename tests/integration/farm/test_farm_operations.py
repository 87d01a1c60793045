"""Operating sweeps on a farm: ``farm sweep cancel`` stops queued and running jobs, ``farm sweep retry
--failed-only`` runs the failed jobs again and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.farm.farm_support import FARM_TOYS, Farm, wait_for

pytestmark = pytest.mark.integration

# Three qat jobs that would fine-tune for minutes: whichever runs first is cut off by the cancel.
CANCEL_SPEC = """
models: [farm:digits-mlp]
methods:
  - fp32
  - qat:
      steps: 200000
      lr: [0.001, 0.002, 0.003]
"""


def test_cancel_stops_the_running_job_at_its_next_check_and_queued_jobs_never_start(farm: Farm):
    worker = farm.start_worker("-Q", "cpu", "-c", "1")
    farm.wait_ready(worker)
    sweep_id = farm.submit(farm.write_spec("cancel", CANCEL_SPEC))

    def a_trial_running() -> Any:
        jobs = farm.jobs(sweep_id)
        running = [j for j in jobs if j["role"] == "trial" and j["state"] == "running"]
        queued = [j for j in jobs if j["role"] == "trial" and j["state"] == "queued"]
        return len(running) == 1 and len(queued) == 2 and running[0]

    running = wait_for(a_trial_running, 120, "a qat job to run", logs=farm.logs)
    # Let it get into its fine-tuning: a heartbeat has renewed its lease since the claim.
    wait_for(
        lambda: (
            farm.scalar("SELECT lease_expires_at FROM jobs WHERE id = :j", j=running["id"])
            > running["lease_expires_at"]
        ),
        30,
        "the running job's lease to be renewed",
        logs=farm.logs,
    )

    done = farm.cli("sweep", "cancel", str(sweep_id))

    assert done.returncode == 0, done.stderr
    assert f"sweep {sweep_id}: 3 job(s) cancelled" in done.stdout
    # The running job stops at its next check (a fine-tuning step after the heartbeat saw the cancel), not
    # minutes later; the two queued messages are then taken and dropped.
    wait_for(lambda: "cancelled" in worker.results(), 30, "the running job to stop", logs=farm.logs)
    wait_for(lambda: len(worker.results()) == 4, 30, "the queued messages to be handled", logs=farm.logs)
    assert worker.results() == ["succeeded", "cancelled", "skipped", "skipped"]
    assert farm.sweep_state(sweep_id) == "cancelled"
    status = farm.cli("sweep", "status", str(sweep_id))
    assert f"sweep {sweep_id} cancel: cancelled; 4 jobs: 1 succeeded, 3 cancelled" in status.stdout, status.stdout
    metrics = farm.metric_counts(sweep_id)
    for job in farm.jobs(sweep_id):
        if job["role"] == "reference":
            assert job["state"] == "succeeded" and metrics[job["id"]] == [1]
            continue
        assert job["state"] == "cancelled" and job["error"] == "cancelled by farm sweep cancel"
        assert metrics[job["id"]] == [] and farm.artifact_kinds(job["id"]) == []
        if job["id"] == running["id"]:
            assert job["started_at"] is not None and job["attempts"] == 1
        else:
            assert job["started_at"] is None and job["attempts"] == 0


RETRY_SPEC = f"""
models: [farm:digits-mlp, "entrypoint:{FARM_TOYS}:flaky_mlp"]
methods: [fp32, dynamic, static]
"""


def test_retry_failed_only_reruns_the_failed_jobs_and_nothing_else(farm: Farm, tmp_path: Path):
    # While the marker exists, the flaky model fails to load.
    marker = tmp_path / "flaky.marker"
    marker.write_text("fail\n")
    farm.env["FARM_TEST_FLAKY_MARKER"] = str(marker)
    sweep_id = farm.submit(farm.write_spec("retry", RETRY_SPEC))
    jobs = {(j["model"].rsplit(":", 1)[-1], j["method"]): j["id"] for j in farm.jobs(sweep_id)}
    # One job of the healthy model is cancelled before any worker runs: --failed-only must leave it alone.
    from farm.store import sweeps

    with farm.db.session() as s:
        assert sweeps.cancel_unfinished(s, [jobs["digits-mlp", "static"]], "cancelled by the test") == 1
    worker = farm.start_worker("-Q", "cpu", "-c", "1")

    assert farm.wait_sweep_done(sweep_id) == "failed"
    first = {j["id"]: j for j in farm.jobs(sweep_id)}
    flaky_ref = first[jobs["flaky_mlp", "fp32"]]
    # A model that fails to load fails its job with the reason, and is not retried.
    assert flaky_ref["state"] == "failed" and flaky_ref["attempts"] == 1
    assert "flaky toy: marker" in flaky_ref["error"] and "flaky_mlp" in flaky_ref["error"]
    for method in ("dynamic", "static"):
        dependent = first[jobs["flaky_mlp", method]]
        assert dependent["state"] == "failed" and dependent["started_at"] is None
        assert dependent["error"].startswith(f"the fp32 reference (job {flaky_ref['id']}) failed: ")
    assert [first[jobs["digits-mlp", m]]["state"] for m in ("fp32", "dynamic", "static")] == [
        "succeeded",
        "succeeded",
        "cancelled",
    ]

    marker.unlink()
    done = farm.cli("sweep", "retry", str(sweep_id), "--failed-only")

    assert done.returncode == 0, done.stderr
    assert f"sweep {sweep_id}: 3 job(s) to retry, 1 sent, 2 waiting for their reference" in done.stdout
    # No failure is left; the job cancelled by hand stays cancelled, so the sweep ends cancelled.
    assert farm.wait_sweep_done(sweep_id) == "cancelled"
    after = {j["id"]: j for j in farm.jobs(sweep_id)}
    metrics = farm.metric_counts(sweep_id)
    for method in ("fp32", "dynamic", "static"):
        job = after[jobs["flaky_mlp", method]]
        assert (job["state"], job["attempts"], job["error"]) == ("succeeded", 1, None)
        assert metrics[job["id"]] == [1] and "model" in farm.artifact_kinds(job["id"])
    assert after[flaky_ref["id"]]["started_at"] > flaky_ref["started_at"]
    for method in ("fp32", "dynamic"):  # succeeded before: not run again
        job_id = jobs["digits-mlp", method]
        assert {k: after[job_id][k] for k in ("state", "attempts", "started_at", "finished_at")} == {
            k: first[job_id][k] for k in ("state", "attempts", "started_at", "finished_at")
        }
    cancelled = after[jobs["digits-mlp", "static"]]
    assert cancelled["state"] == "cancelled" and cancelled["started_at"] is None
    assert metrics[cancelled["id"]] == []
    assert sorted(worker.results()) == ["failed"] + ["succeeded"] * 5


def test_submit_wait_exits_1_when_the_sweep_ends_with_failures(farm: Farm):
    worker = farm.start_worker("-Q", "cpu", "-c", "1")
    farm.wait_ready(worker)
    # tests.toys:broken raises when it is built: its reference fails, and its trial with it.
    spec = farm.write_spec("wait-fails", "models: ['entrypoint:tests.toys:broken', farm:digits-mlp]\nmethods: [fp32]")

    done = farm.cli("sweep", "submit", str(spec), "--wait", timeout_s=180)

    assert done.returncode == 1, f"{done.stdout}\n{done.stderr}\n{farm.logs()}"
    sweep_id = int(done.stdout.split()[0])
    assert farm.sweep_state(sweep_id) == "failed"
    states = {j["model"]: j["state"] for j in farm.jobs(sweep_id)}
    assert states == {"entrypoint:tests.toys:broken": "failed", "farm:digits-mlp": "succeeded"}
    assert "Traceback" not in done.stderr
