"""What a spec expands into: planned jobs with deterministic keys, and the plan that holds them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from farm.jobs.contract import ENGINE_VERSION, JobSpec
from farm.quant.config import MethodConfig

if TYPE_CHECKING:
    from farm.spec.schema import SweepSpec


@dataclass(frozen=True)
class PlannedJob:
    """One job of an expanded sweep.

    Attributes:
        key: sha256 of the job's canonical JSON; equal jobs have equal keys in every process.
        role: "reference" for an fp32 job others compare with, "trial" otherwise.
        spec: what the worker runs.
        device: where it is evaluated and timed.
        reference_key: the key of the fp32 job this one compares with (None for references).
        depends_on: keys of the jobs it waits for besides its reference (a stage job waits for those whose
            results it reads); the store writes them, with the reference, as the job's dependencies.
    """

    key: str
    role: str
    spec: JobSpec
    device: str
    weights_digest: str | None
    reference_key: str | None
    depends_on: tuple[str, ...] = ()

    def payload(self) -> dict[str, Any]:
        """What the jobs table stores as the job's spec (the worker's payload)."""
        return self.spec.to_dict()

    @property
    def method(self) -> MethodConfig:
        return self.spec.method

    def columns(self) -> dict[str, Any]:
        """The typed parameter columns of the jobs table."""
        p = self.spec.method.params()
        return {
            "model": self.spec.model,
            "dataset": self.spec.dataset,
            "method": self.spec.method.method,
            "bits": p.get("bits"),
            "calibration_size": p.get("calibration_size"),
            "backend": p.get("backend"),
            "observer": p.get("observer"),
            "granularity": p.get("granularity"),
            "runtime": self.spec.method.runtime,
            "device": self.device,
        }


@dataclass
class Plan:
    """An expanded sweep: its jobs (references first) and notes for the reader."""

    spec: SweepSpec
    text: str
    jobs: list[PlannedJob]
    notes: list[str] = field(default_factory=list)

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def references(self) -> list[PlannedJob]:
        return [j for j in self.jobs if j.role == "reference"]


def job_key(spec: JobSpec, weights_digest: str | None) -> str:
    """sha256 of a job's canonical JSON: model, weights digest, dataset, method config, seed, benchmark, engine
    (and the pool, output and a non-test split when set)."""
    payload: dict[str, Any] = {
        "model": spec.model,
        "weights": weights_digest,
        "dataset": spec.dataset,
        "method": spec.method.to_dict(),
        "seed": spec.seed,
        "benchmark": spec.benchmark.to_dict(),
        "engine_version": ENGINE_VERSION,
    }
    if spec.pool is not None:  # only named pools: local runs and the default farm pools share results
        payload["pool"] = spec.pool
    if spec.output is not None:  # only when chosen: keys of jobs that measure the default output are unchanged
        payload["output"] = spec.output
    if spec.split != "test":  # a validation-split job (farm tune's sensitivity) measures other samples
        payload["split"] = spec.split
    if spec.metric is not None:  # a job with a metric function measures one more figure
        payload["metric"] = spec.metric
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
