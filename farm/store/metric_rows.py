"""A job's result as rows of the ``metrics`` table: one row per batch size, the engine's figures in typed
columns and the rest in ``metrics.extra`` (what :func:`farm.store.lifecycle.finish_job` writes)."""

from __future__ import annotations

from typing import Any

# Engine figures that have typed columns in metrics; everything else goes to metrics.extra.
_JOB_FIGURES = (
    "accuracy",
    "accuracy_fp32",
    "accuracy_drop",
    "top5",
    "agreement",
    "sqnr_db",
    "cosine",
    "health",
    "size_bytes",
    "size_fp32_bytes",
    "size_ratio",
    "coverage",
    "coverage_macs",
    "peak_memory_bytes",
    "hardware_id",
    "runtime_version",
    "execution_provider",
)
_BATCH_FIGURES = (
    "latency_p50_ms",
    "latency_p50_ci_low_ms",
    "latency_p50_ci_high_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "throughput",
    "speedup",
    "speedup_ci_low",
    "speedup_ci_high",
    "isolation",
)
_EXTRA_JOB_KEYS = (
    "accuracy_kind",
    "top5_fp32",
    "size_kind",
    "coverage_layers",
    "coverage_layers_total",
    "peak_gpu_memory_bytes",
    "timings_s",
    "warnings",
    "fingerprint",
    "quantized_engine",
    "threads",
    "engine_version",
)


def metric_rows(job_id: int, result: dict[str, Any]) -> list[dict[str, Any]]:
    """One metrics row per batch size from a ``JobResult.to_dict()``."""
    job_part = {k: result.get(k) for k in _JOB_FIGURES}
    job_part["simulated"] = bool(result.get("simulated"))
    # The job's own metric function: JobResult names its value ``metric``, the table ``metric_value``.
    job_part["metric_name"] = result.get("metric_name")
    job_part["metric_value"] = result.get("metric")
    extra = {k: result.get(k) for k in _EXTRA_JOB_KEYS if result.get(k) is not None}
    rows = []
    for lat in result.get("latency") or []:
        batch = {k: lat.get(k) for k in _BATCH_FIGURES}
        spread = {k: v for k, v in lat.items() if k not in _BATCH_FIGURES and k != "batch_size"}
        rows.append(
            {
                "job_id": job_id,
                "batch_size": lat["batch_size"],
                **job_part,
                **batch,
                "extra": {**extra, "latency": spread},
            }
        )
    return rows
