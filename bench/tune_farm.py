"""The digits-cnn search fanned out over the farm's workers: -c 2 against -c 1 (issue 14's wall target, farm path).

Run:  python bench/tune_farm.py [--pairs 3] [--database-url postgresql://postgres@127.0.0.1:5432/postgres]
                                 [--broker-url redis://127.0.0.1:6379/9]

``bench/tune.py --sections wall`` times ``farm tune -j N``: a local run whose N worker processes start, import torch
and load the runtimes within the search (2-2.5 s of a 13-20 s search on 2 vCPUs). A farm's workers are long-lived:
this bench times the same search submitted (``farm tune --submit``) to ``farm worker -Q cpu -c 1`` and to ``-c 2``,
each worker started once and warmed by one search (stage 1 of the same tune, which also finds the target: the best
global recipe + 2 dB, as bench/tune.py does) before the timed one. Between the warm-up and the timed search every
table but the workers' and Alembic's is emptied, and the artifacts with it: the timed search starts from an empty
database and reuses nothing by key. Its wall time is the sweep's own, from its creation to its end, as the database
records them. Pairs alternate (c1 c2, c2 c1, ...); the median over pairs of wall(-c 2) / wall(-c 1) is printed
against 0.6. It needs PostgreSQL and Redis (a scratch database is created and dropped; the broker's database index
is flushed); the CPU and its ISA flags are printed beside every figure. A report, not a test: exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SEARCH = ["--model", "farm:digits-cnn", "--dataset", "sklearn:digits", "--method", "static", "--metric", "sqnr_db",
          "--batch-size", "8"]  # fmt: skip
WALL_TARGET = 0.6


class Farm:
    """A scratch database, broker index and FARM_HOME; workers started and stopped on them."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        import psycopg
        import redis

        self.root, self.args = root, args
        self.name = f"farm_bench_{os.getpid()}"
        self.admin = args.database_url
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.name}")
            conn.execute(f"CREATE DATABASE {self.name}")
        self.url = self.admin.rsplit("/", 1)[0] + f"/{self.name}"
        self.redis = redis.Redis.from_url(args.broker_url)
        self.redis.flushdb()
        self.env = {
            **os.environ,
            "FARM_HOME": str(root),
            "FARM_DATABASE_URL": self.url,
            "FARM_BROKER_URL": args.broker_url,
            "FARM_ARTIFACTS_URL": str(root / "artifacts"),
        }
        self.farm("db", "upgrade")
        self.worker: subprocess.Popen[bytes] | None = None

    def farm(self, *argv: str) -> str:
        proc = subprocess.run([sys.executable, "-c", "from farm.cli import main; main()", *argv], env=self.env,
                              capture_output=True, text=True)  # fmt: skip
        if proc.returncode not in (0, 1):
            raise SystemExit(f"farm {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc.stdout

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return list(cur.fetchall()) if cur.description is not None else []

    def start(self, concurrency: int) -> None:
        log = open(self.root / f"worker-c{concurrency}.log", "ab")  # noqa: SIM115  (the worker's lifetime)
        self.worker = subprocess.Popen(
            [sys.executable, "-c", "from farm.cli import main; main()", "worker", "-Q", "cpu", "-c", str(concurrency)],
            env=self.env, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            alive = self.query("SELECT count(*) FROM workers WHERE state <> 'stopped'")[0][0]
            if alive >= concurrency:
                return
            time.sleep(0.5)
        raise SystemExit(f"farm worker -c {concurrency} did not come up (see {log.name})")

    def stop(self) -> None:
        if self.worker is None:
            return
        os.killpg(self.worker.pid, signal.SIGTERM)
        try:
            self.worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait()
        self.worker = None
        self.query("DELETE FROM workers")

    def search(self, target: list[str], *extra: str) -> dict[str, Any]:
        """Submit the search, wait for its sweep to end; its answer and wall time (the sweep's own)."""
        tune_id = int(self.farm("tune", *SEARCH, *target, "--submit", *extra).strip())
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            (state, created, finished) = self.query(
                "SELECT state, created_at, finished_at FROM sweeps WHERE id = %s", tune_id
            )[0]
            if finished is not None:
                data = json.loads(self.farm("tune", "status", str(tune_id), "--json"))
                return {**data, "state": state, "wall": (finished - created).total_seconds()}
            time.sleep(0.25)
        raise SystemExit(f"tune {tune_id} did not end in 15 minutes")

    def where(self, tune_id: int) -> str:
        """Where the search's wall time went: before its first job, each stage (wall, and the jobs' time in it: their
        ratio is how many processes it kept busy), after its last job."""
        (created, finished) = self.query("SELECT created_at, finished_at FROM sweeps WHERE id = %s", tune_id)[0]
        rows = self.query(
            "SELECT j.role, j.started_at, j.finished_at, j.duration_s FROM jobs j JOIN sweep_jobs s ON s.job_id = j.id "
            "WHERE s.sweep_id = %s AND j.started_at IS NOT NULL ORDER BY j.started_at",
            tune_id,
        )
        parts = [f"before the first job {(rows[0][1] - created).total_seconds():.2f} s"] if rows else []
        stage: list[Any] = []
        for role, started, ended, took in [*rows, ("stage", None, None, None)]:
            if role != "stage":
                stage.append((started, ended, took or 0.0))
                continue
            if stage:
                wall = (max(e for _, e, _ in stage) - min(s for s, _, _ in stage)).total_seconds()
                busy = sum(t for _, _, t in stage)
                parts.append(f"{len(stage)} jobs {wall:.2f} s (busy {busy / wall if wall else 0:.2f})")
            stage = []
        last = max((r[2] for r in rows if r[2] is not None), default=finished)
        parts.append(f"after the last {(finished - last).total_seconds():.2f} s")
        return "; ".join(parts)

    def empty(self) -> None:
        """Every table but the workers' and Alembic's emptied, and the artifacts: nothing is reused by key."""
        import psycopg

        tables = [t for (t,) in self.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        left = [t for t in tables if t not in ("alembic_version", "workers")]
        for _ in range(len(left)):  # a table others refer to empties once they have (TRUNCATE would take workers too)
            for table in list(left):
                try:
                    self.query(f"DELETE FROM {table}")
                    left.remove(table)
                except psycopg.errors.ForeignKeyViolation:
                    continue
        if left:
            raise SystemExit(f"could not empty {', '.join(left)}")
        shutil.rmtree(self.root / "artifacts", ignore_errors=True)

    def close(self) -> None:
        import psycopg

        self.stop()
        self.redis.flushdb()
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--keep", help="keep the workers' logs and artifacts in this (new) directory")
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    from farm.quant.fingerprint import fingerprint, hardware_label

    hw = hardware_label(fingerprint("cpu"))

    def say(text: str) -> None:
        print(f"{text}  [{hw}]", flush=True)

    if args.keep:
        Path(args.keep).mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="farm-bench-tune-farm-") as tmp:
        farm = Farm(args, Path(args.keep or tmp))
        ratios: list[float] = []
        try:
            for n in range(args.pairs):
                walls: dict[int, float] = {}
                for c in (1, 2) if n % 2 == 0 else (2, 1):
                    farm.start(c)
                    warm = farm.search(["--min-metric", "-1"], "--good-enough")  # stage 1: the workers load all
                    best = max(e["sqnr_db"] for e in warm["trail"] if e["stage"] == "global" and not e["fp32"]
                               and e.get("sqnr_db") is not None)  # fmt: skip
                    goal = round(best + 2.0, 2)
                    farm.empty()
                    timed = farm.search(["--min-metric", str(goal)])
                    farm.stop()
                    say(f"pair {n + 1} -c {c}: {farm.where(timed['tune_id'])}")
                    chosen = timed.get("chosen") or {}
                    walls[c] = timed["wall"]
                    say(
                        f"pair {n + 1} -c {c}: {timed['wall']:.1f} s, {timed['jobs']} jobs, {timed['state']}, "
                        f"target sqnr_db >= {goal}: {chosen.get('recipe')} on {chosen.get('runtime')} "
                        f"({chosen.get('sqnr_db')}), met {timed['met']}"
                    )
                    farm.empty()
                ratios.append(walls[2] / walls[1])
        finally:
            farm.close()
    median = statistics.median(ratios)
    verdict = "PASS" if median <= WALL_TARGET else "MISS"
    say(
        f"{verdict}  (farm wall) -c 2 / -c 1 <= {WALL_TARGET}: median {median:.2f} over {len(ratios)} pairs "
        f"({', '.join(f'{r:.2f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
