"""Analyst queries over 1,000,000 result rows on PostgreSQL, through `farm results query`'s own code path.

Run:  python bench/results_query.py [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
      [--rows 1000000] [--keep]

A fresh database is migrated (so only the indexes the migrations create exist), then filled inside
PostgreSQL (generate_series) with 500,000 jobs x 2 batch sizes = 1,000,000 rows of results_flat, spread
over 10 sweeps, 20 models, 6 methods, several bit-widths, calibration sizes, observers and backends, with
references, artifacts and a few failed jobs, then ANALYZEd. Each query is a filter + sort + limit 100 as an
analyst writes it, parsed and run by farm.store.results (ResultsQuery.parse + query_results), timed end to
end (SQL and Python) five times; the median is quoted. Target: <= 200 ms each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid

import sqlalchemy as sa

QUERIES = [
    ("method = 'static' AND accuracy_drop < 0.01", "latency_p50_ms asc"),
    ("model = 'torchvision:resnet7' AND bits = 8 AND batch_size = 8", "accuracy desc"),
    ("accuracy > 0.9 AND simulated = false", "size_ratio asc"),
    ("observer IN ('histogram', 'percentile') AND calibration_size >= 256", "sqnr_db desc"),
    ("model LIKE 'torchvision:resnet1%' AND speedup > 2", "speedup desc"),
    ("sweep_id = 3 AND state = 'failed'", "finished_at desc"),
    ("latency_p50_ms < 5 AND accuracy_drop <= 0.02 AND device = 'cpu'", "throughput desc"),
    ("method = 'qat' AND bits = 4", "latency_p99_ms asc"),
    ("batch_size = 1", "agreement asc"),
    ("bits IS NULL AND model != 'torchvision:resnet0'", "size_bytes desc"),
]

FILL = """
INSERT INTO sweeps (id, name, spec_text, spec_hash, submitter, created_at, state)
SELECT s, 'bench-' || s, 'name: bench', md5(s::text) || md5(s::text), 'bench', now(), 'succeeded'
FROM generate_series(1, 10) s;

INSERT INTO jobs (id, key, sweep_id, role, reference_job_id, model, dataset, method, bits, calibration_size,
                  backend, observer, granularity, device, queue, stage, spec, state, attempts, error, worker,
                  hardware, created_at, started_at, finished_at, duration_s)
SELECT i, md5(i::text) || md5((i + 7)::text), 1 + i % 10,
       CASE WHEN i <= 200 THEN 'reference' ELSE 'trial' END,
       CASE WHEN i <= 200 THEN NULL ELSE 1 + i % 200 END,
       'torchvision:resnet' || (i % 20), 'imagefolder:/data/val',
       CASE WHEN i <= 200 THEN 'fp32' ELSE (ARRAY['dynamic','static','static','static','qat','bf16'])[1 + i % 6] END,
       CASE WHEN i <= 200 OR i % 6 = 5 THEN NULL ELSE (ARRAY[8, 8, 6, 4, 2])[1 + (i / 20) % 5] END,
       CASE WHEN i % 6 IN (1, 2, 3, 4) THEN (ARRAY[16, 64, 256, 1024])[1 + (i / 7) % 4] END,
       'x86', (ARRAY['minmax','histogram','percentile','moving_average'])[1 + (i / 3) % 4],
       (ARRAY['per_tensor','per_channel'])[1 + i % 2], 'cpu', 'cpu', 'all', '{}'::json,
       CASE WHEN i % 97 = 0 THEN 'failed' ELSE 'succeeded' END, 1,
       CASE WHEN i % 97 = 0 THEN 'QuantizationError: bench failure ' || i END,
       'worker-' || (i % 8), 'AMD EPYC [avx512_vnni] x2',
       now(), now() - (i % 1000) * interval '1 second', now() - (i % 997) * interval '1 second', 1 + (i % 50)
FROM generate_series(1, :jobs) i;

INSERT INTO sweep_jobs (sweep_id, job_id) SELECT 1 + i % 10, i FROM generate_series(1, :jobs) i;

INSERT INTO metrics (job_id, batch_size, accuracy, accuracy_fp32, top5, agreement, sqnr_db, cosine, size_bytes,
                     size_fp32_bytes, size_ratio, coverage, coverage_macs, simulated, latency_p50_ms, latency_p90_ms,
                     latency_p99_ms, throughput, peak_memory_bytes, hardware_id, extra)
SELECT r.i, b, 0.7 + 0.3 * r.a, 0.7 + 0.3 * r.a + 0.03 * r.d, 0.95, 0.9 + 0.1 * r.a, 10 + 40 * r.a, 0.99,
       (46000000 * (0.25 + 0.75 * r.s))::bigint, 46000000, 0.25 + 0.75 * r.s, r.a, r.a, (r.i % 5 = 3),
       b * (1 + 20 * r.l), b * (1.1 + 22 * r.l), b * (1.3 + 25 * r.l), 1000 / (1 + 20 * r.l), 900000000,
       'hw1', '{}'::json
FROM (SELECT i, random() AS a, random() AS d, random() AS s, random() AS l  -- one draw per job
      FROM generate_series(1, :jobs) i WHERE i % 97 <> 0) r
CROSS JOIN (VALUES (1), (8)) AS bs(b);

INSERT INTO artifacts (job_id, kind, uri, sha256, size_bytes, created_at)
SELECT i, 'model', 's3://bench/jobs/' || i || '/model.pt', md5(i::text) || md5(i::text), 1000, now()
FROM generate_series(1, :jobs) i WHERE i % 97 <> 0;
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=1_000_000, help="result rows (two per job)")
    parser.add_argument("--keep", action="store_true", help="keep the database (its URL is printed)")
    parser.add_argument("--explain", action="store_true", help="print each query's plan")
    args = parser.parse_args()

    from farm.store.db import Database
    from farm.store.migrate import ensure_schema
    from farm.store.results import ResultsQuery, query_results

    admin = sa.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    name = f"farm_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(args.postgres).set(database=name).render_as_string(hide_password=False)
    db = Database(url)
    try:
        ensure_schema(db)
        started = time.perf_counter()
        with db.engine.begin() as conn:
            for statement in FILL.split(";\n"):
                if statement.strip():
                    conn.execute(sa.text(statement), {"jobs": args.rows // 2})
        from farm.store.results import recompute_stored_figures

        with db.session() as s:
            recompute_stored_figures(s)  # accuracy_drop and speedup, as workers store them with each result
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
        with db.session(write=False) as s:
            count = s.scalar(sa.text("SELECT count(*) FROM results_flat"))
        print(f"filled {count:,} rows of results_flat in {time.perf_counter() - started:.0f} s ({db.redacted_url})")
        print("query: --where ... --order-by ... --limit 100; median of 5 runs (after one warm-up)\n")
        worst = 0.0
        for where, order in QUERIES:
            query = ResultsQuery.parse(where=where, order_by=order, limit=100)
            times, rows = [], []
            for i in range(6):
                with db.session(write=False) as s:
                    t = time.perf_counter()
                    rows = query_results(s, query)
                    if i:
                        times.append(time.perf_counter() - t)
            med = statistics.median(times) * 1000
            worst = max(worst, med)
            print(
                f"{med:8.1f} ms  (min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})  {len(rows):>3} rows  "
                f"--where \"{where}\" --order-by '{order}'  {'PASS' if med <= 200 else 'MISS'}"
            )
            if args.explain:
                from sqlalchemy.dialects import postgresql

                from farm.store.results import statement

                sql = statement(query, "postgresql").compile(
                    dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
                )
                with db.session(write=False) as s:
                    for (line,) in s.execute(sa.text(f"EXPLAIN ANALYZE {sql}")):
                        print("      " + line)
        print(f"\nslowest median {worst:.1f} ms: {'PASS' if worst <= 200 else 'MISS'} (target <= 200 ms)")
    finally:
        db.dispose()
        if args.keep:
            print(f"kept: {url}")
        else:
            with admin.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
