"""A two-stage sweep on real Celery workers: stage 2's jobs are created from stage 1's results by a stage job
(farm.jobs.stages), through the one scheduling policy, and a worker SIGKILLed between the stages loses nothing:
the sweep finishes with stage 2 added and run exactly once.
"""

from __future__ import annotations

from typing import Any

import pytest

from farm.jobs.stages import with_stage
from farm.routing import route
from farm.spec.load import load_spec
from farm.store import plans, scheduling
from tests.integration.farm.farm_support import FAST_BENCHMARK, Farm, group_members, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = f"""\
name: two-stages
models: [farm:digits-mlp]
methods: [fp32, {{static: {{calibration_size: [16, 32]}}}}]
{FAST_BENCHMARK}
"""


def submit_two_stages(farm: Farm) -> tuple[int, int]:
    """Stage 1 (the reference and two static trials) and a calibration_sizes stage after the trials; only the
    jobs that can start now are sent. Returns (sweep id, the stage job's id)."""
    from workers import dispatch
    from workers.app import make_app

    plan = load_spec(SPEC)
    trials = [j.key for j in plan.jobs if j.role == "trial"]
    plan = with_stage(plan, "calibration_sizes", {"sizes": [8, 64]}, after=trials)

    def route_of(job: Any) -> tuple[str, str, str | None]:
        r = route(job.method, job.device)
        return r.queue, r.stage, r.finish_queue

    with farm.db.session() as s:
        record = plans.create_sweep(s, plan, "tester", route=route_of)
        messages = scheduling.queue_ready(s, record.to_run)
    app = make_app(farm.broker_url)
    try:
        dispatch.send(app, messages)
    finally:
        app.close()
    return record.sweep_id, record.ids[plan.jobs[-1].key]


def test_stage_two_is_created_from_stage_one_and_survives_a_worker_killed_between_the_stages(
    make_farm: Any, s3_artifacts: Any
) -> None:
    # A job the killed worker had received but not yet claimed lost its message with it: the reaper sends it again
    # after FARM_REQUEUE_AFTER_S (a lost message, not a lost lease).
    farm = make_farm(artifacts_url=s3_artifacts.url, FARM_LEASE_S="4", FARM_REQUEUE_AFTER_S="3")
    first = farm.start_worker("-Q", "cpu", "-c", "1")
    farm.wait_ready(first)
    sweep_id, stage_id = submit_two_stages(farm)

    def stage_one_done() -> bool:
        trials = [j for j in farm.jobs(sweep_id) if j["role"] == "trial"]
        assert all(j["state"] not in ("failed", "cancelled") for j in trials), trials
        return len(trials) >= 2 and all(j["state"] == "succeeded" for j in trials[:2])

    wait_for(stage_one_done, 180, "stage 1 to succeed", logs=farm.logs)
    first.kill_group()  # between the stages: before, during or right after the stage job, whichever it is
    assert group_members(first.pgid) == []
    second = farm.start_worker("-Q", "cpu", "-c", "1")
    farm.wait_ready(second)

    assert farm.wait_sweep_done(sweep_id, timeout_s=180) == "succeeded"
    jobs = farm.jobs(sweep_id)
    (stage,) = [j for j in jobs if j["role"] == "stage"]
    assert stage["id"] == stage_id and stage["state"] == "succeeded"
    sizes = sorted(j["calibration_size"] for j in jobs if j["role"] == "trial")
    assert sizes == [8, 16, 32, 64], "stage 2 adds the best trial at 8 and 64 calibration samples, once each"
    added = [j for j in jobs if j["role"] == "trial" and j["calibration_size"] in (8, 64)]
    dependencies = farm.rows("SELECT job_id, depends_on_id FROM job_dependencies")
    for job in added:
        # Once each: one job per size (above) and one result row (below). A kill that landed while the first worker
        # ran an added job makes that job's one re-run its second claim.
        assert job["state"] == "succeeded" and job["attempts"] in (1, 2), job
        assert {(job["id"], stage_id), (job["id"], job["reference_job_id"])} <= {
            (d["job_id"], d["depends_on_id"]) for d in dependencies
        }
    counts = farm.metric_counts(sweep_id)
    assert counts[stage_id] == [], "a stage job has no metrics"
    assert all(counts[j["id"]] == [1] for j in jobs if j["role"] != "stage")
