"""What the farm tests share: real ``farm worker`` subprocesses, the ``farm`` CLI, and database polling.

A :class:`Farm` is one farm under test: a broker URL, a PostgreSQL database, an artifact store and the
environment every process of the farm gets. Workers run in their own session (process group), so a test
can SIGKILL one with everything it started, and the fixture that owns the farm always stops them: SIGTERM to
the ``farm worker`` (a warm shutdown), then SIGKILL to whatever is left of its process group.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import text

from farm.store.db import Database

REPO_ROOT = Path(__file__).resolve().parents[3]
ALLOWED_MODULES = "tests.toys,tests.integration.farm.farm_toys"
FARM_TOYS = "tests.integration.farm.farm_toys"
# Tiny jobs: one batch size, a 0.2 s latency budget, no warm-up.
FAST_BENCHMARK = "benchmark: {batch_size: [1], max_time_s: 0.2, min_reps: 5, warmup_s: 0}"
# Celery logs each task's return value: farm.run_job returns the job's outcome (succeeded, skipped, ...).
TASK_RESULT = re.compile(r"Task (farm\.run_job|farm\.qat_train)\[[^\]]+\] succeeded in [0-9.e+-]+s: '(\w+)'")

T = TypeVar("T")


def farm_command() -> list[str]:
    """The ``farm`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("farm")
    if script.exists():
        return [str(script)]
    found = shutil.which("farm")
    if found:
        return [found]
    return [sys.executable, "-c", "from farm.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A local port nothing listens on (connections to it are refused)."""
    return free_port()


def wait_for(
    predicate: Callable[[], T], timeout_s: float, what: str, *, interval_s: float = 0.2, logs: Any = None
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` (and the logs) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = f"\n--- worker logs ---\n{logs() if callable(logs) else logs}" if logs is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{tail}")
        time.sleep(interval_s)


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float, *, terminate: bool = True) -> None:
    """SIGTERM the process (a farm worker forwards it: a warm shutdown), give it ``grace_s`` to exit, then SIGKILL
    whatever is left of its process group (``terminate=False``: the SIGTERM was sent already)."""
    if terminate and proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the leader is the group: children that outlived it go too
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


@dataclass
class WorkerProcess:
    """A ``farm worker`` (or plain ``celery worker``) subprocess, the leader of its own process group."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def results(self) -> list[str]:
        """The outcomes its tasks returned, in order (succeeded, skipped, cancelled, failed, ...)."""
        return [m.group(2) for m in TASK_RESULT.finditer(self.log())]

    def owns(self, worker_name: str | None) -> bool:
        """Whether a job's ``worker`` (``host:pid`` of a pool process) is one of this worker's processes."""
        if not worker_name:
            return False
        pid = int(worker_name.rsplit(":", 1)[1])
        try:
            return os.getpgid(pid) == self.pgid
        except ProcessLookupError:
            return False

    def kill_group(self) -> None:
        """SIGKILL the worker and every process it started, at once (a machine losing power)."""
        os.killpg(self.pgid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        wait_for(lambda: not group_members(self.pgid), 10, f"every process of {self.name} to die")


@dataclass
class Farm:
    """One farm under test: its environment, database and workers."""

    tmp: Path
    env: dict[str, str]
    db: Database
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def broker_url(self) -> str:
        return self.env["FARM_BROKER_URL"]

    # -- processes ------------------------------------------------------------------------------------------

    def start_worker(self, *args: str, name: str | None = None, env: dict[str, str] | None = None) -> WorkerProcess:
        """``farm worker ARGS`` in its own process group, its output in a log file."""
        return self._start([*farm_command(), "worker", *args], name or f"worker{len(self.workers) + 1}", env)

    def start_celery(self, *args: str, name: str = "celery", env: dict[str, str] | None = None) -> WorkerProcess:
        """Plain ``celery -A workers.app worker ARGS`` (not farm worker), in its own process group."""
        return self._start([sys.executable, "-m", "celery", "-A", "workers.app", "worker", *args], name, env)

    def _start(self, argv: list[str], name: str, env: dict[str, str] | None) -> WorkerProcess:
        log_path = self.tmp / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                env={**self.env, **(env or {})},
                cwd=self.tmp,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(name, proc, log_path)
        self.workers.append(worker)
        return worker

    def stop_worker(self, *workers: WorkerProcess, grace_s: float = 30.0) -> None:
        """Stop workers the way an operator does: SIGTERM (a warm shutdown), all at once; SIGKILL after ``grace_s``."""
        for worker in workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for worker in workers:
            stop_process_group(worker.proc, max(0.0, deadline - time.monotonic()), terminate=False)

    def stop_all(self, grace_s: float = 2.0) -> None:
        """Stop every worker: SIGTERM to all at once, then SIGKILL to what is left of their process groups.

        The grace is short: a test that cares about the warm shutdown stops its workers itself.
        """
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for worker in self.workers:
            stop_process_group(worker.proc, max(0.0, deadline - time.monotonic()), terminate=False)

    def wait_ready(self, *workers: WorkerProcess, timeout_s: float = 90.0) -> None:
        """Until each worker's Celery consumer is ready and its pool processes heart-beat in the workers table."""
        for worker in workers:

            def ready(w: WorkerProcess = worker) -> bool:
                if w.proc.poll() is not None:
                    raise AssertionError(f"{w.name} exited with {w.proc.returncode}:\n{w.log()}")
                return " ready." in w.log()

            wait_for(ready, timeout_s, f"{worker.name} to be ready", logs=self.logs)
        wait_for(
            lambda: self.scalar("SELECT count(*) FROM workers WHERE state <> 'stopped'") >= len(workers),
            timeout_s,
            "the workers' heartbeats",
            logs=self.logs,
        )

    def logs(self) -> str:
        return "\n".join(f"=== {w.name} ===\n{w.log()[-6000:]}" for w in self.workers)

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``farm ARGS`` with the farm's environment (and ``env`` on top)."""
        try:
            return subprocess.run(
                [*farm_command(), *args],
                env={**self.env, **(env or {})},
                cwd=self.tmp,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"farm {' '.join(args)} ran past {timeout_s} s\n{self.logs()}") from e

    def submit(self, spec: Path, *args: str, timeout_s: float = 120.0) -> int:
        """``farm sweep submit SPEC ARGS``; returns the sweep id (asserting exit status 0)."""
        done = self.cli("sweep", "submit", str(spec), *args, timeout_s=timeout_s)
        assert done.returncode == 0, f"submit exited {done.returncode}:\n{done.stdout}\n{done.stderr}\n{self.logs()}"
        return int(done.stdout.split()[0])

    def write_spec(self, name: str, body: str, benchmark: str = FAST_BENCHMARK) -> Path:
        path = self.tmp / f"{name}.yaml"
        path.write_text(f"name: {name}\n{body.strip()}\n{benchmark}\n")
        return path

    # -- database -------------------------------------------------------------------------------------------

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.db.connect() as conn:
            return list(conn.execute(text(sql), params).mappings())

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.db.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def jobs(self, sweep_id: int) -> list[Any]:
        """The sweep's jobs, by id."""
        return self.rows(
            "SELECT j.* FROM jobs j JOIN sweep_jobs sj ON sj.job_id = j.id WHERE sj.sweep_id = :s ORDER BY j.id",
            s=sweep_id,
        )

    def sweep_state(self, sweep_id: int) -> str:
        return str(self.scalar("SELECT state FROM sweeps WHERE id = :s", s=sweep_id))

    def wait_sweep_done(self, sweep_id: int, timeout_s: float = 120.0) -> str:
        """Until the sweep is no longer pending or running; returns its state."""
        return wait_for(
            lambda: (state := self.sweep_state(sweep_id)) not in ("pending", "running") and state,
            timeout_s,
            f"sweep {sweep_id} to finish",
            interval_s=0.3,
            logs=self.logs,
        )

    def metric_counts(self, sweep_id: int) -> dict[int, list[int]]:
        """Job id -> its metrics rows' batch sizes (sorted)."""
        out: dict[int, list[int]] = {j["id"]: [] for j in self.jobs(sweep_id)}
        for r in self.rows("SELECT job_id, batch_size FROM metrics ORDER BY job_id, batch_size"):
            if r["job_id"] in out:
                out[r["job_id"]].append(r["batch_size"])
        return out

    def artifact_kinds(self, job_id: int) -> list[str]:
        return [r["kind"] for r in self.rows("SELECT kind FROM artifacts WHERE job_id = :j ORDER BY kind", j=job_id)]
