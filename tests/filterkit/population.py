"""A small population of results for the filter tests, written through the real schema, and the rows the view
results_flat must give for it, computed here the way docs/schema.md defines them (accuracy_drop, speedup).

NULLs, ties, negative numbers, zero latencies, a job in two sweeps, a job in none, and strings with quotes,
``%``, ``_``, backslashes, GLOB's ``*?[``, mixed case and non-ASCII letters.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from farm.store.db import Database
from farm.store.models import Artifact, Job, Metric, Sweep, SweepJob
from farm.store.results import recompute_stored_figures

UTC = timezone.utc
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
T1 = datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)
T2 = datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
T3 = datetime(2026, 6, 1, tzinfo=UTC)

#: The kinds the grammar gives each column of results_flat, written out again here (the spec, not the code).
KINDS: dict[str, str] = {
    name: kind
    for kind, names in {
        "int": "sweep_id job_id bits calibration_size batch_size size_bytes",
        "float": "accuracy accuracy_fp32 accuracy_drop agreement sqnr_db cosine size_ratio latency_p50_ms "
        "latency_p50_ci_low_ms latency_p50_ci_high_ms latency_p90_ms latency_p99_ms throughput speedup "
        "speedup_ci_low speedup_ci_high speedup_vs_best_fp32 coverage duration_s metric_value",
        "bool": "simulated",
        "datetime": "finished_at",
        "text": "sweep_name job_key model dataset method recipe backend observer granularity device runtime split "
        "state health isolation runtime_version execution_provider artifact_uri worker hardware error metric_name",
        "json": "params",
    }.items()
    for name in names.split()
}
#: Columns of results_flat the population leaves NULL on every row (figures added by migrations 0006 to 0008).
ALWAYS_NULL = (
    "recipe health cosine latency_p50_ci_low_ms latency_p50_ci_high_ms speedup_ci_low speedup_ci_high isolation params "
    "runtime_version execution_provider metric_name metric_value"
).split()

SWEEPS = {1: "alpha", 2: "beta's 50%_off"}

# Jobs: their fields, the sweeps that include them, their fp32 reference (by key), metrics and model artifact.
JOBS: list[dict[str, Any]] = [
    dict(key="ref", sweeps=(1, 2), role="reference", model="resnet", method="fp32", worker="w1",
         hardware="Xeon [avx2]", duration_s=2.5, finished_at=T0, artifact="file:///art/ref.pt",
         metrics=[dict(batch_size=1, accuracy=0.9, accuracy_fp32=0.9, latency_p50_ms=10.0, latency_p90_ms=11.0,
                       latency_p99_ms=12.5, throughput=100.0, size_bytes=4_000_000, size_ratio=1.0,
                       coverage=0.0, hardware_id="h1"),
                  dict(batch_size=8, accuracy=0.9, accuracy_fp32=0.9, latency_p50_ms=40.0, hardware_id="h1")]),
    dict(key="s8", sweeps=(1,), ref="ref", model="resnet", method="static", bits=8, calibration_size=128,
         backend="x86", observer="minmax", granularity="per_channel", worker="w2", finished_at=T1,
         duration_s=0.001, artifact="file:///art/it's 50%.pt",
         metrics=[dict(batch_size=1, accuracy=0.85, accuracy_fp32=0.9, agreement=0.97, sqnr_db=31.25,
                       latency_p50_ms=4.0, latency_p90_ms=4.0, throughput=250.0, coverage=0.95,
                       size_bytes=1_000_000, size_ratio=0.25, hardware_id="h1"),
                  dict(batch_size=8, accuracy=0.85, accuracy_fp32=0.9, latency_p50_ms=16.0, hardware_id="h2")]),
    dict(key="S4", sweeps=(1,), ref="ref", model="ResNet", method="Static", bits=4, calibration_size=0,
         observer="", granularity="per_tensor", finished_at=T2,
         metrics=[dict(batch_size=1, accuracy=0.85, accuracy_fp32=0.9, simulated=True, latency_p50_ms=9.0,
                       sqnr_db=-3.5, hardware_id="h1")]),
    dict(key="dyn", sweeps=(2,), ref="ref", model="it's", method="dynamic", bits=8, backend="qnnpack",
         finished_at=T0, worker="w2",
         metrics=[dict(batch_size=1, accuracy=0.0, accuracy_fp32=0.9, latency_p50_ms=0.0, agreement=-0.25,
                       hardware_id="h1")]),
    dict(key="pct", sweeps=(1, 2), model="50%_off", method="a_b", bits=-1, state="failed",
         error="can't; DROP TABLE jobs; --", worker="w'3"),
    dict(key="bsl", sweeps=(2,), model="a\\b", method="x*y", bits=2, calibration_size=1024, backend="q?[z]",
         state="running", device="cuda", hardware="Ärger \"quoted\""),
    dict(key="uni", sweeps=(1,), model="résumé", method="RÉSUMÉ", dataset="data_set%", bits=None,
         finished_at=T3, duration_s=-1.5,
         metrics=[dict(batch_size=4, accuracy=0.5, latency_p50_ms=0.001, size_bytes=5_000_000_000,
                       throughput=-2.0)]),
    dict(key="nul", sweeps=(2,), model="", method="static", observer="MinMax",
         metrics=[dict(batch_size=1)]),
    dict(key="vref", sweeps=(1,), role="reference", model="vit", method="fp32", finished_at=T1,
         metrics=[dict(batch_size=1, accuracy=0.75, accuracy_fp32=0.75, latency_p50_ms=7.5, hardware_id="h1"),
                  dict(batch_size=2, accuracy=0.75, accuracy_fp32=0.75, latency_p50_ms=3.0, hardware_id="h1")]),
    dict(key="vq", sweeps=(1, 2), ref="vref", model="vit", method="static", bits=8, observer="histogram",
         granularity="per_channel", finished_at=T1, artifact="file:///art/vq.pt",
         metrics=[dict(batch_size=1, accuracy=0.8, accuracy_fp32=0.75, latency_p50_ms=2.5, latency_p90_ms=2.5,
                       hardware_id="h1", sqnr_db=0.0, coverage=1.0),
                  dict(batch_size=2, accuracy=0.8, accuracy_fp32=0.75, latency_p50_ms=6.0, hardware_id="h1")]),
    dict(key="orphan", sweeps=(), ref="ref", model="resnet", method="static",
         metrics=[dict(batch_size=1, accuracy=0.1, latency_p50_ms=1.0, hardware_id="h1")]),
]  # fmt: skip

_JOB_DEFAULTS: dict[str, Any] = dict(
    model=None, method=None, role="trial",
    dataset="builtin:digits", device="cpu", state="succeeded", bits=None, calibration_size=None,
    backend=None, observer=None, granularity=None, worker=None, hardware=None, duration_s=None, finished_at=None,
    error=None,
)  # fmt: skip
_METRIC_FIGURES = (
    "accuracy", "accuracy_fp32", "agreement", "sqnr_db", "size_bytes", "size_ratio", "latency_p50_ms",
    "latency_p90_ms", "latency_p99_ms", "throughput", "coverage",
)  # fmt: skip
_JOB_FIELDS = tuple(_JOB_DEFAULTS)


def _job_key(key: str) -> str:
    return (key * 64)[:64]


def seed_population(db: Database) -> dict[str, int]:
    """Write the population (the database must be migrated and empty). Returns job ids by population key."""
    ids: dict[str, int] = {}
    with db.session(write=True) as s:
        for sweep_id, name in SWEEPS.items():
            s.add(Sweep(id=sweep_id, name=name, spec_text="{}", spec_hash="0" * 64, created_at=T0, state="running"))
        s.flush()
        for spec in JOBS:
            fields = {f: spec.get(f, _JOB_DEFAULTS[f]) for f in _JOB_FIELDS}
            ref = ids[spec["ref"]] if "ref" in spec else None
            job = Job(key=_job_key(spec["key"]), spec={}, created_at=T0, reference_job_id=ref, **fields)
            s.add(job)
            s.flush()
            ids[spec["key"]] = job.id
            for m in spec.get("metrics", []):
                s.add(Metric(job_id=job.id, simulated=m.get("simulated", False), extra={}, **_metric_fields(m)))
            if "artifact" in spec:
                s.add(Artifact(job_id=job.id, kind="model", uri=spec["artifact"], sha256="0" * 64, size_bytes=1,
                               created_at=T0))  # fmt: skip
                s.add(Artifact(job_id=job.id, kind="manifest", uri="file:///manifest", sha256="1" * 64,
                               size_bytes=1, created_at=T0))  # fmt: skip
            for sweep_id in spec["sweeps"]:
                s.add(SweepJob(sweep_id=sweep_id, job_id=job.id))
        s.flush()
        recompute_stored_figures(s)  # what workers store with each result
    return ids


def _metric_fields(m: dict[str, Any]) -> dict[str, Any]:
    return {"batch_size": m["batch_size"], "hardware_id": m.get("hardware_id")} | {f: m.get(f) for f in _METRIC_FIGURES}


def expected_rows(ids: dict[str, int]) -> list[dict[str, Any]]:
    """The rows results_flat must give for the population, computed the way docs/schema.md defines them."""
    by_key = {spec["key"]: spec for spec in JOBS}
    rows = []
    for spec in JOBS:
        for sweep_id in spec["sweeps"]:
            ref = by_key[spec.get("ref", spec["key"])]
            for m in spec.get("metrics") or [None]:
                rows.append(_view_row(sweep_id, ids[spec["key"]], spec, m, ref))
    return rows


def _view_row(sweep_id: int, job_id: int, spec: dict[str, Any], m: dict[str, Any] | None, ref: dict[str, Any]):
    m_ = m or {}
    row: dict[str, Any] = {f: spec.get(f, _JOB_DEFAULTS[f]) for f in _JOB_FIELDS if f in KINDS}
    row |= {f: m_.get(f) for f in _METRIC_FIGURES}
    acc, fp32, lat = m_.get("accuracy"), m_.get("accuracy_fp32"), m_.get("latency_p50_ms")
    simulated = m_.get("simulated", False) if m is not None else None
    match = [
        r
        for r in ref.get("metrics", [])
        if m is not None
        and r["batch_size"] == m["batch_size"]
        and r.get("hardware_id") is not None
        and r.get("hardware_id") == m.get("hardware_id")
    ]
    ref_lat = match[0].get("latency_p50_ms") if match else None
    speedup = None if simulated or lat is None or ref_lat is None or lat == 0 else ref_lat / lat
    row |= dict.fromkeys(ALWAYS_NULL)
    row |= dict(
        sweep_id=sweep_id,
        sweep_name=SWEEPS[sweep_id],
        job_id=job_id,
        job_key=_job_key(spec["key"]),
        batch_size=m_.get("batch_size"),
        accuracy_drop=None if acc is None or fp32 is None else fp32 - acc,
        speedup=speedup,
        speedup_vs_best_fp32=_vs_best_fp32(spec, m, simulated),
        runtime="torch",  # jobs.runtime NULL: a job from before runtimes, read as torch
        split="test",  # no split in the job spec: the test split
        simulated=simulated,
        artifact_uri=spec.get("artifact"),
    )
    return row


def _vs_best_fp32(spec: dict[str, Any], m: dict[str, Any] | None, simulated: bool | None) -> float | None:
    """The fastest p50 of a succeeded fp32 job of the same model and dataset, at the same batch size on the same
    hardware (any runtime, any sweep or none), over this row's p50; None without one, when simulated or p50 <= 0."""
    lat = None if m is None else m.get("latency_p50_ms")
    if m is None or simulated or lat is None or lat <= 0:
        return None

    def field(job: dict[str, Any], name: str) -> Any:
        return job.get(name, _JOB_DEFAULTS[name])

    fp32 = [
        r["latency_p50_ms"]
        for job in JOBS
        if job.get("method") == "fp32"
        and field(job, "state") == "succeeded"
        and (field(job, "model"), field(job, "dataset")) == (field(spec, "model"), field(spec, "dataset"))
        for r in job.get("metrics", [])
        if r["batch_size"] == m["batch_size"]
        and r.get("hardware_id") is not None
        and r.get("hardware_id") == m.get("hardware_id")
        and (r.get("latency_p50_ms") or 0) > 0
    ]
    return min(fp32) / lat if fp32 else None
