"""The two wrappers every step of a job runs in: a timed step (the job's timings and progress display) and a
seeded one (torch's random state, restored afterwards). :mod:`farm.jobs.steps` re-exports both."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from farm.quant.measure import ProgressFn


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
