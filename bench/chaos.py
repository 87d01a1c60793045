"""Chaos rounds: a real farm, one real fault per round, then an audit of what it did to the results.

Run:  python bench/chaos.py [--rounds 10] [--seed 0] [--faults pool-kill,worker-kill,...] [--round-timeout 300]
      [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Needs PostgreSQL (a database of its own per round, dropped after), the redis-server binary (a Redis of the
bench's own, no persistence) and moto (its S3 server, in this process). Each round: a fresh database and S3
prefix, two `farm worker -Q cpu -c 1` processes, and a 14-job sweep of farm:digits-mlp (its fp32 reference,
dynamic, static, and 11 qat fine-tunes) submitted with `farm sweep submit --wait`. Every farm process reaches
PostgreSQL, Redis and S3 through a TCP proxy of tests/integration/faults.py, so that an outage is a real one.
While jobs run, one fault (seeded; each block of rounds draws every fault once, in a random order):

  pool-kill      SIGKILL the pool process running a job (Celery replaces it; the job's lease runs out)
  worker-kill    SIGKILL a whole `farm worker` (parent, Celery worker, pool), then start a new one
  worker-stall   SIGSTOP a whole `farm worker` for FARM_LEASE_S + 6 s, then SIGCONT (it wakes up a loser)
  redis-restart  SIGKILL the broker and start it again empty (no persistence: every queued message is lost)
  s3-drop        the S3 proxy drops every connection and refuses new ones for --s3-drop-s (10 s)
  db-drop        the PostgreSQL proxy does the same for --db-drop-s (15 s)

Then `--wait` must return on its own within --round-timeout; nobody runs `farm sweep resume` (a round that
doesn't settle by then counts as needing one). The audit (bench/chaos_audit.py) reads the database and S3
directly: jobs that succeeded exactly once (one set of rows, from one attempt), task runs that computed a job
to the end (from the workers' logs: above the job count where a fault made a job run twice, which is allowed),
duplicate rows, rows whose object is missing or hashes differently (every object downloaded), orphan objects
under jobs/, worker losses charged, and whether `--wait`'s exit status matched the sweep's final state.

The farm runs with a short lease (FARM_LEASE_S 8 s, heartbeats every second) and FARM_REQUEUE_AFTER_S 10 s, so
that a lost worker or a lost message costs seconds, not the production defaults' minutes. Target: every round
0 duplicates, 0 lost, 0 mismatches, 0 orphans, 0 manual resumes; a worker loss charged only where a worker
really died or stalled (at most 1 per round).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from chaos_audit import Outcome, audit_round, cpu_model, table  # noqa: E402

from tests.integration.farm.farm_support import farm_command, stop_process_group  # noqa: E402
from tests.integration.faults import OwnRedis, TcpProxy, host_port  # noqa: E402

FAULTS = ("pool-kill", "worker-kill", "worker-stall", "redis-restart", "s3-drop", "db-drop")
SETTLED = ("succeeded", "failed", "cancelled")
LRS = ", ".join(f"{0.0001 * (i + 1):.4f}" for i in range(11))


def spec_text(name: str, qat_steps: int) -> str:
    """14 jobs: the fp32 reference, dynamic, static and 11 qat fine-tunes of farm:digits-mlp."""
    return (
        f"name: {name}\nmodels: [farm:digits-mlp]\nmethods:\n  - fp32\n  - dynamic\n  - static\n"
        f"  - qat:\n      steps: {qat_steps}\n      lr: [{LRS}]\n"
        "benchmark: {batch_size: [1], max_time_s: 0.2, min_reps: 5, warmup_s: 0}\n"
    )


@dataclass
class Services:
    """The outside systems, each behind a proxy that the faults act on; ``*_direct`` is for the audit only."""

    pg_admin: sa.Engine
    pg_direct: str
    pg_proxy: TcpProxy
    redis: OwnRedis
    redis_proxy: TcpProxy
    s3_direct: str
    s3_proxy: TcpProxy
    bucket: str
    home: Path

    def s3(self):  # a boto3 client on moto, directly
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.s3_direct,
            aws_access_key_id="AKIACHAOS",
            aws_secret_access_key="chaos-secret",
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )


def start_services(postgres: str, tmp: Path) -> Services:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    admin = sa.create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect():
        pass
    redis = OwnRedis(workdir=tmp).start()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    s3_direct = "http://{}:{}".format(*moto.get_host_and_port())
    pg_proxy = TcpProxy(*host_port(postgres, 5432)).start()
    redis_proxy = TcpProxy("127.0.0.1", redis.port).start()
    s3_proxy = TcpProxy(*host_port(s3_direct, 80)).start()
    svc = Services(admin, postgres, pg_proxy, redis, redis_proxy, s3_direct, s3_proxy, "chaos", tmp / "home")
    svc.s3().create_bucket(Bucket=svc.bucket)
    return svc


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Round:
    """One round's farm: its own database, S3 prefix, FARM_HOME and workers."""

    number: int
    fault: str
    svc: Services
    lease_s: float
    tmp: Path
    db_name: str = field(default_factory=lambda: f"farm_chaos_{secrets.token_hex(4)}")
    workers: list[Worker] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def db_direct(self) -> str:
        return sa.engine.make_url(self.svc.pg_direct).set(database=self.db_name).render_as_string(hide_password=False)

    @property
    def prefix(self) -> str:
        return f"r{self.number}-{self.db_name[-8:]}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "AWS_"))}
        env.pop("COLUMNS", None)
        home = self.tmp / "home"
        if not home.exists():
            (home / "cache").mkdir(parents=True)
            (home / "cache" / "zoo").symlink_to(self.svc.home / "cache" / "zoo", target_is_directory=True)
        env.update(
            FARM_HOME=str(home),
            FARM_DATABASE_URL=self.svc.pg_proxy.url(self.db_direct),
            FARM_BROKER_URL=self.svc.redis_proxy.url(self.svc.redis.url),
            FARM_ARTIFACTS_URL=f"s3://{self.svc.bucket}/{self.prefix}",
            AWS_ENDPOINT_URL=self.svc.s3_proxy.url(self.svc.s3_direct),
            AWS_ACCESS_KEY_ID="AKIACHAOS",
            AWS_SECRET_ACCESS_KEY="chaos-secret",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=str(self.tmp / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.tmp / "no-aws-credentials"),
            FARM_HEARTBEAT_S="1",
            FARM_LEASE_S=f"{self.lease_s:g}",
            FARM_REQUEUE_AFTER_S="10",
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start_worker(self) -> Worker:
        log = self.tmp / f"worker{len(self.logs) + 1}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*farm_command(), "worker", "-Q", "cpu", "-c", "1"],
                env=self.env(),
                cwd=self.tmp,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(proc, log)
        self.workers.append(worker)
        return worker

    def wait_ready(self, worker: Worker, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while " ready." not in worker.text():
            if worker.proc.poll() is not None:
                raise SystemExit(f"a farm worker exited with {worker.proc.returncode}:\n{worker.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"a farm worker was not ready after {timeout_s:.0f} s:\n{worker.text()[-3000:]}")
            time.sleep(0.2)


def query(engine: sa.Engine, sql: str, **params: object) -> list[sa.RowMapping]:
    with engine.connect() as c:
        return list(c.execute(sa.text(sql), params).mappings())


def running_job(engine: sa.Engine, min_done: int, timeout_s: float) -> sa.RowMapping | None:
    """A job running for a moment already (its pool process well into it), once ``min_done`` jobs succeeded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = query(engine, "SELECT count(*) AS n FROM jobs WHERE state = 'succeeded'")[0]["n"]
        rows = query(
            engine,
            "SELECT id, method, worker FROM jobs WHERE state = 'running' AND worker IS NOT NULL "
            "AND started_at < now() - interval '0.3 seconds' ORDER BY started_at",
        )
        if rows and done >= min_done:
            return rows[0]
        states = {r["state"] for r in query(engine, "SELECT DISTINCT state FROM jobs")}
        if states and not states & {"pending", "queued", "running"}:
            return None  # the sweep ended before anything could be hit
        time.sleep(0.1)
    return None


def owner(rnd: Round, worker_name: str) -> Worker | None:
    """The farm worker whose process group holds a job's pool process (``host:pid``)."""
    try:
        pgid = os.getpgid(int(worker_name.rsplit(":", 1)[1]))
    except (ProcessLookupError, ValueError):
        return None
    return next((w for w in rnd.workers if w.pgid == pgid and w.proc.poll() is None), None)


def inject(rnd: Round, engine: sa.Engine, rng: random.Random, args: argparse.Namespace) -> str:
    """Wait for a running job after a random number of successes, then inflict the round's fault; say what it hit."""
    for _ in range(3):
        job = running_job(engine, rng.randint(1, 4), timeout_s=120)
        if job is None:
            return "nothing ran: no fault"
        what = f"job {job['id']} ({job['method']})"
        if rnd.fault == "pool-kill":
            try:
                os.kill(int(job["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
            except ProcessLookupError:
                continue  # it finished meanwhile: take the next one
            return f"SIGKILL pool process of {what}"
        if rnd.fault in ("worker-kill", "worker-stall"):
            victim = owner(rnd, job["worker"])
            if victim is None:
                continue
            if rnd.fault == "worker-kill":
                os.killpg(victim.pgid, signal.SIGKILL)
                victim.proc.wait(timeout=10)
                try:
                    rnd.wait_ready(rnd.start_worker())
                except SystemExit as e:
                    return f"SIGKILL farm worker running {what}; its replacement did not start: {e}"[:300]
                return f"SIGKILL farm worker running {what}; a new one started"
            stall_s = rnd.lease_s + 6
            os.killpg(victim.pgid, signal.SIGSTOP)
            try:
                time.sleep(stall_s)
            finally:
                os.killpg(victim.pgid, signal.SIGCONT)
            return f"SIGSTOP farm worker running {what} for {stall_s:g} s"
        if rnd.fault == "redis-restart":
            rnd.svc.redis.restart()
            return f"Redis restarted empty while {what} ran"
        proxy, outage_s = {
            "s3-drop": (rnd.svc.s3_proxy, args.s3_drop_s),
            "db-drop": (rnd.svc.pg_proxy, args.db_drop_s),
        }[rnd.fault]
        proxy.drop()
        try:
            time.sleep(outage_s)
        finally:
            proxy.restore()
        return f"{rnd.fault.split('-')[0]} down {outage_s:g} s while {what} ran"
    return "every target finished before it was hit: no fault"


def play_round(rnd: Round, rng: random.Random, args: argparse.Namespace) -> Outcome:
    from farm.store.db import Database
    from farm.store.migrate import ensure_schema

    svc = rnd.svc
    with svc.pg_admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{rnd.db_name}"')
    engine = sa.create_engine(rnd.db_direct)
    db = Database(rnd.db_direct)
    ensure_schema(db)
    db.dispose()
    import redis

    redis.Redis.from_url(svc.redis.url).flushall()
    submit: subprocess.Popen[bytes] | None = None
    try:
        for w in [rnd.start_worker(), rnd.start_worker()]:
            rnd.wait_ready(w)
        spec = rnd.tmp / "chaos.yaml"
        spec.write_text(spec_text(f"chaos-{rnd.number}", args.qat_steps))
        started = time.monotonic()
        with open(rnd.tmp / "submit.log", "wb") as out:
            submit = subprocess.Popen(
                [*farm_command(), "sweep", "submit", str(spec), "--wait"],
                env=rnd.env(),
                cwd=rnd.tmp,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        hit = inject(rnd, engine, rng, args)
        deadline = started + args.round_timeout
        wait_rc = state_at_return = None
        final_state, settled = "?", False
        while time.monotonic() < deadline:
            if wait_rc is None and submit.poll() is not None:
                wait_rc = submit.returncode
                state_at_return = sweep_state(engine)
            final_state = sweep_state(engine)
            unfinished = query(engine, "SELECT id FROM jobs WHERE state NOT IN ('succeeded', 'failed', 'cancelled')")
            settled = final_state in SETTLED and not unfinished
            if settled and wait_rc is not None:
                break
            time.sleep(0.5)
        seconds = time.monotonic() - started
    finally:
        if submit is not None and submit.poll() is None:
            submit.kill()
            submit.wait()
        for w in rnd.workers:  # a warm shutdown: a worker that stalled finishes (and cleans up) what it holds
            if w.proc.poll() is None:
                os.killpg(w.pgid, signal.SIGCONT)
                w.proc.send_signal(signal.SIGTERM)
        for w in rnd.workers:
            stop_process_group(w.proc, 60, terminate=False)
        svc.pg_proxy.restore()
        svc.s3_proxy.restore()
    sweeps = query(engine, "SELECT id FROM sweeps ORDER BY id LIMIT 1")
    if not sweeps:
        raise SystemExit(f"round {rnd.number}: no sweep was created:\n{(rnd.tmp / 'submit.log').read_text()[-2000:]}")
    sweep_id = sweeps[0]["id"]
    audit = audit_round(engine, sweep_id, svc.s3(), svc.bucket, rnd.prefix, rnd.logs)
    engine.dispose()
    if not args.keep:
        with svc.pg_admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{rnd.db_name}" WITH (FORCE)')
    return Outcome(rnd.number, rnd.fault, hit, wait_rc, state_at_return, final_state, settled, seconds, audit)


def sweep_state(engine: sa.Engine) -> str:
    rows = query(engine, "SELECT state FROM sweeps ORDER BY id LIMIT 1")
    return str(rows[0]["state"]) if rows else "none"


def fault_plan(rounds: int, faults: list[str], rng: random.Random) -> list[str]:
    """Every fault once per block of len(faults) rounds, in a seeded random order."""
    plan: list[str] = []
    while len(plan) < rounds:
        block = list(faults)
        rng.shuffle(block)
        plan += block
    return plan[:rounds]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, from {', '.join(FAULTS)}")
    p.add_argument("--round-timeout", type=float, default=300.0, help="seconds before a round needs a resume")
    p.add_argument("--lease-s", type=float, default=8.0)
    p.add_argument("--s3-drop-s", type=float, default=10.0)
    p.add_argument("--db-drop-s", type=float, default=15.0)
    p.add_argument("--qat-steps", type=int, default=500)
    p.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--keep", action="store_true", help="keep each round's database (and the temp dir)")
    args = p.parse_args()
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown or not faults:
        p.error(f"unknown fault(s): {', '.join(unknown) or '(none given)'}; choose from {', '.join(FAULTS)}")
    rng = random.Random(args.seed)
    plan = fault_plan(args.rounds, faults, rng)

    tmp = Path(tempfile.mkdtemp(prefix="farm-chaos-"))
    svc = start_services(args.postgres, tmp)
    (svc.home / "cache" / "zoo").mkdir(parents=True)
    warm = {**os.environ, "FARM_HOME": str(svc.home), "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-c", "from farm.zoo.models import load_model; load_model('farm:digits-mlp')"],
        env=warm,
        check=True,
    )
    print(f"machine: {cpu_model()}; work dir {tmp}", flush=True)
    outcomes: list[Outcome] = []
    try:
        for n, fault in enumerate(plan, 1):
            rdir = tmp / f"round{n}"
            rdir.mkdir()
            rnd = Round(n, fault, svc, args.lease_s, rdir)
            outcome = play_round(rnd, rng, args)
            outcomes.append(outcome)
            a = outcome.audit
            print(
                f"round {n}: {fault}: {outcome.hit}; {a.succeeded}/{a.jobs} succeeded, {outcome.seconds:.0f} s, "
                f"{outcome.verdict}",
                flush=True,
            )
            for problem in a.problems[:8]:
                print(f"    {problem}", flush=True)
            if outcome.wait_rc not in (0, 1):
                print(f"    --wait: {(rdir / 'submit.log').read_text(errors='replace').strip()[-400:]}", flush=True)
    finally:
        for proxy in (svc.pg_proxy, svc.redis_proxy, svc.s3_proxy):
            proxy.stop()
        svc.redis.stop()
        svc.pg_admin.dispose()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nmachine: {cpu_model()}; seed {args.seed}; lease {args.lease_s:g} s\n")
    print(table(outcomes))
    sys.exit(0 if all(o.passed for o in outcomes) else 1)


if __name__ == "__main__":
    main()
