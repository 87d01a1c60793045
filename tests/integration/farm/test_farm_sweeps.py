"""Sweeps on a farm of real worker subprocesses: two ``farm worker``s share a sweep, each job runs once, its
results land in PostgreSQL and its artifacts in S3; ``farm workers`` tells who is alive; a plain
``celery worker`` runs jobs too; the producer never imports torch; what submit and ``farm worker`` refuse.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.farm.farm_support import Farm, farm_command

pytestmark = pytest.mark.integration

# 14 jobs: the fp32 reference, dynamic, and static over 3 observers x 2 granularities x 2 calibration sizes.
FOURTEEN_JOBS = """
models: [farm:digits-mlp]
methods:
  - fp32
  - dynamic
  - static:
      observer: [minmax, histogram, moving_average]
      granularity: [per_tensor, per_channel]
calibration_size: [64, 128]
"""


def _line_with(output: str, needle: str) -> str:
    lines = [line for line in output.splitlines() if needle in line]
    assert len(lines) == 1, f"expected one line with {needle!r} in:\n{output}"
    return lines[0]


def test_two_workers_share_a_sweep_each_job_once_results_in_postgres_artifacts_in_s3(farm: Farm, s3_artifacts: Any):
    first = farm.start_worker("-Q", "cpu", "-c", "1")
    second = farm.start_worker("-Q", "cpu", "-c", "1")
    farm.wait_ready(first, second)
    spec = farm.write_spec("two-workers", FOURTEEN_JOBS)

    done = farm.cli("sweep", "submit", str(spec), "--wait", timeout_s=240)

    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{farm.logs()}"
    sweep_id = int(done.stdout.split()[0])
    assert farm.sweep_state(sweep_id) == "succeeded"
    jobs = farm.jobs(sweep_id)
    assert len(jobs) == 14
    assert [(j["state"], j["attempts"]) for j in jobs] == [("succeeded", 1)] * 14

    # Results: one results_flat row per job and batch size, with figures and the model's S3 URI.
    flat = farm.rows(
        "SELECT job_id, batch_size, state, accuracy, latency_p50_ms, artifact_uri FROM results_flat "
        "WHERE sweep_id = :s ORDER BY job_id",
        s=sweep_id,
    )
    assert [(r["job_id"], r["batch_size"]) for r in flat] == [(j["id"], 1) for j in jobs]
    keys = {j["id"]: j["key"] for j in jobs}
    for r in flat:
        assert r["state"] == "succeeded" and r["accuracy"] > 0.5 and r["latency_p50_ms"] > 0
        assert r["artifact_uri"].startswith(f"s3://{s3_artifacts.bucket}/farm/jobs/{keys[r['job_id']]}/")
        assert r["artifact_uri"].endswith("/model.pt") and r["artifact_uri"].count("/") == 7  # .../<attempt>/model.pt

    # Artifacts: each job's files are in S3, byte for byte what the artifacts table says; nothing else is there.
    artifacts = farm.rows(
        "SELECT a.* FROM artifacts a JOIN sweep_jobs sj ON sj.job_id = a.job_id WHERE sj.sweep_id = :s", s=sweep_id
    )
    kinds: dict[int, set[str]] = {}
    for a in artifacts:
        kinds.setdefault(a["job_id"], set()).add(a["kind"])
    expected = {j["id"]: {"model", "manifest"} | ({"reference"} if j["role"] == "reference" else set()) for j in jobs}
    assert kinds == expected
    prefix = f"s3://{s3_artifacts.bucket}/"
    stored_keys = set()
    for a in artifacts:
        assert a["uri"].startswith(f"{prefix}farm/jobs/{keys[a['job_id']]}/")
        key = a["uri"][len(prefix) :]
        body = s3_artifacts.client.get_object(Bucket=s3_artifacts.bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == a["sha256"], a["uri"]
        assert len(body) == a["size_bytes"]
        stored_keys.add(key)
    listed = s3_artifacts.client.list_objects_v2(Bucket=s3_artifacts.bucket, Prefix="farm/")
    assert {o["Key"] for o in listed.get("Contents", [])} == stored_keys

    # Both workers ran jobs: two pool processes, one in each farm worker's process group.
    names = {j["worker"] for j in jobs}
    assert len(names) == 2, names
    assert all(any(w.owns(n) for n in names) for w in (first, second)), names

    # farm workers: both alive while they run ...
    listing = farm.cli("workers")
    assert listing.returncode == 0, listing.stderr
    for name in names:
        assert _line_with(listing.stdout, name).split()[-1] == "yes"

    # ... and no longer once they are stopped (warm shutdown: each says so on its way out).
    farm.stop_worker(first, second)
    for w in (first, second):
        assert w.proc.returncode == 0, w.log()[-3000:]
    listing = farm.cli("workers")
    assert listing.returncode == 0, listing.stderr
    assert not any(name in listing.stdout for name in names)
    assert "no live workers" in listing.stdout
    everyone = farm.cli("workers", "--all")
    for name in names:
        line = _line_with(everyone.stdout, name)
        assert "stopped" in line and line.split()[-1] == "no", line


def test_a_plain_celery_worker_runs_jobs_to_completion(farm: Farm):
    worker = farm.start_celery("-Q", "cpu", "-c", "1", "-n", "plain@%h", "--loglevel", "info")
    farm.wait_ready(worker)
    spec = farm.write_spec("plain-celery", "models: [farm:digits-mlp]\nmethods: [fp32, dynamic]")

    sweep_id = farm.submit(spec, "--wait")

    jobs = farm.jobs(sweep_id)
    assert [(j["method"], j["state"], j["attempts"]) for j in jobs] == [
        ("fp32", "succeeded", 1),
        ("dynamic", "succeeded", 1),
    ]
    assert all(worker.owns(j["worker"]) for j in jobs)
    assert farm.metric_counts(sweep_id) == {j["id"]: [1] for j in jobs}
    assert farm.artifact_kinds(jobs[1]["id"]) == ["manifest", "model"]
    # Its pool process heart-beats like a farm worker's, with the queues Celery consumes from.
    (row,) = farm.rows("SELECT name, queues, state FROM workers")
    assert row["name"] == jobs[0]["worker"] and row["queues"] == ["cpu"]
    assert worker.results() == ["succeeded", "succeeded"]


LEAN_SUBMIT = """
import json, sys
from farm.cli import cli
try:
    cli.main(["sweep", "submit", sys.argv[1]], prog_name="farm", standalone_mode=False)
finally:
    with open(sys.argv[2], "w") as f:
        json.dump(sorted(sys.modules), f)
"""


def test_submitting_a_sweep_imports_no_torch(make_farm: Any, tmp_path: Path):
    farm = make_farm(artifacts_url=str(tmp_path / "artifacts"))
    spec = farm.write_spec(
        "lean-submit", "models: [farm:digits-mlp, farm:digits-cnn]\nmethods: [fp32, dynamic, static, qat]"
    )
    modules_file = tmp_path / "modules.json"

    # The whole `farm sweep submit` code path, sending included, in a fresh interpreter.
    proc = subprocess.run(
        [sys.executable, "-c", LEAN_SUBMIT, str(spec), str(modules_file)],
        env=farm.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(modules_file.read_text()))
    # The check is real: the producer's modules, Celery and the database driver did load ...
    assert {
        "farm.cli.sweep",
        "farm.jobs.sweeps",
        "farm.spec",
        "farm.routing",
        "workers.broker",
        "workers.app",
    } <= loaded
    assert {"celery", "kombu", "sqlalchemy", "psycopg"} <= {m.partition(".")[0] for m in loaded}
    # ... and the engine's heavy dependencies did not.
    assert {m.partition(".")[0] for m in loaded} & {"torch", "torchvision", "sklearn"} == set()
    # It went as far as sending: the two fp32 references are queued, with a message each.
    sweep_id = int(proc.stdout.split()[0])
    states = [(j["role"], j["state"]) for j in farm.jobs(sweep_id)]
    assert sorted(states) == [("reference", "queued")] * 2 + [("trial", "pending")] * 6
    import redis

    client = redis.Redis.from_url(farm.broker_url)
    try:
        assert client.llen("cpu") == 2
    finally:
        client.close()


def test_submit_to_an_unreachable_broker_says_so_in_one_line_and_leaves_no_sweep(make_farm: Any, tmp_path: Path):
    farm = make_farm(broker_url="redis://:s3cret@127.0.0.1:1/0", artifacts_url=str(tmp_path / "artifacts"))
    spec = farm.write_spec("no-broker", "models: [farm:digits-mlp]\nmethods: [fp32, dynamic]")

    done = farm.cli("sweep", "submit", str(spec), timeout_s=60)

    assert done.returncode == 2, done.stderr
    assert "s3cret" not in done.stdout + done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert "redis://:**@127.0.0.1:1/0" in line and "unreachable" in line
    assert farm.scalar("SELECT count(*) FROM sweeps") == 0
    assert farm.scalar("SELECT count(*) FROM jobs") == 0


def _plain_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(tmp_path / "home"), FARM_BROKER_URL="redis://127.0.0.1:1/0")
    return env


def test_a_gpu_worker_on_a_machine_without_cuda_refuses_in_one_line(tmp_path: Path):
    from workers.capabilities import gpus

    if gpus():
        pytest.skip("this machine has a CUDA device: a gpu worker is allowed here")

    done = subprocess.run(
        [*farm_command(), "worker", "-Q", "gpu"],
        env=_plain_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "queue gpu needs CUDA" in line and "no CUDA device" in line


def test_farm_worker_dry_run_prints_its_plan_and_starts_nothing(tmp_path: Path):
    # The broker in the environment is unreachable: a dry run must not need it.
    done = subprocess.run(
        [*farm_command(), "worker", "-Q", "cpu", "-c", "3", "--threads", "2", "--dry-run"],
        env=_plain_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"cpu@{socket.gethostname()}: queues cpu, 3 process(es), GPU none, runtimes torch")
