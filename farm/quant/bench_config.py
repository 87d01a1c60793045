"""How a job measures latency: :class:`BenchmarkConfig` (batch sizes, threads, device, timing rules, isolation).

Standard library only, as :mod:`farm.quant.config`: the producer validates a spec's benchmark section with the
same rules the workers apply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from farm.errors import Problem

#: Bounds on the integers a job stores in its database row (32-bit columns) and that a machine can honour.
MAX_BATCH_SIZE = 1_000_000
MAX_THREADS = 1024
BENCH_DEVICES = ("auto", "cpu", "cuda")
ISOLATION_MODES = ("exclusive", "pinned", "none")


@dataclass(frozen=True)
class BenchmarkConfig:
    """How a job measures latency. ``device`` auto: cuda for fp16, cpu otherwise.

    Attributes:
        batch_sizes: one latency figure per batch size.
        threads: torch intra-op threads for the whole job (one per worker process by default).
        device: where the model is evaluated and timed.
        warmup_s: untimed warm-up per batch size.
        max_time_s: timed budget per model and batch size (a trial timed side by side with its fp32 baseline and n
            rivals gets n + 2 times this, each model its share); repetitions stop earlier once the figures settle.
        min_reps: repetitions before the median may be called stable; timing runs past ``max_time_s`` until it has
            them.
        rel_tol: the figures settle once the p50's 95 % interval (and a trial's speedup interval) lies within
            this fraction of it on both sides (farm.quant.latency).
        isolation: exclusive (lock + own cores), pinned (own cores; its timing holds the lock shared) or none;
            left out of to_dict at its default.
        rivals: other runtimes whose fp32 export the trial is also timed side by side with (in the same
            interleaved loop as its own runtime's fp32: ``latency[i]["rivals"]``), so "faster than fp32 on
            OpenVINO" rests on one process's alternating timing rather than on two jobs timed minutes apart; a
            tune's verify stage sets it to every other runtime whose fp32 may be the fastest. Left out of to_dict
            when empty.
    """

    batch_sizes: tuple[int, ...] = (1, 8)
    threads: int = 1
    device: str = "auto"
    warmup_s: float = 0.2
    max_time_s: float = 3.0
    min_reps: int = 20
    rel_tol: float = 0.02
    isolation: str = "exclusive"
    rivals: tuple[str, ...] = ()

    def problems(self) -> list[Problem]:
        out = []
        if not self.batch_sizes:
            out.append(Problem("batch_size", "at least one batch size is needed"))
        for b in self.batch_sizes:
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                out.append(Problem("batch_size", f"batch sizes must be positive integers, got {b!r}"))
            elif b > MAX_BATCH_SIZE:
                out.append(Problem("batch_size", f"batch sizes must be at most {MAX_BATCH_SIZE}, got {b!r}"))
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            out.append(Problem("batch_size", "batch sizes repeat"))
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or not 1 <= self.threads <= MAX_THREADS:
            out.append(Problem("threads", f"must be an integer from 1 to {MAX_THREADS}, got {self.threads!r}"))
        if self.device not in BENCH_DEVICES:
            out.append(Problem("device", f"{self.device!r} is not one of {', '.join(BENCH_DEVICES)}"))
        if self.warmup_s < 0 or self.max_time_s <= 0 or self.min_reps < 1 or not 0 < self.rel_tol < 1:
            out.append(Problem("", "warmup_s >= 0, max_time_s > 0, min_reps >= 1 and 0 < rel_tol < 1 are required"))
        if self.isolation not in ISOLATION_MODES:
            out.append(Problem("isolation", f"{self.isolation!r} is not one of {', '.join(ISOLATION_MODES)}"))
        out.extend(_rival_problems(self.rivals))
        return out

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["batch_sizes"] = list(self.batch_sizes)
        if self.isolation == "exclusive":
            del d["isolation"]
        if self.rivals:
            d["rivals"] = list(self.rivals)
        else:
            del d["rivals"]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchmarkConfig:
        d = dict(data)
        if "batch_sizes" in d:
            d["batch_sizes"] = tuple(d["batch_sizes"])
        if isinstance(d.get("rivals"), list | tuple):
            d["rivals"] = tuple(d["rivals"])
        elif isinstance(d.get("rivals"), str):
            d["rivals"] = (d["rivals"],)
        return cls(**d)


def _rival_problems(rivals: Any) -> list[Problem]:
    """A rival list's problems: runtime names (:data:`farm.runtimes.registry.RUNTIMES`), each once."""
    from farm.runtimes.registry import RUNTIMES

    if not isinstance(rivals, tuple) or not all(isinstance(r, str) for r in rivals):
        return [Problem("rivals", f"must be a list of runtime names, got {rivals!r}")]
    out = [Problem("rivals", f"{r!r} is not one of {', '.join(RUNTIMES)}") for r in rivals if r not in RUNTIMES]
    if len(set(rivals)) != len(rivals):
        out.append(Problem("rivals", "runtimes repeat"))
    return out
