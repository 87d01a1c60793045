"""What the report shows of a tune (``farm tune``), read from its sweep's jobs: no HTML, no matplotlib.

A tune is a sweep whose spec has a ``tune:`` section (farm.jobs.tune_answer.settings_from_text tells, as
``farm tune status`` does). Its trail and its answer are farm.jobs.tune_answer's (one definition); the layer
ranking is farm.jobs.tune_stages.rank, the one the candidates stage used. This module adds what the charts need:
per runtime, what each layer's sensitivity job measured against the all-quantized recipe it started from, and
the fp32 latency of each runtime.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from farm.jobs.tune_answer import Answer, answer_of
from farm.jobs.tune_plan import TuneSettings, info
from farm.jobs.tune_stages import rank


@dataclass(frozen=True)
class TuneInput:
    """A tune as the report reads it.

    Attributes:
        settings: its ``tune:`` section.
        jobs: its sweep's jobs (farm.store.expansion.sweep_jobs: InputJob), stage jobs included.
        state: the sweep's state (a finished sweep's search is done even without its answer stage).
    """

    settings: TuneSettings
    jobs: Sequence[Any]
    state: str | None = None


@dataclass(frozen=True)
class LayerLoss:
    """One layer's sensitivity on one runtime.

    Attributes:
        name: the layer's qualified name.
        value: the target's figure with that layer alone kept in floating point (validation split); may be inf
            (an SQNR whose outputs matched fp32's).
        loss: how much worse the figure gets when the layer is quantized too: ``value`` against the all-quantized
            recipe's, signed so that positive means the layer hurts (an accuracy drop's sign is flipped).
        fallback: whether the chosen recipe keeps it in floating point.
    """

    name: str
    value: float
    loss: float
    fallback: bool


@dataclass(frozen=True)
class Sensitivity:
    """The sensitivity stage of one search line (a runtime; where the tune searched several methods, one of them on it).

    Attributes:
        runtime: the runtime, and the method where the tune searched several ("openvino (static)").
        recipe: the all-quantized recipe the layers fell back from (its label).
        base: the target's figure of that recipe (``base_split``); None when it was not measured.
        base_split: "validation" when the sweep measured it there, else "test" (the split of the global recipe).
        rung: what a fallen-back layer ran at: "fp32" (kept in floating point), or "int8" over a simulated base
            (farm.jobs.tune_jobs.rung).
        layers: the measured layers, most sensitive first (farm.jobs.tune_stages.rank's order).
        unmeasured: layers whose sensitivity job did not succeed, in model order.
    """

    runtime: str
    recipe: str
    base: float | None
    base_split: str
    layers: list[LayerLoss] = field(default_factory=list)
    unmeasured: list[str] = field(default_factory=list)
    rung: str = "fp32"

    def kept(self, fp: str = "kept in floating point") -> str:
        """How a fallen-back layer is put in words: ``fp`` ("kept in floating point"), or "at int8"."""
        return fp if self.rung == "fp32" else f"at {self.rung}"


@dataclass(frozen=True)
class TuneView:
    """Everything the tune sections draw.

    Attributes:
        settings: the tune's settings.
        answer: farm.jobs.tune_answer's answer (trail, chosen, shortfall, stages).
        sensitivities: one per runtime searched.
        fp32: per runtime, the figures of its fastest fp32 on the test split (the torch reference, the exported fp32
            elsewhere).
        figures: each job's figures by id (the chosen recipe's speedup interval).
        model: the model searched (its reference), where a job names it.
    """

    settings: TuneSettings
    answer: Answer
    sensitivities: list[Sensitivity]
    fp32: dict[str, Mapping[str, Any]]
    figures: dict[int, Mapping[str, Any]]
    model: str | None = None


def tune_view(tune: TuneInput) -> TuneView:
    """What the report draws of ``tune``.

    Args:
        tune: the tune's settings, jobs and sweep state.

    Returns:
        The view: answer and trail (farm.jobs.tune_answer), sensitivities per runtime, fp32 latencies.
    """
    answer = answer_of(tune.jobs, tune.settings, tune.state)
    chosen = answer.chosen
    lines = list(dict.fromkeys((e["runtime"], e["method"]) for e in answer.trail if e["stage"] == "sensitivity"))
    sensitivities = []
    for line in lines:
        ours = chosen is not None and (chosen["runtime"], chosen["method"]) == line
        fallback = set(chosen["fallback"]) if chosen is not None and ours else set()
        several = len({e["method"] for e in answer.trail if not e["fp32"]}) > 1  # the tune's methods, searched or not
        sensitivities.append(_sensitivity(tune.jobs, answer.trail, line, tune.settings, fallback, several))
    figures = {j.id: j.figures for j in tune.jobs if j.figures}
    model = next((str(j.spec["model"]) for j in tune.jobs if j.role != "stage" and j.spec.get("model")), None)
    return TuneView(tune.settings, answer, sensitivities, _fp32(tune.jobs), figures, model)


def better_sign(settings: TuneSettings) -> float:
    """+1 when a larger figure is better (every metric), -1 for an accuracy drop."""
    return -1.0 if settings.target.max_accuracy_drop is not None else 1.0


def target_value(settings: TuneSettings) -> float:
    """The target's threshold on the figure it is about (the metric's floor, or the accuracy budget)."""
    target = settings.target
    value = target.min_metric if target.max_accuracy_drop is None else target.max_accuracy_drop
    return math.nan if value is None else float(value)


def _sensitivity(
    jobs: Sequence[Any],
    trail: Sequence[Mapping[str, Any]],
    line: tuple[str, str],
    settings: TuneSettings,
    fallback: set[str],
    several: bool,
) -> Sensitivity:
    runtime, method = line
    probes = [
        e
        for e in trail
        if e["stage"] == "sensitivity" and (e["runtime"], e["method"]) == line and len(e["fallback"]) == 1
    ]
    names = list(dict.fromkeys(e["fallback"][0] for e in probes))
    values = {e["fallback"][0]: e["value"] for e in probes if e["state"] == "succeeded" and e["value"] is not None}
    granularity = _granularity(jobs, {e["job_id"] for e in probes})
    recipe, base, split = _base(jobs, trail, line, granularity)
    sign = better_sign(settings)
    layers = []
    for name in rank(jobs, runtime, names, settings, method):  # the candidates stage's order: most sensitive first
        if name not in values:
            continue
        value = values[name]
        loss = math.nan if base is None else sign * (value - base) + 0.0  # + 0.0: no "-0" on the chart
        layers.append(LayerLoss(name, value, loss, name in fallback))
    label = f"{runtime} ({method})" if several else runtime
    unmeasured = [n for n in names if n not in values]
    rung = next((str(e["fallback_to"]) for e in probes if e.get("fallback_to")), "fp32")
    return Sensitivity(label, recipe, base, split, layers, unmeasured, rung)


def _granularity(jobs: Sequence[Any], ids: set[int]) -> str | None:
    """The granularity of the recipe the sensitivity jobs started from (all of them share it)."""
    for job in jobs:
        if job.id in ids:
            return info(job)["granularity"]
    return None


def _base(
    jobs: Sequence[Any], trail: Sequence[Mapping[str, Any]], line: tuple[str, str], granularity: str | None
) -> tuple[str, float | None, str]:
    """(label, figure, split) of the all-quantized recipe the sensitivity jobs fell layers back from: measured on
    the validation split where the sweep has it, else the global recipe on the test split."""
    grains = {j.id: info(j)["granularity"] for j in jobs if j.role == "trial"}
    pool = [
        e
        for e in trail
        if (e["runtime"], e["method"]) == line
        and not e["fp32"]
        and not e["fallback"]
        and e["state"] == "succeeded"
        and e["value"] is not None
        and grains.get(e["job_id"]) == granularity
    ]
    for split in ("validation", "test"):
        at = [e for e in pool if e["split"] == split]
        if at:
            return str(at[0]["recipe"]), float(at[0]["value"]), split
    return "", None, "test"


def _fp32(jobs: Sequence[Any]) -> dict[str, Mapping[str, Any]]:
    """Per runtime, the figures of the fastest fp32 on the test split: the torch reference and the fp32 exports."""
    out: dict[str, Mapping[str, Any]] = {}
    for job in jobs:
        if job.role not in ("trial", "reference") or job.state != "succeeded" or not job.figures:
            continue
        what = info(job)
        p50 = job.figures.get("latency_p50_ms")
        if what["method"] != "fp32" or what["split"] != "test" or p50 is None:
            continue
        runtime = what["runtime"] or "torch"
        if runtime not in out or p50 < out[runtime]["latency_p50_ms"]:
            out[runtime] = job.figures
    return out
