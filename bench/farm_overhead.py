"""The farm's overheads, measured side by side in one run on this machine's Redis and PostgreSQL.

Run:  python bench/farm_overhead.py [--jobs 300] [--redis redis://127.0.0.1:6379/14]
      [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Prints:
1. Per-job overhead of the farm with the no-op method. One job at a time: the latency from its message sent
   to its result committed, against a bare Celery task's from sent to its "done" published in Redis. And in
   bulk: N jobs sent at once to one `farm worker -c 1`, each claimed in PostgreSQL, "run" and its result
   committed; the wall time until all N are committed, divided by N. Against it, in the same run on the same
   Redis, the bare Celery round trip: N no-op tasks sent at once to one `celery worker -c 1`, each publishing
   its "done" in Redis. Target: farm <= 3x bare. Both sides send their messages the same way (each queue
   declared once, a batch pipelined), and each is observed as an event (LISTEN for the commits, SUBSCRIBE for
   the bare tasks), neither is polled. Five rounds, alternating; each round's farm / bare ratio is taken back
   to back, and the median ratio quoted.
2. Throughput on CPU-bound jobs (qat fine-tuning of farm:digits-cnn, ~1-2 s each) with 1 and then 2 worker
   processes on this 2-core machine: the span from the first job's start to the last one's end (from the
   database), per round (both pools up, the order alternating), the median ratio quoted, beside the machine's
   own ceiling (two busy processes vs one). Target >= 1.8x.
3. `farm sweep submit` of a 10,000-job spec, as a user runs it (a new process: interpreter start, plan,
   database, messages). Target <= 5 s. Twice: a new sweep (only its fp32 references can be sent yet), and
   the same spec once its references are measured (all 10,000 trial messages sent).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def noop_jobs(db, n: int, queue: str) -> tuple[list[int], list]:  # type: ignore[no-untyped-def]
    """n new no-op jobs, routed to ``queue`` and queued; returns their ids and messages."""
    from farm.jobs.contract import JobSpec
    from farm.quant.config import NoopConfig
    from farm.spec.plan import Plan, PlannedJob
    from farm.spec.schema import SweepSpec
    from farm.store import plans, scheduling

    tag = uuid.uuid4().hex[:8]
    jobs = []
    for i in range(n):
        spec = JobSpec("farm:digits-cnn", "sklearn:digits", NoopConfig(), seed=i)
        key = f"{tag}{i:056d}"[:64]
        jobs.append(PlannedJob(key, "trial", spec, "cpu", None, None))
    structure = SweepSpec.model_validate({"name": f"noop-{tag}", "models": ["farm:digits-cnn"], "methods": ["noop"]})
    with db.session() as s:
        record = plans.create_sweep(s, Plan(structure, f"name: noop-{tag}", jobs), "bench")
        plans.set_routes(s, {i: (queue, "all", None) for i in record.to_run})
        messages = scheduling.queue_ready(s, record.to_run)
    return record.to_run, messages


# Both sides are observed as events, not polled: the bench blocks on a socket until the database (NOTIFY, which
# PostgreSQL delivers when the result's transaction commits) or Redis (the bare task's PUBLISH) says a job is
# done. Polling the database every millisecond cost the machine a fifth of a core the bare side's Redis GET
# didn't, on the two cores the worker runs on; that went into the farm's figure as if it were its own overhead.
_NOTIFY_SQL = """
CREATE FUNCTION bench_job_done() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('bench_job_done', NEW.id::text); RETURN NEW; END $$;
CREATE TRIGGER bench_job_done AFTER UPDATE OF state ON jobs FOR EACH ROW
WHEN (NEW.state = 'succeeded' AND OLD.state IS DISTINCT FROM 'succeeded') EXECUTE FUNCTION bench_job_done();
"""


class Committed:
    """Jobs whose success has been committed, as PostgreSQL announces them (a trigger in the bench's database)."""

    def __init__(self, url: str) -> None:
        import psycopg

        libpq = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(libpq, autocommit=True) as setup:
            setup.execute(_NOTIFY_SQL)
        self.conn = psycopg.connect(libpq, autocommit=True)
        self.conn.execute("LISTEN bench_job_done")

    def wait(self, ids: list[int], timeout_s: float, what: str) -> None:
        want = set(ids)
        deadline = time.monotonic() + timeout_s
        while want:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"timed out waiting for {what}")
            for note in self.conn.notifies(timeout=left, stop_after=len(want)):
                want.discard(int(note.payload))

    def close(self) -> None:
        self.conn.close()


def farm_noop_round(db, app, committed: Committed, n: int, queue: str) -> float:  # type: ignore[no-untyped-def]
    """Seconds per job: n no-op jobs sent at once until all are committed."""
    from workers import dispatch

    ids, messages = noop_jobs(db, n, queue)
    started = time.perf_counter()
    dispatch.send(app, messages)
    committed.wait(ids, 300, "the farm's no-op jobs")
    return (time.perf_counter() - started) / n


def farm_noop_latency(db, app, committed: Committed, n: int, queue: str) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds from one job's message sent to its result committed, one job at a time, n times."""
    from workers import dispatch

    ids, messages = noop_jobs(db, n, queue)
    times = []
    for job_id, message in zip(ids, messages, strict=True):
        started = time.perf_counter()
        dispatch.send(app, [message])
        committed.wait([job_id], 60, "a no-op job")
        times.append(time.perf_counter() - started)
    return times


def bare_send(app, key: str, n: int) -> None:  # type: ignore[no-untyped-def]
    """Send n bare tasks exactly as workers.dispatch sends the farm's: the queue declared once, then the messages
    (pipelined in one batch when there are several), so that the two sides' sending costs the same."""
    with app.producer_or_acquire() as producer:
        producer.maybe_declare(app.amqp.queues["bare"], **app.conf.task_publish_retry_policy)
        batched = n > 1 and hasattr(producer, "batch")
        with producer.batch(1000) if batched else contextlib.nullcontext():
            for _ in range(n):
                options = {"retry": False} if batched else {}
                app.send_task(
                    "bare.noop", args=[key], queue="bare", routing_key="bare", producer=producer, declare=[], **options
                )


class Told:
    """The bare tasks' "done" messages on a Redis channel, subscribed to before anything is sent."""

    def __init__(self, key: str) -> None:
        self.client = redis.Redis.from_url(os.environ["FARM_BROKER_URL"])
        self.sub = self.client.pubsub(ignore_subscribe_messages=True)
        self.sub.subscribe(key)

    def wait(self, n: int, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"timed out waiting for {what}")
            if self.sub.get_message(timeout=left) is not None:
                n -= 1

    def close(self) -> None:
        self.sub.close()
        self.client.close()


def bare_round(n: int) -> float:
    from bare_celery import app as bare_app

    key = f"bare-{uuid.uuid4().hex[:8]}"
    told = Told(key)
    try:
        started = time.perf_counter()
        bare_send(bare_app, key, n)
        told.wait(n, 300, "the bare no-op tasks")
        return (time.perf_counter() - started) / n
    finally:
        told.close()


def bare_latency(n: int) -> list[float]:
    """Seconds from one bare task sent to its "done" received, one at a time, n times."""
    from bare_celery import app as bare_app

    key = f"bare-{uuid.uuid4().hex[:8]}"
    told = Told(key)
    times = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            bare_send(bare_app, key, 1)
            told.wait(1, 60, "a bare no-op task")
            times.append(time.perf_counter() - started)
    finally:
        told.close()
    return times


def _burn(seconds: float) -> int:
    end, n = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        n += 1
    return n


def machine_scaling(seconds: float = 3.0) -> float:
    """How much work two busy processes get done together, against one alone: this machine's own ceiling for the
    1 vs 2 process ratio (2.0 on two free cores; less with SMT siblings, throttling or a busy host)."""
    import multiprocessing

    one = _burn(seconds)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        two = sum(pool.map(_burn, [seconds, seconds]))
    return two / one


def cpu_bound_sweep(env: dict[str, str], home: Path, tag: str, n: int, queue: str) -> float:
    """Seconds the workers took for n new qat jobs (learning rates no other call uses), reference measured."""
    first = int(hashlib.sha256(tag.encode()).hexdigest()[:6], 16) * 64  # a block of n lrs of this tag's own
    lrs = ", ".join(f"{0.001 + (first + i) * 1e-12:.12f}" for i in range(n))
    spec = home / f"cpu-{tag}.yaml"
    spec.write_text(
        f"name: cpu-bound-{tag}\nmodels: [farm:digits-cnn]\nmethods:\n  - qat:\n      steps: 30\n      lr: [{lrs}]\n"
        "benchmark: {batch_size: [1], max_time_s: 0.3, min_reps: 5, warmup_s: 0}\n"
    )
    subprocess.run(
        ["farm", "sweep", "submit", str(spec), "--wait", "--cpu-queue", queue], env=env, check=True, capture_output=True
    )
    # The span from the first job's start to the last one's end, from the database: the workers' throughput,
    # without the submitting process's own start-up and polling (a fixed second or so that would dilute the ratio).
    engine = sa.create_engine(env["FARM_DATABASE_URL"])
    try:
        with engine.connect() as c:
            first_start, last_end = c.execute(
                sa.text(
                    "SELECT min(j.started_at), max(j.finished_at) FROM jobs j "
                    "JOIN sweep_jobs l ON l.job_id = j.id JOIN sweeps s ON s.id = l.sweep_id "
                    "WHERE s.name = :name AND j.role = 'trial'"
                ),
                {"name": f"cpu-bound-{tag}"},
            ).one()
    finally:
        engine.dispose()
    return (last_end - first_start).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="no-op jobs per round")
    parser.add_argument("--sections", default="1,2,3", help="which measurements to run (default 1,2,3)")
    parser.add_argument("--rounds", type=int, default=5, help="farm / bare pairs in section 1 (default 5)")
    parser.add_argument("--latency-jobs", type=int, default=50, help="one-at-a-time jobs per side and round")
    parser.add_argument("--cpu-jobs", type=int, default=8)
    parser.add_argument("--cpu-rounds", type=int, default=3, help="1- vs 2-process pairs in section 2")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    admin = sa.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    dbname = f"farm_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{dbname}"'))
    db_url = sa.engine.make_url(args.postgres).set(database=dbname).render_as_string(hide_password=False)
    redis.Redis.from_url(args.redis).flushdb()
    env = {
        **os.environ,
        "FARM_HOME": str(home),
        "FARM_DATABASE_URL": db_url,
        "FARM_BROKER_URL": args.redis,
        "FARM_ARTIFACTS_URL": str(home / "artifacts"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")]),
    }
    os.environ.update({k: env[k] for k in ("FARM_HOME", "FARM_DATABASE_URL", "FARM_BROKER_URL", "FARM_ARTIFACTS_URL")})
    sys.path.insert(0, str(ROOT / "bench"))
    from farm.store.db import Database
    from farm.store.migrate import ensure_schema
    from workers.app import make_app

    db = Database(db_url)
    ensure_schema(db)
    app = make_app(args.redis)
    procs = []
    try:
        if "1" in args.sections:
            print(
                f"== 1. per-job overhead, no-op method, {args.jobs} jobs at once, 1 worker process (target <= 3x bare)"
            )
            procs.append(
                start(["farm", "worker", "-Q", "noop", "-c", "1", "--loglevel", "warning"], env, home / "farm.log")
            )
            procs.append(
                start(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "bare_celery",
                        "worker",
                        "-Q",
                        "bare",
                        "-c",
                        "1",
                        "--loglevel",
                        "warning",
                    ],
                    env,
                    home / "bare.log",
                )
            )
            committed = Committed(db_url)
            farm_noop_round(db, app, committed, 20, "noop")  # warm both: pool processes started, imports done
            bare_round(20)
            farm_s, bare_s = [], []
            for i in range(args.rounds):
                if i % 2 == 0:
                    farm_s.append(farm_noop_round(db, app, committed, args.jobs, "noop"))
                    bare_s.append(bare_round(args.jobs))
                else:
                    bare_s.append(bare_round(args.jobs))
                    farm_s.append(farm_noop_round(db, app, committed, args.jobs, "noop"))
            # One job at a time: message sent -> claimed -> result committed, the latency a single job pays.
            farm_lat, bare_lat, lat_ratios = [], [], []
            for i in range(args.rounds):
                if i % 2 == 0:
                    farm_round = farm_noop_latency(db, app, committed, args.latency_jobs, "noop")
                    bare_round_ = bare_latency(args.latency_jobs)
                else:
                    bare_round_ = bare_latency(args.latency_jobs)
                    farm_round = farm_noop_latency(db, app, committed, args.latency_jobs, "noop")
                farm_lat += farm_round
                bare_lat += bare_round_
                lat_ratios.append(statistics.median(farm_round) / statistics.median(bare_round_))
            for p in procs:
                stop(p)
            procs.clear()
            committed.close()
            fl, bl = statistics.median(farm_lat), statistics.median(bare_lat)
            ratio = statistics.median(lat_ratios)
            print(
                f"one job at a time, sent -> committed: farm median {fl * 1000:.2f} ms "
                f"(p90 {statistics.quantiles(farm_lat, n=10)[-1] * 1000:.2f}), bare median {bl * 1000:.2f} ms "
                f"(p90 {statistics.quantiles(bare_lat, n=10)[-1] * 1000:.2f})"
            )
            print(
                "  ratio by round (farm median / bare median, measured back to back): "
                + ", ".join(f"{r:.2f}" for r in lat_ratios)
                + f"; median {ratio:.2f}x  {'PASS' if ratio <= 3 else 'MISS'}"
            )
            f, b = statistics.median(farm_s), statistics.median(bare_s)
            bulk_ratios = [x / y for x, y in zip(farm_s, bare_s, strict=True)]
            print(f"{args.jobs} jobs at once, ms/job: farm by round " + ", ".join(f"{x * 1000:.2f}" for x in farm_s))
            print(
                f"{' ' * len(str(args.jobs))}                     bare by round "
                + ", ".join(f"{x * 1000:.2f}" for x in bare_s)
            )
            ratio = statistics.median(bulk_ratios)
            print(
                f"  ratio by round: {', '.join(f'{r:.2f}' for r in bulk_ratios)}; median {ratio:.2f}x  "
                f"{'PASS' if ratio <= 3 else 'MISS'}  (medians: farm {f * 1000:.2f} ms, bare {b * 1000:.2f} ms)"
            )

        if "2" in args.sections:
            print(f"\n== 2. throughput, {args.cpu_jobs} CPU-bound qat jobs, 1 vs 2 worker processes (target >= 1.8x)")
            ref = home / "ref.yaml"
            ref.write_text(
                "name: ref\nmodels: [farm:digits-cnn]\nmethods: [fp32]\n"
                "benchmark: {batch_size: [1], max_time_s: 0.3, min_reps: 5, warmup_s: 0}\n"
            )
            # Both pools up at once (an idle worker sleeps); rounds alternate which one goes first, and each round's
            # 1-process / 2-process ratio is taken back to back.
            for workers in (1, 2):
                proc = start(
                    ["farm", "worker", "-Q", f"cpu{workers}", "-c", str(workers), "--loglevel", "warning"],
                    env,
                    home / f"cpu{workers}.log",
                )
                procs.append(proc)
                subprocess.run(
                    ["farm", "sweep", "submit", str(ref), "--wait", "--cpu-queue", f"cpu{workers}"],
                    env=env,
                    check=True,
                    capture_output=True,
                )
                cpu_bound_sweep(env, home, f"warm{workers}", workers, f"cpu{workers}")  # every pool process warm
            times: dict[int, list[float]] = {1: [], 2: []}
            for r in range(args.cpu_rounds):
                for workers in (1, 2) if r % 2 == 0 else (2, 1):
                    times[workers].append(
                        cpu_bound_sweep(env, home, f"run{workers}-{r}", args.cpu_jobs, f"cpu{workers}")
                    )
            for proc in list(procs):
                stop(proc)
                procs.remove(proc)
            ceiling = machine_scaling()
            ratios = [one / two for one, two in zip(times[1], times[2], strict=True)]
            ratio = statistics.median(ratios)
            t1, t2 = statistics.median(times[1]), statistics.median(times[2])
            print(
                f"1 process: {', '.join(f'{t:.1f}' for t in times[1])} s; 2 processes: "
                f"{', '.join(f'{t:.1f}' for t in times[2])} s (median {args.cpu_jobs / t1:.2f} vs "
                f"{args.cpu_jobs / t2:.2f} jobs/s)"
            )
            print(
                f"  ratio by round: {', '.join(f'{x:.2f}' for x in ratios)}; median {ratio:.2f}x  "
                f"{'PASS' if ratio >= 1.8 else 'MISS'}"
            )
            print(
                f"  this machine's own ceiling, two busy processes vs one (measured now): {ceiling:.2f}x; "
                f"the farm reaches {ratio / ceiling:.0%} of it"
            )

        if "3" in args.sections:
            print("\n== 3. farm sweep submit of a 10,000-job spec, a new process as a user runs it (target <= 5 s)")
            from sweep_bookkeeping import SPEC_10K

            spec = home / "10k.yaml"
            spec.write_text(SPEC_10K)
            runs, warm_runs, sent = [], [], []
            broker = redis.Redis.from_url(args.redis)
            for i in range(3):
                # A fresh database each round: every job is new, nothing cached. Only the fp32 references can be
                # sent at once (the trials wait on them), so a second submit follows with the references measured:
                # then every trial's message goes out, 10,000 of them.
                name = f"{dbname}_s{i}"
                with admin.connect() as c:
                    c.execute(sa.text(f'CREATE DATABASE "{name}"'))
                url = sa.engine.make_url(args.postgres).set(database=name).render_as_string(hide_password=False)
                sub_env = {**env, "FARM_DATABASE_URL": url}
                subprocess.run(["farm", "db", "upgrade"], env=sub_env, check=True, capture_output=True)
                broker.delete("bench-void")
                started = time.perf_counter()
                done = subprocess.run(
                    ["farm", "sweep", "submit", str(spec), "--force", "--cpu-queue", "bench-void"],
                    env=sub_env,
                    capture_output=True,
                    text=True,
                )
                runs.append(time.perf_counter() - started)
                assert done.returncode == 0, done.stderr
                engine = sa.create_engine(url)
                with engine.begin() as c:
                    c.execute(sa.text("UPDATE jobs SET state = 'succeeded' WHERE role = 'reference'"))
                engine.dispose()
                broker.delete("bench-void")
                started = time.perf_counter()
                warm = subprocess.run(
                    ["farm", "sweep", "submit", str(spec), "--force", "--cpu-queue", "bench-void"],
                    env=sub_env,
                    capture_output=True,
                    text=True,
                )
                warm_runs.append(time.perf_counter() - started)
                assert warm.returncode == 0, warm.stderr
                sent.append(int(broker.llen("bench-void")))
                broker.delete("bench-void")
                with admin.connect() as c:
                    c.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            print("new sweep, seconds by round: " + ", ".join(f"{r:.2f}" for r in runs))
            med = statistics.median(runs)
            print(f"median {med:.2f} s  {'PASS' if med <= 5 else 'MISS'}  ({done.stderr.strip().splitlines()[-1]})")
            print(
                "references measured, every trial sent, seconds by round: "
                + ", ".join(f"{r:.2f}" for r in warm_runs)
                + f"  (messages on the queue: {', '.join(map(str, sent))})"
            )
            med = statistics.median(warm_runs)
            print(f"median {med:.2f} s  {'PASS' if med <= 5 else 'MISS'}  ({warm.stderr.strip().splitlines()[-1]})")
    finally:
        for p in procs:
            stop(p)
        db.dispose()
        redis.Redis.from_url(args.redis).flushdb()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
