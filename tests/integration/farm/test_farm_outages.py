"""A transient outage is not a worker loss (issue 10, section 2): the database or the broker goes away while a job
runs, for real (a TCP proxy in front of PostgreSQL or Redis drops every connection and refuses new ones), and the
job still ends succeeded once, with the result it computed, no worker loss charged; ``--wait`` and ``status
--watch`` ride the outage out and tell the truth.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.farm.farm_support import ALLOWED_MODULES, Farm, farm_command, wait_for
from tests.integration.faults import TcpProxy

pytestmark = pytest.mark.integration

GATED = "entrypoint:tests.integration.farm.outage_toys:gated_mlp"
NOTICE = "database unreachable, retrying…"


def _gate_env(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {"FARM_TEST_GATE": str(gate), "FARM_ALLOWED_MODULES": f"{ALLOWED_MODULES},tests.integration.farm.outage_toys"}
    return gate, env


def _job(farm: Farm, job_id: int) -> Any:
    (row,) = farm.rows("SELECT * FROM jobs WHERE id = :j", j=job_id)
    return row


def _popen(farm: Farm, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*farm_command(), *args],
        env={**farm.env, **env},
        cwd=farm.tmp,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_result_recorded_during_a_database_outage_is_kept_and_wait_rides_it_out(
    make_farm: Any, pg_proxy: tuple[TcpProxy, str], s3_artifacts: Any, tmp_path: Path
):
    proxy, proxied_url = pg_proxy
    gate, gate_env = _gate_env(tmp_path)
    # Every farm process reaches the database through the proxy; the test reads it directly (farm.db). The lease
    # outlasts the outage: a lease renewal that fails meanwhile loses nothing.
    farm = make_farm(
        artifacts_url=s3_artifacts.url, FARM_DATABASE_URL=proxied_url, FARM_LEASE_S="20", FARM_WAIT_RETRY_S="120",
        **gate_env,
    )  # fmt: skip
    worker = farm.start_worker("-Q", "cpu", "-c", "1")
    farm.wait_ready(worker)
    spec = farm.write_spec("db-outage", f'models: ["{GATED}"]\nmethods: [fp32]')
    waiting = _popen(farm, "sweep", "submit", str(spec), "--wait", env={})
    try:
        wait_for(lambda: (gate / "started").exists(), 120, "the job to start", logs=farm.logs)
        (job,) = farm.rows("SELECT * FROM jobs")
        assert job["state"] == "running"

        proxy.drop()
        (gate / "go").write_text("go")  # the job computes its result and tries to record it: the database is away
        wait_for(
            lambda: "keeping its state and retrying" in worker.log(), 60, "the record to be refused", logs=farm.logs
        )
        time.sleep(4)  # several refused tries, the lease renewals failing too
        during = _job(farm, job["id"])
        proxy.restore()

        stdout, stderr = waiting.communicate(timeout=120)
    finally:
        proxy.restore()
        if waiting.poll() is None:
            waiting.kill()
    assert (during["state"], during["worker"]) == ("running", job["worker"])
    done = _job(farm, job["id"])
    assert (done["state"], done["attempts"], done["worker_losses"], done["error"]) == ("succeeded", 1, 0, None)
    assert done["worker"] == job["worker"]  # recorded by the worker that computed it: not re-run
    assert farm.metric_counts(int(stdout.split()[0])) == {done["id"]: [1]}
    assert farm.artifact_kinds(done["id"]) == ["manifest", "model", "reference"]
    assert worker.results() == ["succeeded"]
    assert f"job {job['id']}: database reachable again" in worker.log()  # the record was retried, then landed
    # --wait rode the outage out: it said so once, and its exit status tells the truth.
    assert waiting.returncode == 0, f"{stdout}\n{stderr}\n{farm.logs()}"
    assert stderr.count(NOTICE) == 1 and "database reachable again" in stderr, stderr
    assert "Traceback" not in stderr


@pytest.mark.slow  # a fixed wait past two leases, to see that nothing re-runs the job
def test_a_broker_drop_while_a_job_runs_costs_neither_its_result_nor_a_worker_loss(
    make_farm: Any, own_redis: Any, s3_artifacts: Any, tmp_path: Path
):
    gate, gate_env = _gate_env(tmp_path)
    with TcpProxy("127.0.0.1", own_redis.port) as proxy:
        # A short lease: had the drop cost the job its worker, the reaper would re-run it within seconds.
        farm = make_farm(
            broker_url=proxy.url(own_redis.url), artifacts_url=s3_artifacts.url, FARM_LEASE_S="6", **gate_env
        )
        worker = farm.start_worker("-Q", "cpu", "-c", "1")
        farm.wait_ready(worker)
        sweep_id = farm.submit(farm.write_spec("broker-drop", f'models: ["{GATED}"]\nmethods: [fp32]'))
        wait_for(lambda: (gate / "started").exists(), 120, "the job to start", logs=farm.logs)
        (job,) = farm.jobs(sweep_id)

        proxy.drop()
        wait_for(lambda: "Connection to broker lost" in worker.log(), 30, "the worker to lose Redis", logs=farm.logs)
        (gate / "go").write_text("go")
        # The job finishes and records while the broker is still away (the database is not).
        wait_for(lambda: _job(farm, job["id"])["state"] != "running", 60, "the job to end", logs=farm.logs)
        proxy.restore()
        # Past two leases after the broker came back: a job wrongly left running would have been re-run by now, and
        # a re-delivered message been handled.
        wait_for(lambda: worker.log().count("Connected to redis") >= 2, 60, "the worker to reconnect", logs=farm.logs)
        time.sleep(10)

    done = _job(farm, job["id"])
    assert (done["state"], done["attempts"], done["worker_losses"]) == ("succeeded", 1, 0), farm.logs()
    assert farm.sweep_state(sweep_id) == "succeeded"
    assert farm.metric_counts(sweep_id) == {job["id"]: [1]}
    assert farm.scalar("SELECT count(*) FROM artifacts WHERE job_id = :j", j=job["id"]) == 3
    assert worker.results().count("succeeded") == 1 and set(worker.results()) <= {"succeeded", "skipped"}


def test_status_watch_rides_out_a_database_outage_and_says_so_once(
    make_farm: Any, pg_proxy: tuple[TcpProxy, str], s3_artifacts: Any
):
    proxy, proxied_url = pg_proxy
    farm = make_farm(artifacts_url=s3_artifacts.url)
    sweep_id = farm.submit(farm.write_spec("watched", "models: [farm:digits-mlp]\nmethods: [fp32]"))  # no worker
    watcher = _popen(
        farm,
        "sweep",
        "status",
        str(sweep_id),
        "--watch",
        env={"FARM_DATABASE_URL": proxied_url, "FARM_WAIT_RETRY_S": "60"},
    )
    try:
        wait_for(lambda: proxy.accepted >= 2, 30, "the watcher to poll")  # the schema check, then the watch
        time.sleep(1.5)
        proxy.drop()
        time.sleep(4)
        assert watcher.poll() is None, watcher.communicate()
        proxy.restore()
        time.sleep(1)
        cancelled = farm.cli("sweep", "cancel", str(sweep_id))  # the sweep ends (directly, not through the proxy)
        assert cancelled.returncode == 0, cancelled.stderr
        stdout, stderr = watcher.communicate(timeout=60)
    finally:
        proxy.restore()
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0, stderr
    assert stderr.count(NOTICE) == 1 and "FARM_WAIT_RETRY_S" in stderr, stderr
    assert "database reachable again" in stderr and f"sweep {sweep_id}: cancelled" in stderr, stderr
    assert f"sweep {sweep_id} watched: cancelled" in stdout
    assert "Traceback" not in stderr


def test_status_watch_gives_up_after_its_bound_in_one_line(
    make_farm: Any, pg_proxy: tuple[TcpProxy, str], s3_artifacts: Any
):
    proxy, proxied_url = pg_proxy
    farm = make_farm(artifacts_url=s3_artifacts.url)
    sweep_id = farm.submit(farm.write_spec("abandoned", "models: [farm:digits-mlp]\nmethods: [fp32]"))
    watcher = _popen(
        farm,
        "sweep",
        "status",
        str(sweep_id),
        "--watch",
        env={"FARM_DATABASE_URL": proxied_url, "FARM_WAIT_RETRY_S": "3"},
    )
    try:
        wait_for(lambda: proxy.accepted >= 2, 30, "the watcher to poll")
        time.sleep(1.5)
        proxy.drop()  # for good
        stdout, stderr = watcher.communicate(timeout=60)
    finally:
        proxy.restore()
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and NOTICE in lines[0], stderr  # the notice, then why it gave up
    assert "is unreachable" in lines[1] and "(for 3 s, FARM_WAIT_RETRY_S); giving up" in lines[1], stderr
    assert "Traceback" not in stderr and stdout == ""
