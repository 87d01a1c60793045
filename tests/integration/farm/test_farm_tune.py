"""``farm tune --submit`` on real Celery workers (PostgreSQL, the shared Redis, moto's S3): every stage of the
search runs as a stage job on the workers, the explore stage's included, and ``farm tune status`` reads the
verified answer from the farm's database. (That a worker process finds each stage's expander by name whatever it
ran before is tests/unit/test_tune_explore.py's: here the pool's processes ran earlier stages first.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.farm.farm_support import Farm

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# digits-mlp (trained into the session's cache by warm_zoo): its global static int8 recipes reach about 37.6 dB;
# keeping a Linear layer in fp32 passes 40.
TUNE = [
    "tune", "--model", "farm:digits-mlp", "--method", "static", "--runtime", "torch", "--metric", "sqnr_db",
    "--min-metric", "40", "--max-time-s", "0.2",
]  # fmt: skip


def test_a_tune_submitted_to_the_farm_runs_every_stage_on_the_workers_and_ends_verified(farm: Farm) -> None:
    pytest.importorskip("optuna")
    worker = farm.start_worker("-Q", "cpu", "-c", "2")
    farm.wait_ready(worker)

    done = farm.cli(*TUNE, "--trials", "2", "--submit", timeout_s=120)

    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{farm.logs()}"
    tune_id = int(done.stdout.split()[0])
    assert farm.wait_sweep_done(tune_id, timeout_s=300) == "succeeded", farm.logs()
    status = farm.cli("tune", "status", str(tune_id), "--json")
    assert status.returncode == 0, status.stderr
    data: dict[str, Any] = json.loads(status.stdout)
    assert data["done"] and data["met"], data
    stages = data["stages"]
    assert stages["sensitivity"]["jobs"] >= 3 and stages["candidates"]["jobs"] >= 1, stages
    assert stages["explore"] == {"done": 2, "jobs": 2}, stages
    explored = [e for e in data["trail"] if e["stage"] == "explore"]
    tried = [set(e["fallback"]) for e in data["trail"] if e["stage"] in ("global", "candidates", "refine")]
    assert all(e["state"] == "succeeded" and set(e["fallback"]) not in tried for e in explored), explored
    chosen = data["chosen"]
    assert chosen["sqnr_db"] >= 40 and chosen["isolation"] == "exclusive" and chosen["artifact_uri"].startswith("s3://")
    # Each stage job ran once, on the farm's workers (the producer ran none of them).
    stage_jobs = [j for j in farm.jobs(tune_id) if j["role"] == "stage"]
    assert stage_jobs and all(j["state"] == "succeeded" and j["attempts"] == 1 and j["worker"] for j in stage_jobs)
    assert any(j["spec"]["stage"] == "tune_explore" for j in stage_jobs)


def test_an_int4_size_search_on_the_farm_raises_layers_to_int8_and_verifies_nothing(farm: Farm) -> None:
    """``--bits 4 --objective size`` submitted: the workers raise the sensitive layers to int8 (never fp32), and no
    verify job times a simulated answer whose latency nobody reads."""
    worker = farm.start_worker("-Q", "cpu", "-c", "2")
    farm.wait_ready(worker)
    low = [a for a in TUNE if a not in ("--min-metric", "40")]
    done = farm.cli(*low, "--bits", "4", "--objective", "size", "--min-metric", "20", "--submit", timeout_s=120)

    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{farm.logs()}"
    tune_id = int(done.stdout.split()[0])
    assert farm.wait_sweep_done(tune_id, timeout_s=300) == "succeeded", farm.logs()
    data: dict[str, Any] = json.loads(farm.cli("tune", "status", str(tune_id), "--json").stdout)
    chosen = data["chosen"]
    assert data["done"] and data["met"] and chosen["simulated"] and chosen["speedup"] is None, data
    raised = [e for e in data["trail"] if e["fallback"]]
    assert raised and all(e["fallback_to"] == "int8" for e in raised), raised
    assert "verify" not in {e["stage"] for e in data["trail"]}
