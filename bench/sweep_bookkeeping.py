"""Sweep bookkeeping: expanding + persisting a 10,000-job sweep, and the local runner's per-job overhead.

Run:  python bench/sweep_bookkeeping.py [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Prints, in one run:
- the time to load, validate, expand and persist a 10,000-job spec, on SQLite and (when reachable) on
  PostgreSQL, each in a fresh database; target <= 3 s each;
- the local runner's bookkeeping overhead per job, measured with the no-op method: each job is queued,
  claimed in the database by a worker process, "run", and its result recorded, exactly as a real job
  is; with 1 worker process. Per job = (wall time of an N-job run - wall time of a 1-job run) / (N - 1),
  which takes out the worker process's start; 5 pairs of runs, the median quoted (target <= 5 ms).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

SPEC_10K = """\
name: bench-10k
models: [farm:digits-cnn, farm:digits-mlp]
methods:
  - static:
      observer: [minmax, moving_average, histogram, percentile]
      granularity: [per_tensor, per_channel]
      activation: [affine, symmetric]
      percentile: [99.9, 99.99, 99.999, 100.0, 99.0]
  - qat:
      epochs: [1, 2, 3, 4, 5]
      lr: [0.001, 0.0003, 0.0001, 0.00003]
bits: [8, 7, 6, 5, 4]
calibration_size: [16, 32, 64, 128, 256]
backend: [x86, fbgemm]
"""


def persist(url: str) -> tuple[int, float]:
    from farm.spec.load import load_spec
    from farm.store import plans
    from farm.store.db import Database
    from farm.store.migrate import ensure_schema

    db = Database(url)
    ensure_schema(db)
    started = time.perf_counter()
    plan = load_spec(SPEC_10K, source="bench-10k.yaml", limit=None)
    with db.session() as s:
        record = plans.create_sweep(s, plan, "bench")
    elapsed = time.perf_counter() - started
    db.dispose()
    return record.total, elapsed


def overhead(url: str, jobs: int, artifacts: str) -> list[float]:
    """Per-job wall time of noop sweeps (several sweeps, so the median has a spread)."""
    from farm.jobs.contract import JobSpec
    from farm.jobs.local import RunStats, run_local
    from farm.quant.bench_config import BenchmarkConfig
    from farm.quant.config import NoopConfig
    from farm.spec.plan import Plan, PlannedJob
    from farm.spec.schema import SweepSpec
    from farm.store import plans
    from farm.store.db import Database
    from farm.store.migrate import ensure_schema

    db = Database(url)
    ensure_schema(db)

    def run(n: int, tag: str) -> float:
        planned = []
        for i in range(n):
            spec = JobSpec("farm:digits-cnn", "sklearn:digits", NoopConfig(), seed=i, benchmark=BenchmarkConfig())
            key = hashlib.sha256(f"{tag}-{i}".encode()).hexdigest()  # unique per run: nothing is cached
            planned.append(PlannedJob(key, "trial", spec, "cpu", None, None))
        structure = SweepSpec.model_validate({"name": tag, "models": ["farm:digits-cnn"], "methods": ["noop"]})
        plan = Plan(structure, f"name: {tag}", planned)
        with db.session() as s:
            record = plans.create_sweep(s, plan, "bench")
        stats = RunStats(total=record.total, cached=record.cached)
        started = time.perf_counter()
        run_local(db, record.sweep_id, record.to_run, artifacts_url=artifacts, jobs=1, threads=1, stats=stats)
        elapsed = time.perf_counter() - started
        assert stats.succeeded == n, stats
        return elapsed

    per_job = []
    for rep in range(5):
        one = run(1, f"noop-1-{rep}")
        many = run(jobs, f"noop-n-{rep}")
        per_job.append((many - one) / (jobs - 1) * 1000)
    db.dispose()
    return per_job


def pg_database(admin_url: str) -> tuple[str, callable] | None:  # type: ignore[valid-type]
    try:
        engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        name = f"farm_bench_{uuid.uuid4().hex[:8]}"
        with engine.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001
        print(f"PostgreSQL at {admin_url.split('@')[-1]}: unreachable ({type(e).__name__}); skipped")
        return None
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with engine.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()

    return url, drop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--noop-jobs", type=int, default=200)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    os.environ["FARM_HOME"] = str(home)

    print("== expand + persist a 10,000-job sweep (target <= 3 s)")
    total, secs = persist(f"sqlite:///{home / 'expand.db'}")
    print(f"SQLite      {total:,} jobs in {secs:.2f} s  {'PASS' if secs <= 3 else 'MISS'}")
    pg = pg_database(args.postgres)
    if pg:
        url, drop = pg
        try:
            total, secs = persist(url)
            print(f"PostgreSQL  {total:,} jobs in {secs:.2f} s  {'PASS' if secs <= 3 else 'MISS'}")
        finally:
            drop()

    print(
        f"\n== local runner bookkeeping per job, no-op method, {args.noop_jobs} jobs x 5 runs (target <= 5 ms median)"
    )
    runs = overhead(f"sqlite:///{home / 'noop.db'}", args.noop_jobs, str(home / "artifacts"))
    med = statistics.median(runs)
    print("per-job ms by run: " + ", ".join(f"{r:.2f}" for r in runs))
    print(f"median {med:.2f} ms (min {min(runs):.2f}, max {max(runs):.2f})  {'PASS' if med <= 5 else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
