"""Where a search's wall time went: every job of a local tune's database on one timeline, stage by stage.

Run:  python bench/tune.py --sections cnn,wall --keep DIR ...   then
      python bench/tune_timeline.py DIR/wall-0-j2/farm.db [DIR/wall-0-j1/farm.db ...]

For each database: one line per job in the order it started (seconds from the first start, duration, split,
isolation, runtime, recipe, and the job's step timings, ``benchmark`` included: under ``exclusive`` it holds the
wait for the host's measurement lock as well as the timing), then per stage its wall time and the sum of its jobs'
durations (their ratio is how many processes the stage kept busy on average). A stage is the jobs between two
stage jobs (role ``stage``), which is how a tune's job graph releases them. SQLite only (a local search).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from datetime import datetime
from typing import Any


def _t(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def timeline(path: str) -> None:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = db.execute(
        "SELECT j.id, j.role, j.runtime, j.recipe, j.spec, j.started_at, j.finished_at, j.duration_s, "
        "(SELECT extra FROM metrics m WHERE m.job_id = j.id LIMIT 1) FROM jobs j "
        "WHERE j.started_at IS NOT NULL ORDER BY j.started_at"
    ).fetchall()
    if not rows:
        print(f"{path}: no job has started")
        return
    t0 = min(_t(r[5]) or 0.0 for r in rows)
    print(f"== {path}")
    stages: list[dict[str, Any]] = [{"start": None, "end": 0.0, "busy": 0.0, "jobs": 0}]
    for job_id, role, runtime, recipe, spec, started, finished, duration, extra in rows:
        begin, end = (_t(started) or t0) - t0, (_t(finished) or t0) - t0
        if role == "stage":
            stages.append({"start": None, "end": 0.0, "busy": 0.0, "jobs": 0})
            continue
        spec = json.loads(spec) if isinstance(spec, str) else spec or {}
        steps = (json.loads(extra) if isinstance(extra, str) else extra or {}).get("timings_s", {})
        isolation = (spec.get("benchmark") or {}).get("isolation", "exclusive")
        stage = stages[-1]
        stage["start"] = begin if stage["start"] is None else min(stage["start"], begin)
        stage["end"], stage["busy"], stage["jobs"] = (
            max(stage["end"], end),
            stage["busy"] + (duration or 0.0),
            stage["jobs"] + 1,
        )
        named = " ".join(f"{k}={v:.2f}" for k, v in steps.items() if v >= 0.05)
        print(
            f"{job_id:4} {begin:6.1f} +{duration or 0.0:5.2f}s {spec.get('split', 'test'):10} {isolation:9} "
            f"{runtime or 'torch':11} {recipe or role}  [{named}]"
        )
    for i, s in enumerate(x for x in stages if x["jobs"]):
        wall = s["end"] - s["start"]
        print(
            f"stage {i + 1}: {s['jobs']} jobs, wall {wall:.1f} s, job time {s['busy']:.1f} s, "
            f"busy {s['busy'] / wall:.2f}"
        )


if __name__ == "__main__":
    for name in sys.argv[1:]:
        timeline(name)
