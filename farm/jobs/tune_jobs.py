"""The jobs a tune's stage adds, and the stage job that follows them (farm/jobs/tune_stages.py's and
farm/jobs/tune_explore.py's expanders share these).

A stage's jobs are its base recipe with some layers fallen back one rung (:func:`job`, :func:`rung`: kept in floating
point, or at int8 where the base is simulated below 8 bits), evaluated on the validation split or screened on the test
split (farm/jobs/tune_timing.py); :func:`then` orders them slowest runtime first and adds the next stage job, which
waits for them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from farm.jobs.contract import JobSpec
from farm.jobs.policy import SUCCEEDED
from farm.jobs.stages import Stage, stage_job
from farm.jobs.tune_plan import info
from farm.jobs.tune_timing import answer_isolation, answer_rel_tol, screening_spec, validation_spec
from farm.quant.layers import LayerRule
from farm.spec.plan import PlannedJob, job_key

Rivals = tuple[str, ...] | None  # the fp32s a test-split job is timed beside (None: it is screened)
#: The trials the verify stage adds (the recipe that may be the answer, timed as the tune's benchmark says): the
#: stages before it keep this room in every runtime's bound and in the budget.
VERIFY = 1
#: The bit-width a layer of a simulated base (below 8 bits) falls back to: real int8 (NNCF's and HAWQ's 4/8-bit mixed
#: precision), not floating point, which would cost a size search 4x that layer's int8 bytes.
RUNG_BITS = 8
#: The parameters a stage hands to every later one (the rest are the tune's own: settings, methods, references).
CARRIED = ("bases", "layers", "used", "rankings", "spent", "globals", "bar", "explore")


def job(
    stage: Stage, spec: JobSpec, fallback: tuple[str, ...], split: str, ref: str, *, rivals: Rivals = None
) -> PlannedJob:
    """``spec``'s recipe with the ``fallback`` layers one rung up (:func:`rung`), evaluated on ``split`` (a test-split
    candidate timed as it is screened, unless ``rivals`` is given: then as the answer is, beside those fp32s)."""
    up = rung(spec)
    rules = (LayerRule(name=n, skip=True) if up == "fp32" else LayerRule(name=n, bits=RUNG_BITS) for n in fallback)
    method = spec.method.replace(layers=tuple(rules))
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


def rung(spec: JobSpec) -> str:
    """What a line's fallen-back layers run at: ``int8`` where its base recipe is simulated below 8 bits (the next
    rung up: a size search at int4 keeps its sensitive layers at int8), else ``fp32`` (kept in floating point)."""
    return f"int{RUNG_BITS}" if spec.method.simulated else "fp32"


def verify_room(spec: JobSpec) -> int:
    """The room a line keeps for its verify job: none where its base is simulated (its latency is fake
    quantization's, claimed nowhere, and timing it again changes no size), so its candidates are all screened."""
    return 0 if spec.method.simulated else VERIFY


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


def carry(p: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters every later stage reads."""
    return {k: v for k, v in p.items() if k in CARRIED}


def _common(p: Mapping[str, Any]) -> dict[str, Any]:
    """The tune's own parameters (settings, method, runtimes, references, weights), passed down every stage."""
    return {k: v for k, v in p.items() if k not in CARRIED}


def _spec_of(stage: Stage, inputs: Sequence[Any]) -> JobSpec:
    """A spec of the tune's model and dataset (routes the next stage job): an input's, or a base recipe's when the
    stage waited for no trial (a stage that added no job)."""
    job = next((i for i in inputs if i.role != "stage"), None)
    return JobSpec.from_dict(job.spec if job is not None else next(iter(stage.params["bases"].values())))


def then(
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
