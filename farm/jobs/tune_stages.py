"""The stages of a tune (farm/jobs/tune_plan.py plans stage 1): expanders that read the results of the jobs they
waited for and add the next stage's jobs, through the one scheduling policy (farm/jobs/stages.py).

- ``tune_sensitivity``: per search line (a runtime; with several methods, a runtime and a method: :func:`line_of`),
  the base recipe (:func:`base_recipe`) with ONE layer in floating point, one job per quantizable layer that feeds
  the output compared, on the validation split; then ``tune_candidates``. A line whose base another method's on the
  same runtime beats on both counts (clearly faster, scoring as well) is not searched.
- ``tune_candidates``: the layers ranked by sensitivity (the metric the base reaches on the validation split with
  that layer in floating point: higher means the layer hurts more when quantized); the k most sensitive fall back
  for every power of two k below the layer count, all at once, on the test split; then ``tune_refine``.
- ``tune_refine``: the k's between the largest failing and the smallest passing k, evenly spaced, at most
  log2(layers) of them; then ``tune_verify``.
- ``tune_verify``: the global int8 recipes, candidates and refine time their jobs pinned (farm/jobs/tune_timing.py's
  ``screening_spec``): they only rank, and under -j 2 exclusive timings serialised the search. The recipe the
  answer would be (farm/jobs/tune_answer.py's ``choose`` over the screened jobs: a candidate, a global recipe, or
  the closest when none meets) runs once more, timed as the tune's own benchmark says (exclusive by default) and
  beside every other runtime's fp32 that may be the fastest (``benchmark.rivals``); candidates that take their
  runtime's last jobs are timed as the benchmark says themselves (nothing could verify them); then ``tune_answer``.
- ``tune_answer``: adds nothing; its success marks the search done (farm/jobs/tune_answer.py gives the answer).

Expanders are pure functions of their stage's parameters and inputs, save the layer list, read from the model itself
(:data:`list_layers`, importing the engine lazily: stages run on workers).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from farm.jobs.contract import JobSpec
from farm.jobs.policy import SUCCEEDED
from farm.jobs.stages import Stage, register, stage_job
from farm.jobs.tune_answer import choose, fp32_rivals, trail
from farm.jobs.tune_lines import (
    base_recipe,
    fanout,
    healthy,
    layers_of,
    line_of,
    methods_of,
    room_left,
    runtime_of,
    score,
    share_of,
    stage1_jobs,
    undominated,
)
from farm.jobs.tune_plan import TuneSettings, info
from farm.jobs.tune_timing import (
    SCREENING_ISOLATION,
    answer_isolation,
    answer_rel_tol,
    screened,
    screening_spec,
    validation_spec,
)
from farm.metric_targets import meets
from farm.quant.layers import LayerRule
from farm.spec.plan import PlannedJob, job_key

#: A layer as the search sees it: (qualified name, class name, multiply-accumulates per sample).
Layer = tuple[str, str, int]
Rivals = tuple[str, ...] | None  # the fp32s a test-split job is timed beside (None: it is screened)
#: The stage jobs that follow each stage (the budget keeps room for them): after sensitivity come candidates,
#: refine, verify and answer; after candidates, refine, verify and answer; after refine, verify and answer.
_LATER_STAGES = {"tune_sensitivity": 4, "tune_candidates": 3, "tune_refine": 2}
#: The trials the verify stage adds: the recipe that may be the answer, timed as the tune's benchmark says. Refine
#: keeps room for it in every runtime's bound; candidates only where a global recipe meets the target.
_VERIFY = 1


def _layer_table(spec: JobSpec) -> list[Layer]:
    """The layers ``spec``'s method would quantize that feed the output compared (model order, with their MACs)."""
    from farm.quant.layer_list import feeding, layer_table
    from farm.zoo.data import first_batch, load_dataset
    from farm.zoo.models import load_model

    loaded = load_model(spec.model, weights=spec.weights)
    example = first_batch(load_dataset(spec.dataset).test, 1)
    rows = layer_table(loaded.module, example, spec.method.method)
    live = feeding(loaded.module.eval(), example, [row.name for row in rows], spec.output)
    return [(row.name, row.type, row.macs) for row in rows if row.name in live]


#: How the sensitivity stage lists a model's layers (tests replace it with a fixed list).
list_layers: Callable[[JobSpec], list[Layer]] = _layer_table


def register_all() -> None:
    """Register the tune's expanders (farm.jobs.stages.expander_named calls this on first use)."""
    for name, expander in (
        ("tune_sensitivity", sensitivity),
        ("tune_candidates", candidates),
        ("tune_refine", refine),
        ("tune_verify", verify),
        ("tune_answer", answer),
    ):
        register(name)(expander)


def sensitivity(stage: Stage, inputs: Sequence[Any]) -> list[PlannedJob]:
    """On each search line worth searching, the base recipe and one job per layer (that layer in floating point), on
    the validation split."""
    p = stage.params
    settings = TuneSettings.from_dict(p)
    methods = methods_of(p)
    globals_ = [i for i in inputs if i.role == "trial" and info(i)["method"] in methods and not info(i)["fallback"]]
    meeting = [g for g in globals_ if healthy(g) and meets(g.figures, settings.target)]
    used = len(inputs) + 1
    # The verify stage reads the global recipes too (screened, like candidates), and every fp32 (its rivals).
    tested = [i.key for i in inputs if i.role in ("trial", "reference") and info(i)["split"] == "test"]
    # How the answer is timed (a tune planned before its globals were screened: as its test reference was).
    isolation = p.get("isolation") or next(
        (info(i)["isolation"] for i in inputs if i.role == "reference" and info(i)["split"] == "test"), "exclusive"
    )
    # The lines: each runtime, and with several methods each method it ran a global recipe of.
    ran = {(info(g)["runtime"], info(g)["method"]) for g in globals_}
    lines = {line_of(r, m, methods): (r, m) for r in p["runtimes"] for m in methods if (r, m) in ran}
    # No search (good enough, no line can win, no budget): a global is the answer, verified if the budget allows.
    used_by = {line: stage1_jobs(r, inputs, m) for line, (r, m) in lines.items()}
    stop = {"bases": {}, "layers": None, "used": used_by, "spent": used, "isolation": isolation}
    room = share_of(settings, used, 1, 2)
    end = "tune_verify" if room is None or room >= _VERIFY else "tune_answer"
    if settings.good_enough and meeting:
        return _then(stage, [], inputs, end, stop, tested)
    found = {line: b for line, (r, m) in lines.items() if (b := base_recipe(globals_, r, settings, m)) is not None}
    bases = undominated(found, settings)
    share = share_of(settings, used, len(bases), _LATER_STAGES["tune_sensitivity"])
    layers: dict[str, list[Layer]] = {}  # per method (the model's layers that method quantizes)
    jobs: list[PlannedJob] = []
    searched: dict[str, Any] = {}
    used_lines: dict[str, int] = {}
    for line, base in bases.items():
        spec = JobSpec.from_dict(base.spec)
        if spec.method.method not in layers:
            layers[spec.method.method] = list_layers(spec)
        mine = layers[spec.method.method]
        cap = len(mine) if share is None else min(len(mine), max(share - 1 - fanout(len(mine)), min(share - 1, 1)))
        if cap < 1:  # the budget leaves this line no room
            continue
        # Capped: the layers that do the most work first (falling back a tiny one can't buy much speed).
        chosen = mine if cap >= len(mine) else sorted(mine, key=lambda x: -x[2])[:cap]
        # The base itself on the validation split: what each layer's job gains is measured from it (the report's
        # sensitivity chart), on the same samples.
        jobs.append(_job(stage, spec, (), "validation", p["references"]["validation"]))
        for name, _, _ in chosen:
            jobs.append(_job(stage, spec, (name,), "validation", p["references"]["validation"]))
        searched[line] = base.spec
        # Per line: its stage 1 jobs (torch: the fp32 reference; elsewhere: the fp32 export), per tensor and per
        # channel, the base on validation and one job per layer.
        used_lines[line] = used_by[line] + 1 + len(chosen)
    if not searched:  # no line can win, or the budget leaves no room: the global recipes are the answer
        return _then(stage, [], inputs, end, stop, tested)
    stored = {m: [list(x) for x in ls] for m, ls in layers.items()}
    params = {
        "bases": searched,
        # One method: its layers (as a tune of one method always stored them); several: per method.
        "layers": stored[methods[0]] if len(methods) == 1 else stored,
        "used": used_lines,
        "spent": used + len(jobs),
        "globals": tested,
        "isolation": isolation,
        # A global recipe already meets the target: it may be the answer, so candidates keep room to verify it.
        "bar": bool(meeting),
    }
    return _then(stage, jobs, inputs, "tune_candidates", params)


def candidates(stage: Stage, inputs: Sequence[Any]) -> list[PlannedJob]:
    """The k most sensitive layers in floating point, k = 1, 2, 4, ... below the layer count, per search line."""
    p = stage.params
    settings = TuneSettings.from_dict(p)
    jobs: list[PlannedJob] = []
    rankings: dict[str, list[str]] = {}
    used = dict(p["used"])
    room = share_of(settings, int(p["spent"]) + 1, len(p["bases"]), _LATER_STAGES["tune_candidates"])
    for line, base_spec in p["bases"].items():
        spec = JobSpec.from_dict(base_spec)
        names = [x[0] for x in layers_of(p, spec.method.method)]
        ranking = rank(inputs, runtime_of(spec), names, settings, spec.method.method)
        rankings[line] = ranking
        left = room_left(len(names), used[line], room)
        # Where a global meets the target (it may be the answer), the largest k gives way to its verify job.
        keep = _VERIFY if p.get("bar") else 0
        ks = [2**e for e in range(len(names)) if 2**e < len(names)][: max(left - keep, 0)]
        # Where they take the line's last jobs, nothing can verify them: they are timed as the answer is.
        screen = left >= len(ks) + _VERIFY
        reference = p["references"]["test"]
        jobs += [_job(stage, spec, tuple(ranking[:k]), "test", reference, rivals=None if screen else ()) for k in ks]
        used[line] += len(ks)
    params = {**_carry(p), "rankings": rankings, "used": used, "spent": int(p["spent"]) + 1 + len(jobs)}
    return _then(stage, jobs, inputs, "tune_refine", params)


def rank(
    inputs: Sequence[Any], runtime: str, names: Sequence[str], settings: TuneSettings, method: str | None = None
) -> list[str]:
    """The layers of ``runtime``'s sensitivity jobs (of ``method``, where given), most sensitive first (the highest
    score with that layer in floating point); layers without a measured score follow in model order."""
    scores: dict[str, float] = {}
    for i in inputs:
        what = info(i)
        if i.role != "trial" or i.state != SUCCEEDED or what["split"] != "validation" or what["runtime"] != runtime:
            continue
        if method is not None and what["method"] != method:
            continue
        s = score(i.figures, settings)
        if s is not None and len(what["fallback"]) == 1:
            scores[what["fallback"][0]] = s
    measured = sorted((n for n in names if n in scores), key=lambda n: (-scores[n], names.index(n)))
    return measured + [n for n in names if n not in scores]


def refine(stage: Stage, inputs: Sequence[Any]) -> list[PlannedJob]:
    """The k's strictly between the largest failing and the smallest passing k, evenly spaced, per search line."""
    p = stage.params
    settings = TuneSettings.from_dict(p)
    room = share_of(settings, int(p["spent"]) + 1, len(p["bases"]), _LATER_STAGES["tune_refine"])
    used = dict(p["used"])
    jobs: list[PlannedJob] = []
    for line, base_spec in p["bases"].items():
        spec = JobSpec.from_dict(base_spec)
        runtime, method = runtime_of(spec), spec.method.method
        n_layers = len(layers_of(p, method))
        passing: list[int] = []
        failing = [0]  # k = 0 is the base global recipe, which misses the target
        for i in inputs:
            what = info(i)
            if i.role != "trial" or i.state != SUCCEEDED or what["split"] != "test":
                continue
            if what["runtime"] == runtime and what["method"] == method:
                (passing if meets(i.figures, settings.target) else failing).append(len(what["fallback"]))
        # Every layer in floating point is fp32 itself, which meets any target: the bound when no k passed yet.
        k_pass = min(passing, default=n_layers)
        k_fail = max(k for k in failing if k < k_pass)
        left = room_left(n_layers, used[line], room) - _VERIFY
        ranking = p["rankings"][line]
        ks = between(k_fail, k_pass, min(math.floor(math.log2(max(n_layers, 1))), max(left, 0)))
        jobs += [_job(stage, spec, tuple(ranking[:k]), "test", p["references"]["test"]) for k in ks]
        used[line] += len(ks)
    params = {**_carry(p), "used": used, "spent": int(p["spent"]) + 1 + len(jobs)}
    # The verify stage chooses among the candidates too: it waits for them as well (finished already).
    candidates_so_far = [i.key for i in inputs if i.role == "trial"]
    return _then(stage, jobs, inputs, "tune_verify", params, [*candidates_so_far, *p.get("globals", [])])


def between(low: int, high: int, n: int) -> list[int]:
    """At most ``n`` integers strictly between ``low`` and ``high``, evenly spaced."""
    inner = list(range(low + 1, high))
    if len(inner) <= n:
        return inner
    if n <= 0:
        return []
    return sorted({inner[round((i + 1) * (len(inner) + 1) / (n + 1)) - 1] for i in range(n)})


def verify(stage: Stage, inputs: Sequence[Any]) -> list[PlannedJob]:
    """The screened recipe the answer would be (a candidate or a global recipe; the closest when none meets the
    target), timed again as the tune's benchmark says; nothing when the budget or its runtime's bound is spent."""
    p = stage.params
    settings = TuneSettings.from_dict(p)
    entries = trail(inputs, settings)
    pick, _ = choose([e for e in entries if screened(e)], settings)
    jobs: list[PlannedJob] = []
    # A tune timed pinned or unisolated throughout: its screening figures are timed as its benchmark says.
    if pick is not None and answer_isolation(p) not in (SCREENING_ISOLATION, "none"):
        runtime = pick["runtime"]
        room = share_of(settings, int(p["spent"]) + 1, 1, 1)
        used = p["used"].get(line_of(runtime, pick["method"], methods_of(p)), stage1_jobs(runtime))
        left = room if p["layers"] is None else room_left(len(layers_of(p, pick["method"])), used, room)
        if left is None or left >= _VERIFY:
            spec = JobSpec.from_dict(next(i for i in inputs if i.id == pick["job_id"]).spec)  # the picked job's own
            rivals = fp32_rivals(entries, runtime, pick["device"])  # timed beside each fp32 that may be the fastest
            jobs.append(_job(stage, spec, tuple(pick["fallback"]), "test", p["references"]["test"], rivals=rivals))
    params = {**_carry(p), "spent": int(p["spent"]) + 1 + len(jobs)}
    return _then(stage, jobs, inputs, "tune_answer", params)


def answer(stage: Stage, inputs: Sequence[Any]) -> list[PlannedJob]:
    """The search is done: adds no job (farm.jobs.tune_answer chooses from the sweep's rows)."""
    return []


# --- helpers ---------------------------------------------------------------------------------------------------


def _job(
    stage: Stage, spec: JobSpec, fallback: tuple[str, ...], split: str, ref: str, *, rivals: Rivals = None
) -> PlannedJob:
    """``spec``'s recipe with the ``fallback`` layers kept in floating point, evaluated on ``split`` (a test-split
    candidate timed as it is screened, unless ``rivals`` is given: then as the answer is, beside those fp32s)."""
    method = spec.method.replace(layers=tuple(LayerRule(name=n, skip=True) for n in fallback))
    new = dataclasses.replace(spec, method=method)
    if split == "validation":
        new = validation_spec(new)
    elif rivals is None:
        new = dataclasses.replace(screening_spec(new), split=split)
    else:  # timed as the tune's benchmark says (the base recipe it came from was screened)
        p = stage.params
        rel_tol = answer_rel_tol(p, new)
        timed = dataclasses.replace(new.benchmark, isolation=answer_isolation(p), rel_tol=rel_tol, rivals=rivals)
        new = dataclasses.replace(new, split=split, benchmark=timed)
    digest = (stage.params.get("weights") or {}).get(spec.model)
    device = new.benchmark.device  # the planner wrote the job's resolved device there
    return PlannedJob(job_key(new, digest), "trial", new, device, digest, ref, (stage.key,))


def _longest_first(jobs: list[PlannedJob], inputs: Sequence[Any]) -> list[PlannedJob]:
    """``jobs`` with the slowest runtime's first (by the mean duration of the previous stage's jobs on each runtime;
    the order within a runtime kept): jobs are released, and a pool or a farm queue takes them, in this order, so a
    stage ends on short jobs rather than with one process running a long one while the others idle at the stage's
    end (longest processing time first)."""
    took: dict[str, list[float]] = {}
    for i in inputs:
        if i.role == "trial" and i.state == SUCCEEDED and i.duration_s:
            took.setdefault(info(i)["runtime"], []).append(float(i.duration_s))
    mean = {runtime: sum(d) / len(d) for runtime, d in took.items()}
    return sorted(jobs, key=lambda j: -mean.get(j.spec.method.runtime, 0.0))


def _carry(p: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters every later stage reads."""
    keep = ("bases", "layers", "used", "rankings", "spent", "globals", "bar")
    return {k: v for k, v in p.items() if k in keep}


def _common(p: Mapping[str, Any]) -> dict[str, Any]:
    """The tune's own parameters (settings, method, runtimes, references, weights), passed down every stage."""
    drop = ("bases", "layers", "used", "rankings", "spent", "globals", "bar")
    return {k: v for k, v in p.items() if k not in drop}


def _spec_of(stage: Stage, inputs: Sequence[Any]) -> JobSpec:
    """A spec of the tune's model and dataset (routes the next stage job): an input's, or a base recipe's when the
    stage waited for no trial (a stage that added no job)."""
    job = next((i for i in inputs if i.role != "stage"), None)
    return JobSpec.from_dict(job.spec if job is not None else next(iter(stage.params["bases"].values())))


def _then(
    stage: Stage,
    jobs: list[PlannedJob],
    inputs: Sequence[Any],
    name: str,
    params: Mapping[str, Any],
    also: Sequence[str] = (),
) -> list[PlannedJob]:
    """What a stage adds: its ``jobs``, slowest runtime first (:func:`_longest_first`), and the next stage ``name``,
    which waits for them (and for the jobs ``also``: keys of finished jobs it reads as well)."""
    keys = [*[j.key for j in jobs], *also]
    return [*_longest_first(jobs, inputs), _next(stage, name, params, keys, _spec_of(stage, inputs))]


def _next(stage: Stage, name: str, params: Mapping[str, Any], keys: Sequence[str], like: JobSpec) -> PlannedJob:
    """The next stage job: it waits for this stage and the jobs it just added."""
    return stage_job(name, {**_common(stage.params), **params}, [stage.key, *keys], like)
