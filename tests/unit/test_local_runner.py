"""``farm sweep run`` on this machine (farm.jobs.local): worker processes, references first, cached re-runs, failures
and Ctrl-C. SQLite and a local artifact store under a FARM_HOME of each test's own (fixture ``sweep_home``).

Kept short: farm:digits-mlp and the toys, synthetic or digits data, one or two tiny batch sizes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from farm.artifacts import file_uri_path
from farm.store.columns import RESULT_COLUMNS
from farm.store.db import Database
from tests.sweeps import (
    BRANCHY,
    FAST_BENCHMARK,
    NAN_MODEL,
    TOY_DATA,
    TOY_MLP,
    describe,
    farm,
    query,
    sha256_of,
    write_spec,
)

SMALL_SPEC = """\
name: small
models: [farm:digits-mlp]
methods:
  - fp32
  - bf16
  - dynamic
  - static: {observer: [minmax, histogram]}
  - qat: {bits: 4, steps: 5}
calibration_size: 32
benchmark: {batch_size: [1, 4], max_time_s: 0.2, min_reps: 5, warmup_s: 0}
"""  # 6 jobs: the fp32 reference and 5 trials, one of them simulated (qat int4)

FAILING_SPEC = f"""\
name: failing
models: ['{TOY_MLP}', '{BRANCHY}', '{NAN_MODEL}']
dataset: '{TOY_DATA}'
methods: [fp32, dynamic, static]
calibration_size: 16
{FAST_BENCHMARK}
"""  # 3 references + 6 trials: branchy cannot be traced (static), nan_model's reference is NaN

JOBS_SQL = "SELECT * FROM jobs ORDER BY id"


def _jobs() -> list[dict[str, Any]]:
    return query(JOBS_SQL)


def _run(spec: Path, *args: str) -> Any:
    return farm("sweep", "run", str(spec), *args)


@pytest.mark.slow  # three runs of a 6-job sweep in worker processes
def test_a_sweep_runs_once_and_every_result_and_artifact_is_recorded(sweep_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SMALL_SPEC)
    first = _run(spec, "--jobs", "2")
    assert first.exit_code == 0, describe(first)
    assert "sweep 1 small created: 6 jobs, 0 cached, 6 to run on 2 worker process(es)" in first.stderr
    assert f"database:  sqlite:///{sweep_home / 'farm.db'}" in first.stderr
    assert f"artifacts: {sweep_home / 'artifacts'}" in first.stderr

    jobs = _jobs()
    assert [j["state"] for j in jobs] == ["succeeded"] * 6
    assert all(j["error"] is None and j["attempts"] == 1 and j["worker"].startswith("local:") for j in jobs)
    (ref,) = [j for j in jobs if j["role"] == "reference"]
    assert ref["method"] == "fp32" and [j["method"] for j in jobs].count("fp32") == 1
    trials = [j for j in jobs if j["role"] == "trial"]
    assert len(trials) == 5 and all(t["reference_job_id"] == ref["id"] for t in trials)
    assert all(t["started_at"] >= ref["finished_at"] for t in trials)  # the reference ran first

    # Only the reference computed fp32 outputs; every trial loaded them from its reference.pt artifact.
    extra = {
        r["job_id"]: json.loads(r["extra"]) for r in query("SELECT job_id, extra FROM metrics WHERE batch_size = 1")
    }
    assert "reference" in extra[ref["id"]]["timings_s"]
    assert all("reference" not in extra[t["id"]]["timings_s"] and "load" in extra[t["id"]]["timings_s"] for t in trials)

    rows = query("SELECT * FROM results_flat WHERE sweep_id = 1 ORDER BY job_id, batch_size")
    assert [(r["job_id"], r["batch_size"]) for r in rows] == [(j["id"], b) for j in jobs for b in (1, 4)]
    for r in rows:
        assert (r["state"], r["sweep_name"], r["error"]) == ("succeeded", "small", None)
        assert 0.5 < r["accuracy"] <= 1 and r["accuracy_fp32"] == pytest.approx(
            next(x["accuracy"] for x in rows if x["job_id"] == ref["id"])
        )
        assert r["size_bytes"] > 0 and r["size_ratio"] > 0 and r["latency_p50_ms"] > 0 and r["throughput"] > 0
        assert r["artifact_uri"].startswith(f"file://{sweep_home / 'artifacts' / 'jobs'}/")
        if r["method"] == "qat":  # int4: fake quantization, no speedup claimed
            assert r["simulated"] and r["speedup"] is None and r["size_ratio"] < 0.3
        else:
            assert not r["simulated"] and r["speedup"] > 0
    assert [r["speedup"] for r in rows if r["job_id"] == ref["id"]] == [1.0, 1.0]

    # Every artifact row names a file in the store with the recorded bytes; the reference left reference.pt.
    artifacts = query("SELECT * FROM artifacts ORDER BY job_id, kind")
    assert {(a["job_id"], a["kind"]) for a in artifacts} == {
        (j["id"], kind) for j in jobs for kind in ("model", "manifest")
    } | {(ref["id"], "reference")}
    keys = {j["id"]: j["key"] for j in jobs}
    for a in artifacts:
        path = file_uri_path(a["uri"])
        assert path.parent.parent == sweep_home / "artifacts" / "jobs" / keys[a["job_id"]]  # jobs/<key>/<attempt>/
        assert sha256_of(path) == a["sha256"] and path.stat().st_size == a["size_bytes"]

    # The summary table: one row per job.
    # The summary table: one row per job, led by its recipe label; the simulated one says so.
    rows = [line.split() for line in first.stdout.splitlines() if line.startswith("digits-mlp ")]
    assert sorted(r[1] for r in rows) == ["bf16", "dynamic", "fp32", "qat", "static", "static"]
    assert "(sim)" in first.stdout and first.stdout.count("(sim)") == 1

    # Again: everything is cached, nothing runs (finished_at and attempts untouched).
    again = _run(spec, "--jobs", "2")
    assert again.exit_code == 0, describe(again)
    assert "sweep 1 small resumed: 6 jobs, 6 cached, 0 to run" in again.stderr
    assert _jobs() == jobs
    assert [line.split()[:2] for line in again.stdout.splitlines() if line.startswith("digits-mlp ")] == [
        r[:2] for r in rows
    ]  # the same six rows

    # One result lost (the job failed): only that job runs again.
    lost = trials[2]
    db = Database()
    with db.session() as s:
        s.execute(text("UPDATE jobs SET state = 'failed', error = 'lost' WHERE id = :id"), {"id": lost["id"]})
        s.execute(text("DELETE FROM metrics WHERE job_id = :id"), {"id": lost["id"]})
        s.execute(text("DELETE FROM artifacts WHERE job_id = :id"), {"id": lost["id"]})
    db.dispose()
    third = _run(spec, "--jobs", "2")
    assert third.exit_code == 0, describe(third)
    assert "sweep 1 small resumed: 6 jobs, 5 cached, 1 to run" in third.stderr
    after = {j["id"]: j for j in _jobs()}
    for job in jobs:
        if job["id"] == lost["id"]:
            now = after[job["id"]]
            assert (now["state"], now["error"], now["attempts"]) == ("succeeded", None, 1)
            assert now["finished_at"] > job["finished_at"]
        else:
            assert after[job["id"]] == job
    assert len(query("SELECT * FROM metrics WHERE job_id = :id", id=lost["id"])) == 2
    assert len(query("SELECT * FROM artifacts WHERE job_id = :id", id=lost["id"])) == 2

    # The same rows through the CLI, as JSON.
    listed = farm("results", "query", "--sweep", "1", "--format", "json")
    assert listed.exit_code == 0, describe(listed)
    data = json.loads(listed.stdout)
    assert len(data) == 12 and all(list(row) == list(RESULT_COLUMNS) for row in data)


@pytest.mark.slow  # a 9-job sweep in worker processes
def test_failures_are_one_line_on_their_job_and_the_rest_succeeds(sweep_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, FAILING_SPEC)
    result = _run(spec, "--jobs", "2")
    assert result.exit_code == 1, describe(result)
    assert "Traceback" not in result.stdout + result.stderr
    jobs = {(j["model"], j["method"]): j for j in _jobs()}
    assert len(jobs) == 9
    for model in (TOY_MLP, BRANCHY, NAN_MODEL):
        for method in ("fp32", "dynamic", "static"):
            job = jobs[(model, method)]
            should_fail = model == NAN_MODEL or (model == BRANCHY and method == "static")
            assert job["state"] == ("failed" if should_fail else "succeeded"), job
            if should_fail:
                assert job["error"] and "\n" not in job["error"]
                assert f"failed job {job['id']} ({method}, {model}): " in result.stdout
    untraceable = jobs[(BRANCHY, "static")]["error"]
    assert untraceable.startswith(f"static: torch.fx cannot trace {BRANCHY}") and "dynamic" in untraceable

    nan_ref = jobs[(NAN_MODEL, "fp32")]
    assert nan_ref["error"].startswith(f"model {NAN_MODEL} produces NaN/Inf outputs on the reference inputs")
    for method in ("dynamic", "static"):
        dependent = jobs[(NAN_MODEL, method)]
        assert dependent["error"] == f"the fp32 reference (job {nan_ref['id']}) failed: {nan_ref['error']}"
        assert (dependent["started_at"], dependent["attempts"]) == (None, 0)  # failed without running

    failed_ids = {j["id"] for j in jobs.values() if j["state"] == "failed"}
    artifact_jobs = {a["job_id"] for a in query("SELECT job_id FROM artifacts")}
    assert artifact_jobs == {j["id"] for j in jobs.values()} - failed_ids
    assert query("SELECT state FROM sweeps") == [{"state": "failed"}]

    status = farm("sweep", "status", "1")
    assert status.exit_code == 0, describe(status)
    assert status.stdout.splitlines()[0] == "sweep 1 failing: failed; 9 jobs: 5 succeeded, 4 failed"
    for job_id in sorted(failed_ids):
        assert f"failed job {job_id} " in status.stdout


# --- Ctrl-C ----------------------------------------------------------------------------------------------

SLOW_SPEC = f"""\
name: slow
models: ['{TOY_MLP}']
dataset: '{TOY_DATA}'
methods:
  - qat: {{steps: 200000, bits: [8, 6, 4], calibration_size: 16, batch_size: 8}}
{FAST_BENCHMARK}
"""  # each qat job would fine-tune for minutes: only a cancellation ends it within seconds


def _proc_stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of a live process, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return int(fields[1]), fields[0], fields[19]


def _descendants(pid: int) -> dict[int, str]:
    """Every process under ``pid`` (children, their children, ...) with its start time."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            parents.setdefault(stat[0], []).append((int(entry.name), stat[2]))
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child, started in parents.get(todo.pop(), []):
            found[child] = started
            todo.append(child)
    return found


def _alive(pid: int, started: str) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[2] == started and stat[1] not in ("Z", "X")  # a zombie has ended


def _processes_with_home(home: Path) -> list[int]:
    """Live processes (other than this one) whose environment holds FARM_HOME=home."""
    needle = f"FARM_HOME={home}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        stat = _proc_stat(int(entry.name))
        if needle in environ and stat is not None and stat[1] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _job_states(db_file: Path) -> dict[str, int]:
    try:
        conn = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:  # not created yet
        return {}
    return dict(rows)


def _spawned_workers(pid: int) -> list[int]:
    """The multiprocessing workers that process ``pid`` started (not its resource tracker)."""
    found = []
    for child in _descendants(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue
    return found


#: ``farm`` with Ctrl-C as a terminal's shell leaves it: a suite started in the background (``cmd &`` in a script)
#: ignores SIGINT, every child inherits that, and a Python started so keeps ignoring it.
AS_FROM_A_TERMINAL = (
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); from farm.cli import main; main()"
)


@pytest.mark.slow  # a real `farm sweep run` process, interrupted
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find worker processes")
@pytest.mark.parametrize("moment", ["while a job runs", "while a worker starts"])
def test_ctrl_c_cancels_unfinished_jobs_and_leaves_no_worker(
    sweep_home: Path, tmp_path: Path, subprocess_env: dict[str, str], moment: str
) -> None:
    spec = write_spec(tmp_path, SLOW_SPEC)
    env = {**subprocess_env, "FARM_HOME": str(sweep_home)}
    workers = "1" if moment == "while a job runs" else "2"
    proc = subprocess.Popen(
        [sys.executable, "-c", AS_FROM_A_TERMINAL, "sweep", "run", str(spec), "--jobs", workers],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches the whole group
    )
    try:
        deadline = time.monotonic() + 90
        if moment == "while a job runs":
            # A qat job (not just the quick reference) running, well into its fine-tuning.
            while not ((states := _job_states(sweep_home / "farm.db")).get("running") and states.get("succeeded")):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "no job started"
                time.sleep(0.1)
            time.sleep(1.0)
        else:
            # The second worker process has just been started: it is still importing, its Ctrl-C handling
            # not yet set up.
            while len(_spawned_workers(proc.pid)) < 2:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "no second worker"
                time.sleep(0.005)
            time.sleep(0.1)
        processes = _descendants(proc.pid)
        assert processes, "farm sweep run started no worker process"
        interrupted = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
        took_s = time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert took_s < 8  # the running job noticed within its 1 s heartbeat; no 20 s grace period ran out
    assert "Traceback" not in stderr, stderr  # not even from a worker that was starting

    jobs = _jobs()
    reference, trials = jobs[0], jobs[1:]
    assert [(j["method"], j["state"]) for j in trials] == [("qat", "cancelled")] * 3  # each would take minutes
    cancelled = [j for j in jobs if j["state"] == "cancelled"]
    assert all(j["error"] == "cancelled (Ctrl-C)" and j["lease_expires_at"] is None for j in cancelled)
    assert stderr.splitlines()[-1] == f"interrupted: {len(cancelled)} job(s) cancelled, none left running"
    if moment == "while a job runs":
        assert reference["state"] == "succeeded"
        assert sum(j["started_at"] is not None for j in cancelled) == 1  # the one that was running, stopped
    else:  # a pool that starts its workers at once may still be running the reference
        assert reference["method"] == "fp32" and reference["state"] in ("succeeded", "cancelled")
    succeeded = [{"job_id": j["id"]} for j in jobs if j["state"] == "succeeded"]
    # nothing is recorded for a cancelled job
    assert query("SELECT DISTINCT job_id FROM metrics ORDER BY job_id") == succeeded
    assert query("SELECT state FROM sweeps") == [{"state": "cancelled"}]

    # No process of the run survives it (the pool's workers, multiprocessing's resource tracker).
    deadline = time.monotonic() + 10
    while any(_alive(pid, started) for pid, started in processes.items()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid, started in processes.items() if _alive(pid, started)] == []
    assert _processes_with_home(sweep_home) == []


# --- worker processes that die, runs that die ----------------------------------------------------------------

KILLER_SPEC = f"""\
name: killer
models: ['{TOY_MLP}', 'entrypoint:tests.toys:process_killer']
dataset: '{TOY_DATA}'
methods: [fp32, dynamic]
{FAST_BENCHMARK}
"""  # 2 references + 2 trials; process_killer's forward ends the worker process that runs it


@pytest.mark.slow  # three worker pools die and are replaced
def test_a_job_that_kills_its_worker_process_fails_after_three_deaths_and_the_rest_finish(
    sweep_home: Path, tmp_path: Path
) -> None:
    result = _run(write_spec(tmp_path, KILLER_SPEC), "--jobs", "1")
    assert result.exit_code == 1, describe(result)
    jobs = {(j["model"].rsplit(":", 1)[-1], j["method"]): j for j in _jobs()}
    assert {k: j["state"] for k, j in jobs.items()} == {
        ("tiny_mlp", "fp32"): "succeeded",
        ("tiny_mlp", "dynamic"): "succeeded",
        ("process_killer", "fp32"): "failed",
        ("process_killer", "dynamic"): "failed",
    }
    killer = jobs[("process_killer", "fp32")]
    assert killer["error"].startswith("its worker process died 3 times while running it")
    assert (killer["attempts"], killer["worker_losses"]) == (3, 2)
    assert jobs[("process_killer", "dynamic")]["error"].startswith(f"the fp32 reference (job {killer['id']}) failed")
    assert "Traceback" not in result.stderr
    assert query("SELECT state FROM sweeps") == [{"state": "failed"}]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_jobs_a_killed_run_left_queued_or_running_run_again(sweep_home: Path, tmp_path: Path) -> None:
    from farm.jobs.local import local_name
    from farm.spec.load import load_spec
    from farm.store import lifecycle, plans
    from tests.job_rows import queue_as_sent

    spec = write_spec(tmp_path, f"name: again\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\n"
                      f"methods: [fp32, dynamic, static]\ncalibration_size: 16\n{FAST_BENCHMARK}\n")  # fmt: skip
    # What a `farm sweep run` killed with SIGKILL leaves: its jobs queued (by it) or running (in its worker).
    dead = local_name(_dead_pid())
    db = Database()
    from farm.store.migrate import ensure_schema

    ensure_schema(db)
    with db.session() as s:
        record = plans.create_sweep(s, load_spec(spec.read_text()), "tester@host")
        ref, *trials = record.to_run
        queue_as_sent(s, record.to_run, queue="local", owner=dead)
        assert lifecycle.claim_job(s, ref, local_name(_dead_pid()), lease_s=3600) is not None
    live = local_name()  # a job held by a live process (this one) is not taken from it
    with db.session() as s:
        other = plans.create_sweep(s, load_spec(spec.read_text().replace("static", "bf16")), None)
        (bf16,) = other.to_run
        queue_as_sent(s, [bf16], queue="local", owner=live)
    db.dispose()

    result = _run(spec)
    assert result.exit_code == 0, describe(result)
    assert "3 job(s) left unfinished by an earlier run that stopped will run again" in result.stderr
    states = {j["id"]: (j["state"], j["worker_losses"]) for j in _jobs()}
    assert [states[i] for i in (ref, *trials)] == [("succeeded", 1), ("succeeded", 0), ("succeeded", 0)]
    assert states[bf16] == ("queued", 0)
    assert query("SELECT state FROM sweeps WHERE id = :i", i=record.sweep_id) == [{"state": "succeeded"}]


# --- the job graph: a job waits for every job it depends on ----------------------------------------------------


def test_pool_processes_time_on_cores_of_their_own(
    sweep_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from farm.quant.isolation import LOCK_DIR_ENV
    from farm.quant.pinning import allowed_cpus

    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))  # the pool's claims only: every core is free
    text = f"name: pinned\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\nmethods: [fp32, dynamic]\n{FAST_BENCHMARK}\n"
    result = _run(write_spec(tmp_path, text), "--jobs", "1")
    assert result.exit_code == 0, describe(result)
    rows = query("SELECT job_id, extra FROM metrics ORDER BY job_id")
    assert len(rows) == 2
    for row in rows:
        figures = json.loads(row["extra"])["latency"]
        assert len(figures["cores"]) == 1 and set(figures["cores"]) <= set(allowed_cpus())
        assert figures["host_load"] is None or 0.0 <= figures["host_load"] <= 1.0


def _two_dependency_plan(reference_model: str, name: str) -> tuple[Any, list[str]]:
    """An fp32 reference of ``reference_model`` (a real job: it takes a while), a no-op job, and a no-op job that
    depends on both of them. Returns the plan and the keys (reference, no-op, the waiting job)."""
    import hashlib

    from farm.jobs.contract import JobSpec
    from farm.quant.bench_config import BenchmarkConfig
    from farm.quant.config import NoopConfig
    from farm.spec.load import load_spec
    from farm.spec.plan import Plan, PlannedJob

    spec = f"name: {name}\nmodels: ['{reference_model}']\ndataset: '{TOY_DATA}'\nmethods: [fp32]\n{FAST_BENCHMARK}\n"
    (reference,) = load_spec(spec).jobs

    def noop(tag: str, depends_on: tuple[str, ...] = ()) -> Any:
        job = JobSpec(TOY_MLP, TOY_DATA, NoopConfig(), seed=len(tag), benchmark=BenchmarkConfig())
        key = hashlib.sha256(f"{name}-{tag}".encode()).hexdigest()
        return PlannedJob(key, "trial", job, "cpu", None, None, depends_on)

    other = noop("other")
    waiting = noop("waiting", (reference.key, other.key))
    plan = load_spec(spec)
    return Plan(plan.spec, plan.text, [reference, other, waiting]), [reference.key, other.key, waiting.key]


def _run_plan_locally(plan: Any, jobs: int) -> tuple[Any, dict[str, int]]:
    from farm.jobs.local import RunStats, run_local
    from farm.store import plans
    from farm.store.migrate import ensure_schema

    db = Database()
    ensure_schema(db)
    with db.session() as s:
        record = plans.create_sweep(s, plan, "tester@host")
    stats = RunStats(total=record.total, cached=record.cached)
    artifacts = str(Path(os.environ["FARM_HOME"]) / "artifacts")
    run_local(db, record.sweep_id, record.to_run, artifacts_url=artifacts, jobs=jobs, threads=1, stats=stats)
    db.dispose()
    return stats, record.ids


def test_a_job_with_two_dependencies_runs_only_after_both_succeeded(sweep_home: Path) -> None:
    plan, (ref_key, other_key, waiting_key) = _two_dependency_plan(TOY_MLP, "two-deps")
    # Three processes: a job released too early would start at once, long before the fp32 reference ends.
    stats, ids = _run_plan_locally(plan, jobs=3)
    assert (stats.total, stats.succeeded, stats.failed, stats.cached) == (3, 3, 0, 0)
    jobs = {j["id"]: j for j in _jobs()}
    ref, other, waiting = jobs[ids[ref_key]], jobs[ids[other_key]], jobs[ids[waiting_key]]
    assert [j["state"] for j in (ref, other, waiting)] == ["succeeded"] * 3
    assert all(j["queue"] == "local" for j in jobs.values())  # routed to the local queue, whatever created them
    assert waiting["started_at"] >= max(ref["finished_at"], other["finished_at"])
    assert query("SELECT state FROM sweeps") == [{"state": "succeeded"}]


def test_a_job_whose_second_dependency_fails_ends_without_running(sweep_home: Path) -> None:
    plan, (ref_key, other_key, waiting_key) = _two_dependency_plan(NAN_MODEL, "two-deps-failing")
    stats, ids = _run_plan_locally(plan, jobs=2)
    # The reference failed (NaN outputs); the job waiting for it (and for a job that succeeded) ended with its reason.
    assert (stats.total, stats.succeeded, stats.failed, stats.cancelled) == (3, 1, 2, 0)
    jobs = {j["id"]: j for j in _jobs()}
    ref, other, waiting = jobs[ids[ref_key]], jobs[ids[other_key]], jobs[ids[waiting_key]]
    assert (ref["state"], other["state"]) == ("failed", "succeeded")
    assert waiting["state"] == "failed"
    assert waiting["error"] == f"the fp32 reference (job {ref['id']}) failed: {ref['error']}"
    assert (waiting["started_at"], waiting["attempts"]) == (None, 0)
    assert query("SELECT state FROM sweeps") == [{"state": "failed"}]
