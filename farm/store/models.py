"""The results database: SQLAlchemy 2.x models. Alembic migrations in migrations/ must match these exactly.

A job is unique by its key (sha256 of its canonical spec) across the whole database, so a job that
succeeded once is reused by every later sweep that asks for the same thing; ``sweep_jobs`` links sweeps
to the jobs they include. The database is the source of truth for every job's state.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from farm.jobs.policy import FINISHED_STATES, UNFINISHED_STATES

# Deterministic constraint names: migrations can drop what they created, on SQLite and PostgreSQL alike.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JOB_STATES = UNFINISHED_STATES + FINISHED_STATES
SWEEP_STATES = ("pending", "running", "succeeded", "failed", "cancelled")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Sweep(Base):
    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    spec_text: Mapped[str] = mapped_column(Text)
    spec_hash: Mapped[str] = mapped_column(String(64), index=True)
    submitter: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    jobs: Mapped[list[Job]] = relationship(secondary="sweep_jobs", back_populates="sweeps", viewonly=True)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    #: The sweep that first created the job (later sweeps that reuse it are linked via sweep_jobs).
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id", ondelete="SET NULL"), index=True)
    #: "reference" for the fp32 job every other job of the same model is compared with, "stage" for a job that adds
    #: the next stage's jobs from its dependencies' results (farm.jobs.stages), else "trial".
    role: Mapped[str] = mapped_column(String(16), default="trial")
    reference_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    model: Mapped[str] = mapped_column(String(500))
    dataset: Mapped[str] = mapped_column(String(500))
    method: Mapped[str] = mapped_column(String(32))
    bits: Mapped[int | None] = mapped_column(Integer)
    calibration_size: Mapped[int | None] = mapped_column(Integer)
    backend: Mapped[str | None] = mapped_column(String(16))
    observer: Mapped[str | None] = mapped_column(String(32))
    granularity: Mapped[str | None] = mapped_column(String(16))
    #: The method and its non-default parameters in a few words (farm.quant.recipe), written when the job is created.
    recipe: Mapped[str | None] = mapped_column(String(200))
    #: The deploy runtime (torch, onnxruntime, openvino, tensorrt: farm.runtimes.registry); NULL: torch (rows from
    #: before migration 0007).
    runtime: Mapped[str | None] = mapped_column(String(32))
    device: Mapped[str] = mapped_column(String(16))
    #: The queue the job's next message goes to ("cpu", "gpu", or a named pool such as "cpu-avx512").
    queue: Mapped[str | None] = mapped_column(String(64))
    #: "all" runs the whole job; a QAT job fine-tuned on a GPU runs as "train" (gpu queue), then "finish"
    #: (convert + evaluate + benchmark on ``finish_queue``), the checkpoint passing through the artifact store.
    stage: Mapped[str] = mapped_column(String(16), default="all", server_default="all")
    finish_queue: Mapped[str | None] = mapped_column(String(64))
    #: The job's full spec (farm.jobs.contract.JobSpec.to_dict()), the payload a worker runs.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    #: Claims of the job (each retry of a transient error is one more).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Claims that ended with the worker gone (lease ran out, pool process died); FARM_MAX_ATTEMPTS bounds these.
    worker_losses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    hardware: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: A running job whose lease has expired may be claimed again (its worker died).
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration_s: Mapped[float | None] = mapped_column(Float)

    sweeps: Mapped[list[Sweep]] = relationship(secondary="sweep_jobs", back_populates="jobs", viewonly=True)
    metrics: Mapped[list[Metric]] = relationship(back_populates="job", cascade="all, delete-orphan")
    artifacts: Mapped[list[Artifact]] = relationship(back_populates="job", cascade="all, delete-orphan")

    __table_args__ = (
        Index("ix_jobs_model_method", "model", "method"),
        Index("ix_jobs_finished_at", "finished_at"),
    )


class SweepJob(Base):
    __tablename__ = "sweep_jobs"

    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True, index=True)


class JobDependency(Base):
    """A job waits for another: it is runnable once every job it depends on succeeded (farm.jobs.policy).

    The scheduling truth (migration 0005): a trial depends on its fp32 reference (``jobs.reference_job_id`` still
    says which reference it compares with), a stage job on the jobs whose results it reads.
    """

    __tablename__ = "job_dependencies"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    depends_on_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True, index=True)


class Metric(Base):
    """One row per job and batch size: the job-wide figures repeat on each of its batch-size rows."""

    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    batch_size: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float | None] = mapped_column(Float)
    accuracy_fp32: Mapped[float | None] = mapped_column(Float)
    #: accuracy_fp32 - accuracy, stored (not computed by the view) so that it can be indexed.
    accuracy_drop: Mapped[float | None] = mapped_column(Float)
    top5: Mapped[float | None] = mapped_column(Float)
    agreement: Mapped[float | None] = mapped_column(Float)
    sqnr_db: Mapped[float | None] = mapped_column(Float)
    cosine: Mapped[float | None] = mapped_column(Float)
    #: "ok", "degenerate_reference", "collapsed" or "nan" (farm.quant.metrics); NULL before migration 0006.
    health: Mapped[str | None] = mapped_column(String(24))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    size_fp32_bytes: Mapped[int | None] = mapped_column(BigInteger)
    size_ratio: Mapped[float | None] = mapped_column(Float)
    coverage: Mapped[float | None] = mapped_column(Float)
    coverage_macs: Mapped[float | None] = mapped_column(Float)
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    latency_p50_ms: Mapped[float | None] = mapped_column(Float)
    #: The 95 % confidence interval of the median latency (order statistics).
    latency_p50_ci_low_ms: Mapped[float | None] = mapped_column(Float)
    latency_p50_ci_high_ms: Mapped[float | None] = mapped_column(Float)
    latency_p90_ms: Mapped[float | None] = mapped_column(Float)
    latency_p99_ms: Mapped[float | None] = mapped_column(Float)
    throughput: Mapped[float | None] = mapped_column(Float)
    #: fp32 reference p50 / this p50, same batch size and hardware; NULL for simulated figures.
    speedup: Mapped[float | None] = mapped_column(Float)
    #: The 95 % bootstrap interval of the side-by-side speedup.
    speedup_ci_low: Mapped[float | None] = mapped_column(Float)
    speedup_ci_high: Mapped[float | None] = mapped_column(Float)
    #: How the timing was isolated from other work on the host: "exclusive", "pinned" or "none".
    isolation: Mapped[str | None] = mapped_column(String(16))
    #: The runtime package's version (onnxruntime 1.20.1, ...) and the execution provider that ran the model;
    #: NULL where the result names none (rows from before migration 0007).
    runtime_version: Mapped[str | None] = mapped_column(String(64))
    execution_provider: Mapped[str | None] = mapped_column(String(64))
    #: The sweep's own metric function (``entrypoint:pkg.mod:fn``) and its value on the test split; NULL without
    #: one (and for rows from before migration 0008).
    metric_name: Mapped[str | None] = mapped_column(String(500))
    metric_value: Mapped[float | None] = mapped_column(Float)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    hardware_id: Mapped[str | None] = mapped_column(String(32))
    #: Everything else the engine reported: spread, timings, warnings, fingerprint, ...
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    job: Mapped[Job] = relationship(back_populates="metrics")

    __table_args__ = (
        UniqueConstraint("job_id", "batch_size", name="uq_metrics_job_id_batch_size"),
        Index("ix_metrics_latency_p50_ms", "latency_p50_ms"),
        Index("ix_metrics_accuracy", "accuracy"),
        # What analysts sort by (migration 0003): farm.store.results walks these instead of sorting every row.
        *(
            Index(f"ix_metrics_{c}", c)
            for c in (
                "accuracy_drop",
                "agreement",
                "sqnr_db",
                "size_bytes",
                "size_ratio",
                "latency_p90_ms",
                "latency_p99_ms",
                "throughput",
                "speedup",
                "coverage",
            )
        ),
    )


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    #: "model", "manifest", "reference" (fp32 outputs) or "checkpoint" (QAT hand-off between workers).
    kind: Mapped[str] = mapped_column(String(32))
    uri: Mapped[str] = mapped_column(String(1000))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    job: Mapped[Job] = relationship(back_populates="artifacts")

    __table_args__ = (UniqueConstraint("job_id", "kind", name="uq_artifacts_job_id_kind"),)


class Worker(Base):
    """A worker process that runs jobs; it heartbeats here while it lives."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[Any]] = mapped_column(JSON)
    #: CUDA devices, quantized engines, ISA flags, torch version, ...
    capabilities: Mapped[dict[str, Any]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_heartbeat: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    current_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    #: "idle", "busy" or "stopped" (a clean exit); a worker whose heartbeat is old is dead whatever this says.
    state: Mapped[str] = mapped_column(String(16), default="idle")
