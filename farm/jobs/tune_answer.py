"""A tune's trail and answer: pure functions of its sweep's jobs (farm.store.expansion.sweep_jobs), no torch.

The trail is every trial of the search with its stage, fallen-back layers, metric, speedup, size and latency. The
answer is the fastest (``objective: latency``: p50, where intervals overlap the simpler recipe wins: fewer layers
in floating point) or smallest (``size``) succeeded test-split recipe with health ok that meets the target, among
the global recipes AND the candidates: so it is never slower than a global recipe that meets the target, unless
their intervals overlap and the global is the simpler. When none meets: the closest, with its shortfall.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from farm.jobs.tune_plan import TuneSettings, info
from farm.jobs.tune_timing import screened
from farm.metric_targets import figure, meets, shortfall

#: The trail's name of the stage that added a job (None: planned up front, stage 1).
STAGE_OF = {
    None: "global",
    "tune_sensitivity": "sensitivity",
    "tune_candidates": "candidates",
    "tune_refine": "refine",
    "tune_explore": "explore",
    "tune_verify": "verify",
}
#: The stages in order, as the trail and ``farm tune status`` name them.
STAGE_NAMES = ("global", "sensitivity", "candidates", "refine", "explore", "verify", "answer")


@dataclass(frozen=True)
class Answer:
    """What a tune found.

    Attributes:
        chosen: the trail entry chosen (None while nothing on the test split succeeded).
        met: whether it meets the target.
        shortfall: how far it is from the target (0 when met).
        done: whether the search ended (its ``tune_answer`` stage succeeded, or the sweep ended).
        trail: every trial of the search, in job order.
        stages: per stage, (done, total) jobs.
        jobs: the sweep's jobs, stage jobs included.
    """

    chosen: dict[str, Any] | None
    met: bool
    shortfall: float | None
    done: bool
    trail: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[str, tuple[int, int]] = field(default_factory=dict)
    jobs: int = 0
    #: The fastest fp32 measured (any runtime, test split), when it is faster than ``chosen`` beyond the noise
    #: (its p50 interval ends below the chosen's): no quantized recipe within the target beats plain fp32 there.
    fp32_faster: dict[str, Any] | None = None


def settings_from_text(spec_text: str) -> TuneSettings | None:
    """The tune settings of a sweep's spec text (None: the sweep is no tune)."""
    import yaml

    try:
        data = yaml.safe_load(spec_text)
    except yaml.YAMLError:
        return None
    section = data.get("tune") if isinstance(data, Mapping) else None
    if not isinstance(section, Mapping):
        return None
    return TuneSettings.from_dict(section)


def trail(jobs: Sequence[Any], settings: TuneSettings) -> list[dict[str, Any]]:
    """One entry per trial of the tune (fp32 exports included, marked ``fp32``, and the torch fp32 references, marked
    ``reference`` too: every fp32 the answer must beat), in job order."""
    from farm.quant.recipe import recipe_label

    out = []
    for job in jobs:
        if job.role not in ("trial", "reference"):
            continue
        what, f = info(job), job.figures
        value = figure(f, settings.target.column) if f else None
        simulated = bool(f.get("simulated")) or what["simulated"]
        out.append(
            {
                "job_id": job.id,
                "stage": STAGE_OF.get(job.added_by, job.added_by or "global"),
                "runtime": what["runtime"],
                "method": what["method"],
                "device": job.device,
                "recipe": recipe_label(job.spec["method"]),
                "fp32": what["method"] == "fp32",
                # Fake quantization below 8 bits: its figures are not a deployed model's (no speedup, a size estimate).
                "simulated": simulated,
                "reference": job.role == "reference",
                "split": what["split"],
                "fallback": what["fallback"],
                "fallback_to": what["fallback_to"],
                "isolation": what["isolation"],
                "state": job.state,
                "health": f.get("health"),
                settings.metric: f.get(settings.metric),
                "accuracy_drop": f.get("accuracy_drop"),
                "meets": bool(f) and what["method"] != "fp32" and meets(f, settings.target),
                "value": value,
                "speedup": f.get("speedup"),
                "speedup_ci": _interval(f),
                "rivals": _rivals(f),
                "size_ratio": f.get("size_ratio"),
                "size_bytes": f.get("size_bytes"),
                # A simulated recipe's timing is fake quantization's, no deployed model's: claimed nowhere.
                "latency": None if simulated else _latency(f),
                "artifact_uri": job.artifact_uri,
                "error": (job.error or "").splitlines()[0][:200] if job.error else None,
            }
        )
    return out


def fallback_words(entry: Mapping[str, Any], short: bool = False) -> str:
    """How an entry's fallen-back layers are named: "layers in fp32" ("in fp" where ``short``), or "layers at int8"
    (over a simulated base: farm.jobs.tune_jobs.rung)."""
    to = entry.get("fallback_to") or ("int8" if entry.get("simulated") else "fp32")  # a global: its rung
    if to != "fp32":
        return f"layers at {to}"
    return "layers in fp" if short else "layers in fp32"


def _interval(f: Mapping[str, Any]) -> list[float] | None:
    """The speedup's 95 % interval, [low, high], over the same runtime's fp32 timed side by side (None: none)."""
    low, high = f.get("speedup_ci_low"), f.get("speedup_ci_high")
    return None if low is None or high is None else [low, high]


def _rivals(f: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Other runtimes' fp32 timed side by side with the trial (``benchmark.rivals``): runtime, the trial's speedup
    over it and that speedup's 95 % interval."""
    return [
        {"runtime": r["runtime"], "speedup": r.get("speedup"), "speedup_ci": _interval(r)}
        for r in f.get("rivals") or []
        if r.get("speedup") is not None
    ]


def _latency(f: Mapping[str, Any]) -> dict[str, Any] | None:
    if f.get("latency_p50_ms") is None:
        return None
    return {
        "batch_size": f.get("batch_size"),
        "p50_ms": f.get("latency_p50_ms"),
        "ci_low_ms": f.get("latency_p50_ci_low_ms"),
        "ci_high_ms": f.get("latency_p50_ci_high_ms"),
    }


def choose(entries: Sequence[Mapping[str, Any]], settings: TuneSettings) -> tuple[dict[str, Any] | None, bool]:
    """The answer among trail entries: (entry, whether it meets the target); (None, False) when none qualifies.

    Only succeeded, health-ok, quantized recipes on the test split qualify. Among those meeting the target: the
    fastest by p50 (or smallest), where the fastest's interval overlaps another's the one with fewer layers in
    floating point (then the faster). When none meets: the one with the least shortfall (then the faster).
    """
    pool = [
        dict(e)
        for e in entries
        if e["state"] == "succeeded" and not e["fp32"] and e["split"] == "test" and e["health"] in (None, "ok")
    ]
    verified = [e for e in pool if e.get("stage") == "verify"]
    if verified and (any(e["meets"] for e in verified) or not any(e["meets"] for e in pool if screened(e))):
        # The verify stage timed the screened recipe the answer would be as the tune's benchmark says: screening
        # figures no longer compete. A failed or missing verify job leaves them in (the answer then says pinned), as
        # does one that missed a target a screened recipe met (a QAT retrained elsewhere).
        pool = [e for e in pool if not screened(e)]
    meeting = [e for e in pool if e["meets"]]
    if meeting:
        best = min(meeting, key=lambda e: (_objective(e, settings)[0], len(e["fallback"]), e["job_id"]))
        high = _objective(best, settings)[2]
        tied = [e for e in meeting if _objective(e, settings)[1] <= high]  # intervals overlap the best's
        pick = min(tied, key=lambda e: (len(e["fallback"]), _objective(e, settings)[0], e["job_id"]))
        # Never slower than a global recipe that meets the target (a wide interval must not let one through).
        faster_global = [
            e for e in meeting if not e["fallback"] and _objective(e, settings)[0] < _objective(pick, settings)[0]
        ]
        if pick["fallback"] and faster_global:
            pick = min(faster_global, key=lambda e: (_objective(e, settings)[0], e["job_id"]))
        return pick, True
    target = settings.target
    scored = [e for e in pool if e["value"] is not None]
    if not scored:
        return None, False

    def miss(e: Mapping[str, Any]) -> float:
        gap = shortfall({target.column: e["value"]}, target)
        return math.inf if gap is None else gap

    return min(scored, key=lambda e: (miss(e), _objective(e, settings)[0], e["job_id"])), False


def _objective(e: Mapping[str, Any], settings: TuneSettings) -> tuple[float, float, float]:
    """(value, interval low, interval high) of the objective; smaller is better."""
    if settings.objective == "size":
        size = float(e.get("size_bytes") or math.inf)
        return size, size, size
    lat = e.get("latency") or {}
    p50 = float(lat.get("p50_ms") or math.inf)
    low, high = lat.get("ci_low_ms"), lat.get("ci_high_ms")
    return p50, float(p50 if low is None else low), float(p50 if high is None else high)


def stage_counts(jobs: Sequence[Any]) -> dict[str, tuple[int, int]]:
    """Per stage, (finished jobs, jobs) so far; the ``answer`` stage is its stage job."""
    out: dict[str, list[int]] = {name: [0, 0] for name in STAGE_NAMES}
    for job in jobs:
        if job.role == "stage":
            name = "answer" if job.spec.get("stage") == "tune_answer" else None
        else:
            name = STAGE_OF.get(job.added_by, "global") if job.role == "trial" else "global"
        if name is None:
            continue
        out[name][1] += 1
        out[name][0] += job.state in ("succeeded", "failed", "cancelled")
    return {k: (v[0], v[1]) for k, v in out.items()}


def answered(jobs: Sequence[Any]) -> bool:
    """Whether the search ended as planned: its ``tune_answer`` stage job succeeded (farm.store.expansion.sweep_jobs'
    jobs, figures or not)."""
    return any(j.role == "stage" and j.spec.get("stage") == "tune_answer" and j.state == "succeeded" for j in jobs)


def answer_of(jobs: Sequence[Any], settings: TuneSettings, sweep_state: str | None = None) -> Answer:
    """The tune's answer so far from its sweep's jobs (farm.store.expansion.sweep_jobs)."""
    entries = trail(jobs, settings)
    chosen, met = choose(entries, settings)
    gap = None
    if chosen is not None and chosen["value"] is not None:
        gap = shortfall({settings.target.column: chosen["value"]}, settings.target)
    done = answered(jobs) or sweep_state in ("succeeded", "failed", "cancelled")
    faster = fp32_faster(entries, chosen, settings)
    return Answer(chosen, met, gap, done, entries, stage_counts(jobs), len(jobs), faster)


def fp32_faster(
    entries: Sequence[Mapping[str, Any]], chosen: Mapping[str, Any] | None, settings: TuneSettings
) -> dict[str, Any] | None:
    """The fastest fp32 of the trail that is clearly faster than ``chosen`` (latency objective only): the answer a
    user must then hear is "deploy fp32 there", not a slower quantized recipe.

    Clearly: where the answer was timed side by side with that fp32 (its own runtime's, or a rival's), the
    speedup's 95 % interval lies below 1; elsewhere, the fp32 job's p50 interval ends below the answer's.
    """
    if chosen is None or settings.objective != "latency":
        return None
    faster = []
    for e in fp32_entries(entries):
        beside = over_fp32(chosen, e)
        ci = beside.get("speedup_ci") if beside["side_by_side"] else None
        if ci is not None and ci[1] < 1 or ci is None and _objective(e, settings)[2] < _objective(chosen, settings)[1]:
            faster.append(dict(e))
    return min(faster, key=lambda e: _objective(e, settings)[0]) if faster else None


def over_fp32(chosen: Mapping[str, Any], fp32: Mapping[str, Any]) -> dict[str, Any]:
    """The answer's speedup over one fp32 of the trail: side by side where the answer's job timed it (its own
    runtime's fp32, or a rival's: ``benchmark.rivals``), with its 95 % interval; otherwise the ratio of the two
    jobs' p50, timed apart (no interval: the host drifts between jobs). None for a simulated answer: fake
    quantization on fp32 kernels has no deployed latency."""
    runtime = fp32.get("runtime")
    if chosen.get("simulated"):
        return {"runtime": runtime, "speedup": None, "speedup_ci": None, "side_by_side": False}
    if runtime == chosen.get("runtime") and chosen.get("speedup") is not None:
        return {"runtime": runtime, "speedup": chosen["speedup"], "speedup_ci": chosen.get("speedup_ci"),
                "side_by_side": True}  # fmt: skip
    rival = next((r for r in chosen.get("rivals") or [] if r["runtime"] == runtime), None)
    if rival is not None:
        return {**rival, "side_by_side": True}
    mine, theirs = (chosen.get("latency") or {}).get("p50_ms"), (fp32.get("latency") or {}).get("p50_ms")
    ratio = theirs / mine if mine and theirs else None
    return {"runtime": runtime, "speedup": ratio, "speedup_ci": None, "side_by_side": False}


def fp32_rivals(entries: Sequence[Mapping[str, Any]], runtime: str, device: str) -> tuple[str, ...]:
    """The runtimes other than ``runtime`` whose fp32 on ``device`` may be the fastest of all there (its p50 interval
    reaches the fastest fp32's): the tune's verify job times the answer side by side with each
    (``benchmark.rivals``), so that "faster than fp32 on any runtime" rests on one process's timing, not on jobs
    timed minutes apart. An fp32 that ran on another device (TensorRT's on the GPU beside a CPU answer) is none:
    the answer's process could not time it where it ran."""
    fp32 = [e for e in fp32_entries(entries) if e.get("device", device) == device]
    if not fp32:
        return ()
    fastest = min(fp32, key=lambda e: e["latency"]["p50_ms"])["latency"]
    reach = fastest.get("ci_high_ms") or fastest["p50_ms"]
    low = {e["runtime"]: e["latency"].get("ci_low_ms") or e["latency"]["p50_ms"] for e in fp32}
    return tuple(sorted(r for r, end in low.items() if r != runtime and end <= reach))


def fp32_entries(entries: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The succeeded test-split fp32 entries with a latency (one per runtime: exports and the torch reference)."""
    return [
        e
        for e in entries
        if e["fp32"] and e["state"] == "succeeded" and e["split"] == "test" and (e.get("latency") or {}).get("p50_ms")
    ]


def chosen_json(
    chosen: Mapping[str, Any], settings: TuneSettings, entries: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """The ``chosen`` object of ``farm tune --json``; ``over_fp32``: its speedup over each runtime's fp32 in
    ``entries`` (the trail), side by side where its job timed them (:func:`over_fp32`)."""
    return {
        "recipe": chosen["recipe"],
        "runtime": chosen["runtime"],
        "method": chosen.get("method"),
        "fallback": list(chosen["fallback"]),
        "fallback_to": chosen.get("fallback_to"),
        settings.metric: chosen[settings.metric],
        **({"accuracy_drop": chosen["accuracy_drop"]} if settings.metric == "accuracy" else {}),
        "speedup": chosen["speedup"],
        "speedup_ci": chosen.get("speedup_ci"),
        "over_fp32": [over_fp32(chosen, e) for e in fp32_entries(entries)],
        "size_ratio": chosen["size_ratio"],
        "size_bytes": chosen.get("size_bytes"),
        "simulated": bool(chosen.get("simulated")),
        "latency": chosen["latency"],
        "isolation": chosen.get("isolation"),
        "job_id": chosen["job_id"],
        "artifact_uri": chosen["artifact_uri"],
    }
