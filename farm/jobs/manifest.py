"""A job's ``manifest.json``: what was run (model, dataset, method, inputs), where, with which result, and for a
job on another runtime than torch, the runtime that ran it (version, execution provider, opset, exporter)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from farm.jobs.contract import ENGINE_VERSION, JobResult, JobSpec


def write_job_manifest(
    out_dir: Path,
    spec: JobSpec,
    result: JobResult,
    outcome: Any,
    example: Any,
    device: str,
    *,
    runtime: Any = None,
) -> None:
    """Write ``out_dir/manifest.json`` for a finished job.

    Args:
        outcome: the deployed model (a ``QuantOutcome``, or a runtime's session).
        example: one input batch, for the manifest's ``inputs``.
        runtime: a :class:`farm.jobs.runtime_job.RuntimeMeasured` for a job on another runtime than torch.
    """
    from farm.jobs.runtime_job import manifest_entries
    from farm.quant.artifact import write_manifest

    write_manifest(
        out_dir,
        {
            "model": spec.model,
            "dataset": spec.dataset,
            "weights": spec.weights,
            "method": spec.method.to_dict(),
            "label": spec.method.label(),
            "artifact": result.artifact,
            "quantized_engine": outcome.engine,
            "simulated": outcome.simulated,
            **input_entries(example, outcome.input_dtype),
            "device": device,
            "metrics": result.to_dict(),
            "fingerprint": result.fingerprint,
            "engine_version": ENGINE_VERSION,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(manifest_entries(result, runtime.info) if runtime is not None else {}),
        },
    )


def input_entries(example: Any, input_dtype: Any) -> dict[str, Any]:
    """The manifest's ``inputs`` (each input's name, shape and dtype as the model receives it) and, for a model of
    one tensor input, ``input`` as before."""
    from farm.quant.inputs import describe, place

    described = describe(place(example, "cpu", input_dtype))
    entries: dict[str, Any] = {"inputs": described}
    if len(described) == 1 and not isinstance(example, (tuple, dict)):
        entries["input"] = {"shape": described[0]["shape"], "dtype": described[0]["dtype"]}
    return entries
