"""Fan-in never needs a human: a reference whose worker keeps dying ends its dependents and its sweep, and the
queued messages a broker restart loses are sent again by the reaper. No ``farm sweep resume`` in either.

Faults are real: the reference's model ends the pool process that runs it (os._exit, as the OOM killer would),
and the broker is a redis-server of the test's own, killed and started again without persistence.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.farm.farm_support import Farm

pytestmark = pytest.mark.integration

TOY_DATA = "synthetic:1x8x8?n_test=32&n_calibration=32&n_train=64"  # tests.toys.SYNTHETIC
KILLER = "entrypoint:tests.toys:process_killer"  # its forward ends the process that runs it


def _by_role(farm: Farm, sweep_id: int) -> tuple[Any, list[Any]]:
    jobs = farm.jobs(sweep_id)
    (reference,) = [j for j in jobs if j["role"] == "reference"]
    return reference, [j for j in jobs if j["role"] != "reference"]


@pytest.mark.slow  # the reference's worker process dies three times, a 4 s lease each
def test_a_reference_whose_worker_dies_three_times_fails_its_dependents_and_wait_returns(
    make_farm: Any, s3_artifacts: Any
) -> None:
    farm = make_farm(artifacts_url=s3_artifacts.url, FARM_LEASE_S="4")
    worker = farm.start_worker("-Q", "cpu", "-c", "1")
    farm.wait_ready(worker)
    spec = farm.write_spec(
        "killer", f"models: ['{KILLER}']\ndataset: '{TOY_DATA}'\nmethods: [fp32, dynamic, static]\ncalibration_size: 16"
    )

    # --wait returns by itself (exit 1: a job failed); before the fix it hung with the dependents pending.
    done = farm.cli("sweep", "submit", str(spec), "--wait", timeout_s=240)

    assert done.returncode == 1, f"{done.stdout}\n{done.stderr}\n{farm.logs()}"
    sweep_id = int(done.stdout.split()[0])
    reference, dependents = _by_role(farm, sweep_id)
    reason = "its worker died 3 times while running it"
    assert reference["state"] == "failed" and reference["error"].startswith(reason), reference["error"]
    assert reference["worker_losses"] >= 2
    assert len(dependents) == 2
    for job in dependents:
        assert job["state"] == "failed"
        assert job["error"].startswith(f"the fp32 reference (job {reference['id']}) failed: {reason}"), job["error"]
        assert job["attempts"] == 0  # never ran
    assert farm.sweep_state(sweep_id) == "failed"
    assert "reaper: 0 job(s) re-queued, 1 failed after too many attempts" in worker.log()
    assert farm.metric_counts(sweep_id) == {j["id"]: [] for j in farm.jobs(sweep_id)}


@pytest.mark.slow  # a worker starts after the broker restart and its reaper waits out FARM_REQUEUE_AFTER_S
def test_messages_a_broker_restart_lost_are_sent_again_by_the_reaper(
    make_farm: Any, own_redis: Any, s3_artifacts: Any
) -> None:
    farm = make_farm(broker_url=own_redis.url, artifacts_url=s3_artifacts.url, FARM_REQUEUE_AFTER_S="3")
    models = "['entrypoint:tests.toys:tiny_mlp', 'entrypoint:tests.toys:tiny_cnn']"
    spec = farm.write_spec("lost", f"models: {models}\ndataset: '{TOY_DATA}'\nmethods: [fp32, dynamic]")
    sweep_id = farm.submit(spec)  # no worker yet: the two references' messages wait in Redis
    assert own_redis.queue_length() == 2

    own_redis.restart()  # SIGKILL, then the same port, no persistence: both messages are gone; the database says queued

    assert own_redis.queue_length() == 0
    assert sorted(j["state"] for j in farm.jobs(sweep_id)) == ["pending", "pending", "queued", "queued"]
    worker = farm.start_worker("-Q", "cpu", "-c", "1")

    assert farm.wait_sweep_done(sweep_id, timeout_s=180) == "succeeded"
    assert "reaper: 2 queued job(s) had lost their message" in worker.log()
    jobs = farm.jobs(sweep_id)
    assert {j["state"] for j in jobs} == {"succeeded"}
    assert farm.metric_counts(sweep_id) == {j["id"]: [1] for j in jobs}  # each recorded once
    assert worker.results().count("succeeded") == len(jobs) == 4
