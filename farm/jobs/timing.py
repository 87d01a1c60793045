"""The two wrappers every step of a job runs in: a timed step (the job's timings and progress display) and a
seeded one (torch's random state, restored afterwards), which :mod:`farm.jobs.steps` re-exports; and the job's
side of the host's drift history (:func:`allow_for_drift`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from farm.jobs.contract import ENGINE_VERSION
from farm.quant.measure import ProgressFn

if TYPE_CHECKING:
    from farm.jobs.contract import JobSpec
    from farm.quant.drift import DriftKey


@contextlib.contextmanager
def timed_step(name: str, timings: dict[str, float], report: ProgressFn) -> Iterator[None]:
    """Time a step into ``timings[name]`` and report its start and end (the progress display, the job's timings)."""
    report(name, 0.0)
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - started
    report(name, 1.0)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch for the steps inside, leaving the caller's random state as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def drift_key(spec: JobSpec, device: str, hardware_id: str | None, batch_size: int, *, paired: bool = True) -> DriftKey:
    """The drift history's key of ``spec``'s fp32 baseline at ``batch_size`` on this host: its p50s are comparable
    from job to job (same model, weights, inputs, batch, threads, device, runtime and isolation, and timed the same
    way: ``paired`` alternating with a trial, else alone as the fp32 job times it; a steady offset between the two
    is no drift)."""
    from farm.quant.drift import FP32_ALONE, FP32_BASELINE, DriftKey
    from farm.runtimes.engine import runtime_of

    provider = spec.method.params().get("provider")
    return DriftKey(
        hardware_id=hardware_id,
        model=spec.model,
        weights=spec.weights,
        dataset=spec.dataset,
        batch_size=batch_size,
        threads=spec.benchmark.threads,
        device=device,
        runtime=runtime_of(spec.method),
        provider=str(provider) if provider is not None else None,
        isolation=spec.benchmark.isolation,
        timed=FP32_BASELINE if paired else FP32_ALONE,
        engine_version=ENGINE_VERSION,
    )


def allow_for_drift(
    latency: list[dict[str, Any]], spec: JobSpec, device: str, hardware_id: str | None, *, fp32_timed_here: bool
) -> list[dict[str, Any]]:
    """Record this job's fp32 p50s in the host's drift history (not those timed on a busy host:
    :func:`farm.quant.hostload.crowded`), then widen every p50 interval by the host's
    run-to-run spread (:func:`farm.quant.drift.allow_for_drift`); the history never fails a job.

    Args:
        latency: the job's latency entries, one per batch size.
        spec, device, hardware_id: whose history (:func:`drift_key`).
        fp32_timed_here: the entries' own p50s are fp32 timed by this job (the fp32 job that computed its reference,
            a runtime's fp32 job), and are recorded; a trial records its side-by-side ``baseline_p50_ms`` instead.

    Returns:
        New entries with ``drift_rel``, ``drift_n``, ``drift_from`` and the widened interval.
    """
    from farm.quant.drift import History
    from farm.quant.drift import allow_for_drift as widen
    from farm.quant.hostload import crowded

    history = History()
    out = []
    for lat in latency:
        fp32_p50 = lat.get("baseline_p50_ms")
        paired = fp32_p50 is not None
        if fp32_p50 is None and fp32_timed_here:
            fp32_p50 = lat.get("latency_p50_ms")
        key = drift_key(spec, device, hardware_id, lat["batch_size"], paired=paired)
        if fp32_p50 is not None and not crowded(lat):  # a crowded run measured its neighbours, not the host's drift
            history.record(key, fp32_p50)
        spread = history.spread(key)
        out.append(widen(lat, spread.rel, spread.n, spread.source))
    return out
