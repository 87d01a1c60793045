"""The stages of a tune (farm/jobs/tune_plan.py plans stage 1): expanders that read the results of the jobs they
waited for and add the next stage's jobs, through the one scheduling policy (farm/jobs/stages.py).

- ``tune_sensitivity``: per search line (a runtime; with several methods, a runtime and a method: :func:`line_of`),
  the base recipe (:func:`base_recipe`) with ONE layer fallen back (in floating point; at int8 where the base is
  simulated below 8 bits: farm.jobs.tune_jobs.rung), one job per quantizable layer that feeds
  the output compared, on the validation split; then ``tune_candidates``. A line whose base another method's on the
  same runtime beats on both counts (clearly faster, scoring as well) is not searched.
- ``tune_candidates``: the layers ranked by sensitivity (the metric the base reaches on the validation split with
  that layer fallen back: higher means the layer hurts more when quantized); the k most sensitive fall back
  for every power of two k below the layer count (and every layer, where they fall back to int8), all at once, on
  the test split; then ``tune_refine``.
- ``tune_refine``: the k's between the largest failing and the smallest passing k, evenly spaced, at most
  log2(layers) of them; then ``tune_verify`` (``tune_explore`` first with ``--trials``).
- ``tune_explore`` (farm/jobs/tune_explore.py, with ``--trials N``): recipes asked of Optuna's multi-objective
  sampler, which layers of the most sensitive stay in floating point, a batch per stage; then ``tune_verify``.
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

import math
from collections.abc import Callable, Sequence
from typing import Any

from farm.jobs.contract import JobSpec
from farm.jobs.policy import SUCCEEDED
from farm.jobs.stages import Stage, register
from farm.jobs.tune_answer import choose, fp32_rivals, trail
from farm.jobs.tune_explore import explore
from farm.jobs.tune_jobs import VERIFY, carry, job, rung, then, verify_room
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
from farm.jobs.tune_timing import SCREENING_ISOLATION, answer_isolation, screened
from farm.metric_targets import meets
from farm.spec.plan import PlannedJob

#: A layer as the search sees it: (qualified name, class name, multiply-accumulates per sample).
Layer = tuple[str, str, int]
#: The stage jobs that follow each stage (the budget keeps room for them): after sensitivity come candidates,
#: refine, verify and answer; after candidates, refine, verify and answer; after refine, verify and answer.
_LATER_STAGES = {"tune_sensitivity": 4, "tune_candidates": 3, "tune_refine": 2}


def _later(name: str, settings: TuneSettings) -> int:
    """The stage jobs after stage ``name``: one more with ``--trials`` (an explore stage; farm/jobs/tune_explore.py
    keeps the room for any further one itself)."""
    return _LATER_STAGES[name] + (1 if settings.trials else 0)


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
        ("tune_explore", explore),
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
    end = "tune_verify" if room is None or room >= VERIFY else "tune_answer"
    if settings.good_enough and meeting:
        return then(stage, [], inputs, end, stop, tested)
    found = {line: b for line, (r, m) in lines.items() if (b := base_recipe(globals_, r, settings, m)) is not None}
    bases = undominated(found, settings)
    share = share_of(settings, used, len(bases), _later("tune_sensitivity", settings))
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
        jobs.append(job(stage, spec, (), "validation", p["references"]["validation"]))
        for name, _, _ in chosen:
            jobs.append(job(stage, spec, (name,), "validation", p["references"]["validation"]))
        searched[line] = base.spec
        # Per line: its stage 1 jobs (torch: the fp32 reference; elsewhere: the fp32 export), per tensor and per
        # channel, the base on validation and one job per layer.
        used_lines[line] = used_by[line] + 1 + len(chosen)
    if not searched:  # no line can win, or the budget leaves no room: the global recipes are the answer
        return then(stage, [], inputs, end, stop, tested)
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
    return then(stage, jobs, inputs, "tune_candidates", params)


def candidates(stage: Stage, inputs: Sequence[Any]) -> list[PlannedJob]:
    """The k most sensitive layers in floating point, k = 1, 2, 4, ... below the layer count, per search line."""
    p = stage.params
    settings = TuneSettings.from_dict(p)
    jobs: list[PlannedJob] = []
    rankings: dict[str, list[str]] = {}
    used = dict(p["used"])
    room = share_of(settings, int(p["spent"]) + 1, len(p["bases"]), _later("tune_candidates", settings))
    for line, base_spec in p["bases"].items():
        spec = JobSpec.from_dict(base_spec)
        names = [x[0] for x in layers_of(p, spec.method.method)]
        ranking = rank(inputs, runtime_of(spec), names, settings, spec.method.method)
        rankings[line] = ranking
        left = room_left(len(names), used[line], room)
        # Where a global meets the target (it may be the answer), the largest k gives way to its verify job.
        keep = verify_room(spec) if p.get("bar") else 0
        # Every layer at int8 (over a simulated base) is a recipe of its own, which may miss; in floating point it is
        # fp32 itself, which meets any target.
        every = [len(names)] if rung(spec) != "fp32" else []
        ks = [*[2**e for e in range(len(names)) if 2**e < len(names)], *every][: max(left - keep, 0)]
        # Where they take the line's last jobs, nothing can verify them: they are timed as the answer is.
        screen = left >= len(ks) + verify_room(spec)
        reference = p["references"]["test"]
        jobs += [job(stage, spec, tuple(ranking[:k]), "test", reference, rivals=None if screen else ()) for k in ks]
        used[line] += len(ks)
    params = {**carry(p), "rankings": rankings, "used": used, "spent": int(p["spent"]) + 1 + len(jobs)}
    return then(stage, jobs, inputs, "tune_refine", params)


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
    room = share_of(settings, int(p["spent"]) + 1, len(p["bases"]), _later("tune_refine", settings))
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
        # Every layer in floating point is fp32 itself, which meets any target: the bound when no k passed yet (every
        # layer at int8 is a candidate of its own: where it missed too, nothing lies between).
        k_pass = min(passing, default=n_layers + (rung(spec) != "fp32"))
        k_fail = max(k for k in failing if k < k_pass)
        left = room_left(n_layers, used[line], room) - verify_room(spec)
        ranking = p["rankings"][line]
        ks = between(k_fail, k_pass, min(math.floor(math.log2(max(n_layers, 1))), max(left, 0)))
        jobs += [job(stage, spec, tuple(ranking[:k]), "test", p["references"]["test"]) for k in ks]
        used[line] += len(ks)
    params = {**carry(p), "used": used, "spent": int(p["spent"]) + 1 + len(jobs)}
    # The verify stage (the explore stage first, with --trials) chooses among the candidates too: it waits for them
    # as well (finished already).
    candidates_so_far = [i.key for i in inputs if i.role == "trial"]
    after = "tune_explore" if settings.trials else "tune_verify"
    return then(stage, jobs, inputs, after, params, [*candidates_so_far, *p.get("globals", [])])


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
    # A tune timed pinned or unisolated throughout: its screening figures are timed as its benchmark says. A
    # simulated answer claims no latency (farm.jobs.tune_jobs.verify_room).
    if pick is not None and answer_isolation(p) not in (SCREENING_ISOLATION, "none") and not pick["simulated"]:
        runtime = pick["runtime"]
        room = share_of(settings, int(p["spent"]) + 1, 1, 1)
        used = p["used"].get(line_of(runtime, pick["method"], methods_of(p)), stage1_jobs(runtime))
        left = room if p["layers"] is None else room_left(len(layers_of(p, pick["method"])), used, room)
        if left is None or left >= VERIFY:
            spec = JobSpec.from_dict(next(i for i in inputs if i.id == pick["job_id"]).spec)  # the picked job's own
            rivals = fp32_rivals(entries, runtime, pick["device"])  # timed beside each fp32 that may be the fastest
            jobs.append(job(stage, spec, tuple(pick["fallback"]), "test", p["references"]["test"], rivals=rivals))
    params = {**carry(p), "spent": int(p["spent"]) + 1 + len(jobs)}
    return then(stage, jobs, inputs, "tune_answer", params)


def answer(stage: Stage, inputs: Sequence[Any]) -> list[PlannedJob]:
    """The search is done: adds no job (farm.jobs.tune_answer chooses from the sweep's rows)."""
    return []
