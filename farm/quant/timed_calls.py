"""One batch size's timing in a job: the calls timed (the trial, its side-by-side fp32 baseline, the eager fp32
form, the rival runtimes' fp32 exports) and the latency entry they give (:func:`time_batch`).

:func:`farm.quant.measure.benchmark` builds a :class:`Calls` per batch size and times it under the job's isolation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

from farm.quant.bench_config import BenchmarkConfig
from farm.quant.isolation import Measured
from farm.quant.reference import Baseline


@dataclasses.dataclass(frozen=True)
class Calls:
    """One batch's forward calls: the trial, its side-by-side fp32 baseline (None: timed alone), the eager fp32 form
    (timed by the fp32 job only: a figure of fp32, not of a trial, which re-timing in every trial cost the host
    exclusive time for nothing; None elsewhere) and the rivals (other runtimes' fp32 exports, by runtime, each
    timed side by side with the trial in the same interleaved loop as its own baseline; ``benchmark.rivals``);
    ``fp32_deployed_as`` is None when no fp32 figure goes with the trial's (no baseline, or a simulated trial)."""

    trial: Callable[[], object]
    base: Callable[[], object] | None
    eager: Callable[[], object] | None
    fp32_deployed_as: str | None
    rivals: tuple[tuple[str, Callable[[], object]], ...] = ()

    def __post_init__(self) -> None:
        if self.rivals and self.base is None:  # they are timed in the baseline's loop: alone they would go untimed
            raise ValueError("rivals are timed beside the trial's own fp32 baseline, and there is none")

    @staticmethod
    def of(outcome: Any, batch: Any, baseline: Baseline | None, rivals: Sequence[tuple[str, Any]] = ()) -> Calls:
        def call(model: Any) -> Callable[[], object]:
            served = model.as_loaded()  # a fresh TorchScript executor: this job's other calls had other shapes
            return functools.partial(served.forward, served.prepare_input(batch))

        if baseline is None or outcome.simulated:
            return Calls(call(outcome), None, None, None)
        own = baseline.deployed is outcome  # the fp32 job: timed alone, and it times the eager form too
        return Calls(
            trial=call(outcome),
            base=None if own else call(baseline.deployed),
            eager=call(baseline.eager) if own and baseline.eager is not None else None,
            fp32_deployed_as=baseline.deployed_as,
            rivals=() if own else tuple((name, call(model)) for name, model in rivals),
        )

    def all(self) -> list[Callable[[], object]]:
        return [fn for fn in (self.trial, self.base, self.eager, *(fn for _, fn in self.rivals)) if fn is not None]


def time_batch(
    calls: Calls,
    device: str,
    batch_size: int,
    cfg: BenchmarkConfig,
    isolated: Measured,
) -> dict[str, Any]:
    """One batch size's latency entry: alone, or beside the fp32 baseline (with its speedup) and the rivals (their
    side-by-side speedups under ``rivals``) in one interleaved loop (:func:`farm.quant.side_by_side.measure_group`),
    held as ``isolated``."""
    from farm.quant.latency import LatencySettings, measure_latency
    from farm.quant.side_by_side import measure_group

    settings = LatencySettings(
        warmup_s=cfg.warmup_s, max_time_s=cfg.max_time_s, min_reps=cfg.min_reps, rel_tol=cfg.rel_tol
    )
    how: dict[str, Any] = {"device": device, "settings": settings, "busy": isolated.busy}
    how.update(should_stop=isolated.poll, paused=_since(isolated.waited))
    if calls.base is not None:  # beside its own fp32 and the rivals' in one interleaved loop
        own, *rivals = measure_group(calls.trial, [calls.base, *(fn for _, fn in calls.rivals)], batch_size, **how)
        entry = own.entry()
        if calls.rivals:
            entry["rivals"] = [_rival(name, pair) for (name, _), pair in zip(calls.rivals, rivals, strict=True)]
    else:
        entry = measure_latency(calls.trial, batch_size, **how).to_dict()
    if calls.fp32_deployed_as is not None:
        entry["fp32_deployed_as"] = calls.fp32_deployed_as
        entry["fp32_eager_p50_ms"] = None
        if calls.eager is not None:
            # Informative only (what skipping TorchScript costs; never a speedup's base): half the budget, few reps.
            how["settings"] = dataclasses.replace(settings, max_time_s=settings.max_time_s / 2, min_reps=6)
            how["paused"] = _since(isolated.waited)
            entry["fp32_eager_p50_ms"] = measure_latency(calls.eager, batch_size, **how).latency_p50_ms
    return entry


def _since(waited: Callable[[], float]) -> Callable[[], float]:
    """The seconds ``waited`` adds from now on: each measurement leaves out of its budget the waits inside it."""
    start = waited()
    return lambda: waited() - start


def _rival(runtime: str, pair: Any) -> dict[str, Any]:
    """A rival's figures in a trial's latency entry: its fp32 p50 and the trial's speedup over it, side by side (the
    trial's p50 and blocks are its own entry's: one loop timed them all)."""
    return {
        "runtime": runtime,
        "fp32_p50_ms": pair.baseline.latency_p50_ms,
        "p50_ms": pair.trial.latency_p50_ms,
        "speedup": pair.speedup,
        "speedup_ci_low": pair.speedup_ci_low,
        "speedup_ci_high": pair.speedup_ci_high,
        "stable": pair.trial.stable and pair.baseline.stable,
        "blocks": pair.blocks,
    }
