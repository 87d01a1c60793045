"""``farm sweep run`` against real services: PostgreSQL for results, an S3 endpoint (moto's server) for artifacts.

The worker processes reach both exactly as a farm's would: FARM_DATABASE_URL, FARM_ARTIFACTS_URL=s3://..., and
boto3's standard AWS_* settings (fixtures in conftest.py; each skips without its service, fails under CI=true).
An unreachable database needs no service: tests/unit/cli/test_sweep_cli.py covers it.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.sweeps import FAST_BENCHMARK, TOY_DATA, TOY_MLP, describe, farm, query, write_spec

pytestmark = pytest.mark.integration

SPEC = f"""\
name: services
models: ['{TOY_MLP}']
dataset: '{TOY_DATA}'
methods: [fp32, dynamic, static]
calibration_size: 16
{FAST_BENCHMARK}
"""  # the fp32 reference and two trials


def _objects(client: Any, bucket: str) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_a_sweep_on_postgresql_and_s3(
    sweep_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_pg_url: str,
    s3_bucket: str,
    s3_client: Any,
) -> None:
    monkeypatch.setenv("FARM_DATABASE_URL", fresh_pg_url)
    monkeypatch.setenv("FARM_ARTIFACTS_URL", f"s3://{s3_bucket}/farm")
    spec = write_spec(tmp_path, SPEC)
    result = farm("sweep", "run", str(spec), "--jobs", "2")
    assert result.exit_code == 0, describe(result)
    assert f"artifacts: s3://{s3_bucket}/farm" in result.stderr
    assert not (sweep_home / "farm.db").exists() and not (sweep_home / "artifacts").exists()

    jobs = query("SELECT * FROM jobs ORDER BY id")
    assert [(j["method"], j["state"]) for j in jobs] == [("fp32", "succeeded"), ("dynamic", "succeeded"),
                                                         ("static", "succeeded")]  # fmt: skip
    assert all(j["reference_job_id"] == jobs[0]["id"] for j in jobs[1:])
    rows = query("SELECT * FROM results_flat ORDER BY job_id, batch_size")
    assert [r["job_id"] for r in rows] == [j["id"] for j in jobs]
    assert all(r["accuracy"] is not None and r["speedup"] is not None for r in rows)

    artifacts = query("SELECT * FROM artifacts ORDER BY job_id, kind")
    objects = _objects(s3_client, s3_bucket)
    assert len(artifacts) == 3 * 2 + 1  # model + manifest per job, and the reference's outputs
    assert {a["uri"] for a in artifacts} == {f"s3://{s3_bucket}/{key}" for key in objects}
    keys = {j["id"]: j["key"] for j in jobs}
    for a in artifacts:
        key = a["uri"].removeprefix(f"s3://{s3_bucket}/")
        assert key.startswith(f"farm/jobs/{keys[a['job_id']]}/")
        assert hashlib.sha256(objects[key]).hexdigest() == a["sha256"] and len(objects[key]) == a["size_bytes"]
    assert rows[0]["artifact_uri"] == next(a["uri"] for a in artifacts if a["kind"] == "model")

    again = farm("sweep", "run", str(spec))
    assert again.exit_code == 0, describe(again)
    assert "3 jobs, 3 cached, 0 to run" in again.stderr
    assert query("SELECT * FROM jobs ORDER BY id") == jobs


def _one_line_failures(result: Any) -> list[dict[str, Any]]:
    assert result.exit_code == 1, describe(result)
    assert "Traceback" not in result.stdout + result.stderr
    jobs = query("SELECT * FROM jobs ORDER BY id")
    assert [j["state"] for j in jobs] == ["failed"] * 3
    assert all("\n" not in j["error"] for j in jobs)
    assert query("SELECT * FROM artifacts") == [] and query("SELECT * FROM metrics") == []
    reference = jobs[0]
    for trial in jobs[1:]:
        assert trial["error"] == f"the fp32 reference (job {reference['id']}) failed: {reference['error']}"
    return jobs


def test_a_missing_bucket_fails_each_job_with_one_line_and_no_artifact_row(
    sweep_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_env: str, s3_client: Any
) -> None:
    bucket = f"farm-missing-{secrets.token_hex(4)}"
    monkeypatch.setenv("FARM_ARTIFACTS_URL", f"s3://{bucket}/farm")
    result = farm("sweep", "run", str(write_spec(tmp_path, SPEC)), "--jobs", "1")
    jobs = _one_line_failures(result)
    assert jobs[0]["error"] == f"S3 bucket '{bucket}' does not exist (endpoint {s3_env})"
    assert bucket not in {b["Name"] for b in s3_client.list_buckets()["Buckets"]}


def test_rejected_credentials_fail_each_job_with_one_line_and_no_secret(
    sweep_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_bucket: str, s3_client: Any
) -> None:
    monkeypatch.setenv("FARM_ARTIFACTS_URL", f"s3://{s3_bucket}/farm")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    result = farm("sweep", "run", str(write_spec(tmp_path, SPEC)), "--jobs", "1")
    jobs = _one_line_failures(result)
    assert jobs[0]["error"] == f"S3 rejected the credentials for s3://{s3_bucket}/farm: NoCredentialsError"
    assert _objects(s3_client, s3_bucket) == {}
