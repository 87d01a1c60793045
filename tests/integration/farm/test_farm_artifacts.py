"""Artifacts stay true on a real farm (PostgreSQL, Redis, moto's S3 server, `farm worker` processes): a worker
stalled past its lease mid-upload never changes what a row points at, a cancelled sweep leaves no object behind,
and ``farm artifacts gc`` removes exactly the objects no row points at.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
from typing import Any

import pytest

from tests.integration.farm.farm_support import Farm, wait_for

pytestmark = pytest.mark.integration


class GateProxy:
    """A TCP proxy to S3 that holds every new connection (no byte passes) until :meth:`open` is called: the worker
    behind it is caught at the start of its upload, whenever that comes."""

    def __init__(self, target: str) -> None:
        host, _, port = target.split("//", 1)[1].partition(":")
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held = threading.Event()
        self.opened = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> None:
        self.opened.set()

    def close(self) -> None:
        self.opened.set()
        for s in [self.listener, *self.sockets]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self.held.set()
        self.opened.wait()
        upstream = socket.create_connection(self.target)
        self.sockets.append(upstream)
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _objects(s3: Any) -> dict[str, str]:
    """Every object under the farm's prefix: key -> sha256 of its bytes."""
    found = {}
    for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=f"{s3.prefix}/"):
        for obj in page.get("Contents", []):
            body = s3.client.get_object(Bucket=s3.bucket, Key=obj["Key"])["Body"].read()
            found[obj["Key"]] = hashlib.sha256(body).hexdigest()
    return found


def assert_artifacts_true(farm: Farm, s3: Any) -> list[Any]:
    """Every artifacts row's object exists with the recorded sha256, and no object lacks a row."""
    rows = farm.rows("SELECT * FROM artifacts ORDER BY id")
    objects = _objects(s3)
    root = f"s3://{s3.bucket}/"
    for row in rows:
        key = row["uri"][len(root) :]
        assert key in objects, f"{row['uri']} (a row) has no object"
        assert objects[key] == row["sha256"], f"{row['uri']} changed after its row was written"
    orphans = set(objects) - {r["uri"][len(root) :] for r in rows}
    assert not orphans, f"objects that no row points at: {sorted(orphans)}"
    return rows


@pytest.mark.slow
def test_a_worker_stalled_mid_upload_past_its_lease_changes_no_recorded_object(make_farm: Any, s3_artifacts: Any):
    """SIGSTOP a worker as its upload begins, for longer than FARM_LEASE_S; another worker takes the job over and
    records it; SIGCONT. Before attempts had keys of their own, the woken worker finished its upload over the
    recorded objects (the manifest's sha256 no longer matched its row)."""
    gate = GateProxy(os.environ["AWS_ENDPOINT_URL"])
    try:
        farm = make_farm(artifacts_url=s3_artifacts.url, FARM_LEASE_S="3")
        stalled_env = {"AWS_ENDPOINT_URL": gate.url, "AWS_ENDPOINT_URL_S3": gate.url}
        stalled = farm.start_worker("-Q", "cpu", "-c", "1", name="stalled", env=stalled_env)
        farm.wait_ready(stalled)
        sweep_id = farm.submit(farm.write_spec("stall", "models: [farm:digits-mlp]\nmethods: [fp32]"))
        (job,) = farm.jobs(sweep_id)

        assert gate.held.wait(120), f"the worker never began its upload\n{farm.logs()}"
        # Its claim first: the held request must be the upload of a job it runs, whose lease then runs out.
        wait_for(
            lambda: farm.jobs(sweep_id)[0]["state"] == "running" and stalled.owns(farm.jobs(sweep_id)[0]["worker"]),
            60,
            "the stalled worker to hold the job",
            logs=farm.logs,
        )
        os.killpg(stalled.pgid, signal.SIGSTOP)  # mid-upload: its first request to S3 is held at the gate
        try:
            rescuer = farm.start_worker("-Q", "cpu", "-c", "1", name="rescuer")
            state = farm.wait_sweep_done(sweep_id, timeout_s=120)
            assert state == "succeeded", f"{state}: {dict(farm.jobs(sweep_id)[0])}"
            (done,) = farm.jobs(sweep_id)
            assert rescuer.owns(done["worker"]) and done["attempts"] == 2
            recorded = assert_artifacts_true(farm, s3_artifacts)
        finally:
            gate.open()
            os.killpg(stalled.pgid, signal.SIGCONT)
        # The woken worker uploads (through the gate, now open), finds the job no longer its own, and cleans up.
        wait_for(lambda: stalled.results(), 60, "the stalled worker to finish its task", logs=farm.logs)
        assert stalled.results() == ["succeeded"]  # the job's state; its own result was not recorded
        assert farm.rows("SELECT * FROM artifacts ORDER BY id") == recorded
        assert_artifacts_true(farm, s3_artifacts)
        assert job["id"] == done["id"]
    finally:
        gate.close()


@pytest.mark.slow
def test_a_sweep_cancelled_while_a_job_uploads_leaves_no_object_without_a_row(make_farm: Any, s3_artifacts: Any):
    """Cancel while a job is mid-upload (its first request held at the gate): it finishes the upload, finds the job
    cancelled when it records, and deletes what it uploaded. Before, its objects stayed with no row."""
    gate = GateProxy(os.environ["AWS_ENDPOINT_URL"])
    try:
        farm = make_farm(artifacts_url=s3_artifacts.url)
        env = {"AWS_ENDPOINT_URL": gate.url, "AWS_ENDPOINT_URL_S3": gate.url}
        worker = farm.start_worker("-Q", "cpu", "-c", "1", env=env)
        farm.wait_ready(worker)
        spec = farm.write_spec("cancel", "models: [farm:digits-mlp]\nmethods: [fp32, dynamic, bf16]")
        sweep_id = farm.submit(spec)
        assert gate.held.wait(120), f"the worker never began its upload\n{farm.logs()}"
        done = farm.cli("sweep", "cancel", str(sweep_id))
        assert done.returncode == 0, done.stderr
        gate.open()
        assert farm.wait_sweep_done(sweep_id, timeout_s=120) == "cancelled"
        wait_for(lambda: worker.results(), 60, "the cancelled job's task to end", logs=farm.logs)
        assert worker.results() == ["cancelled"]
        assert [j["state"] for j in farm.jobs(sweep_id)] == ["cancelled"] * 3
        assert assert_artifacts_true(farm, s3_artifacts) == []
    finally:
        gate.close()


def test_gc_counts_then_removes_exactly_the_orphans_in_s3(farm: Farm, s3_artifacts: Any):
    """Orphans planted beside a recorded job (a killed attempt, the layout before attempts, an unknown job) go;
    the recorded objects stay, byte for byte."""
    worker = farm.start_worker("-Q", "cpu", "-c", "1")
    farm.wait_ready(worker)
    sweep_id = farm.submit(farm.write_spec("gc", "models: [farm:digits-mlp]\nmethods: [fp32]"))
    assert farm.wait_sweep_done(sweep_id) == "succeeded"
    (job,) = farm.jobs(sweep_id)
    recorded = assert_artifacts_true(farm, s3_artifacts)
    client, bucket, prefix = s3_artifacts.client, s3_artifacts.bucket, s3_artifacts.prefix
    planted = [
        f"{prefix}/jobs/{job['key']}/1-deadhost_1-0000abcd/model.pt",
        f"{prefix}/jobs/{job['key']}/model.pt",
        f"{prefix}/jobs/unknown/x.bin",
    ]
    for key in planted:
        client.put_object(Bucket=bucket, Key=key, Body=b"z" * 512)

    dry = farm.cli("artifacts", "gc", "--dry-run", "--older-than", "0")
    assert dry.returncode == 0, dry.stderr
    total = len(recorded) + len(planted)
    assert f"s3://{bucket}/{prefix}/jobs: {total} objects (" in dry.stdout
    assert f"{len(planted)} orphans (1.5 KiB); kept {len(recorded)}: {len(recorded)} recorded" in dry.stdout
    assert sorted(line.split()[2] for line in dry.stdout.splitlines() if "would delete" in line) == sorted(
        f"s3://{bucket}/{k}" for k in planted
    )
    assert len(_objects(s3_artifacts)) == total  # nothing deleted

    young = farm.cli("artifacts", "gc")  # the default grace period: the planted objects are seconds old
    assert young.returncode == 0 and "0 orphans" in young.stdout, young.stdout + young.stderr
    done = farm.cli("artifacts", "gc", "--older-than", "0s")
    assert done.returncode == 0 and f"deleted {len(planted)} objects" in done.stdout, done.stdout + done.stderr
    assert_artifacts_true(farm, s3_artifacts)
    assert farm.rows("SELECT * FROM artifacts ORDER BY id") == recorded
