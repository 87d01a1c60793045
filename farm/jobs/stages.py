"""Stage jobs: a job that reads the results of the jobs it waits for and adds the next stage's jobs to its sweeps.

A stage job (role "stage") runs no engine work. Its spec names an expander and its parameters
(``{"stage": NAME, "params": {...}}``); the worker that claims it (farm/jobs/execute.py, on the farm or in the
local pool) hands it to :func:`run_stage`, which reads its dependencies' results (:mod:`farm.store.expansion`),
asks the registered expander for new planned jobs, and records them with the stage's success in ONE transaction.
A stage runs once its inputs have finished, however they ended (farm.jobs.policy.needs_success): an expander is
given the failed ones too, and skips them.
The new jobs wait for the stage itself (and for their fp32 reference), so the stage's end releases them through
the one scheduling policy (farm.store.scheduling.job_ended), locally and on the farm alike. A worker killed
during a stage loses nothing: its lease expires, the job runs again, and adding is idempotent (jobs by key).

Expanders are registered explicitly (:func:`register`); :data:`EXPANDERS` is the registry. Adding a stage to a
plan is :func:`with_stage`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from farm.errors import ConfigError
from farm.jobs.contract import ENGINE_VERSION, JobSpec
from farm.jobs.policy import LOCAL_QUEUE, SUCCEEDED
from farm.outage import Patience
from farm.quant.config import Fp32Config
from farm.spec.plan import Plan, PlannedJob, job_key


@dataclass(frozen=True)
class Stage:
    """What an expander is given: the stage job's key (the new jobs wait for it) and its parameters."""

    key: str
    name: str
    params: Mapping[str, Any]


#: An expander: from the stage and the results of the jobs it waits for, the next stage's planned jobs.
Expander = Callable[[Stage, Sequence[Any]], list[PlannedJob]]

#: The registered expanders by name.
EXPANDERS: dict[str, Expander] = {}


def register(name: str) -> Callable[[Expander], Expander]:
    """Register an expander under ``name`` (the name a stage job's spec gives)."""

    def add(expander: Expander) -> Expander:
        if name in EXPANDERS and EXPANDERS[name] is not expander:
            raise ValueError(f"an expander named {name!r} is registered already")
        EXPANDERS[name] = expander
        return expander

    return add


@dataclass(frozen=True)
class StageJob(PlannedJob):
    """A planned stage job: its spec names the expander and its parameters; it has no metrics."""

    expander: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {"stage": self.expander, "params": dict(self.params)}

    def columns(self) -> dict[str, Any]:
        return {**super().columns(), "method": "stage"}


def with_stage(plan: Plan, name: str, params: Mapping[str, Any], after: Sequence[str]) -> Plan:
    """A copy of ``plan`` with a stage job that waits for the jobs ``after`` (keys) and then runs expander ``name``.

    Raises:
        ConfigError: no expander is registered under ``name``, or a key of ``after`` is not in the plan.
    """
    expander_named(name)
    by_key = {j.key: j for j in plan.jobs}
    missing = [k for k in after if k not in by_key]
    if missing:
        raise ConfigError(f"stage {name!r} waits for jobs not in the plan: {', '.join(k[:12] for k in missing)}")
    inputs = [by_key[k] for k in after]
    # The weights digests of the models it reads: the jobs it adds get the keys the planner would give them.
    full = {**params, "weights": {j.spec.model: j.weights_digest for j in inputs}}
    first = inputs[0].spec if inputs else JobSpec("", "", Fp32Config())
    return dataclasses.replace(plan, jobs=[*plan.jobs, stage_job(name, full, after, first)])


def stage_job(name: str, params: Mapping[str, Any], after: Sequence[str], like: JobSpec) -> StageJob:
    """The stage job that runs expander ``name`` with ``params`` once the jobs ``after`` (keys) have ended.

    Its key is a digest of the name, the parameters and ``after``: the same stage planned twice (a re-submit, an
    expander run again after its worker died) is one job. ``like`` is a job of the model it reads: the stage goes
    to the same pool (a CPU pool: it runs no engine work).

    Args:
        params: the expander's parameters, including ``weights`` (model -> weights digest) where it adds jobs.
    """
    canonical = {"stage": name, "params": params, "after": sorted(after), "engine_version": ENGINE_VERSION}
    key = hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    spec = JobSpec(like.model, like.dataset, Fp32Config(), pool=like.pool)  # routes it to a CPU pool
    return StageJob(key, "stage", spec, "cpu", None, None, tuple(after), expander=name, params=dict(params))


#: Expanders registered by a module of their own, imported when a stage first names them (farm tune's stages
#: import nothing of this module's users: no import cycle, and a worker finds them by name).
LAZY_EXPANDERS = {
    "tune_sensitivity": "farm.jobs.tune_stages",
    "tune_candidates": "farm.jobs.tune_stages",
    "tune_refine": "farm.jobs.tune_stages",
    "tune_explore": "farm.jobs.tune_stages",
    "tune_verify": "farm.jobs.tune_stages",
    "tune_answer": "farm.jobs.tune_stages",
}


def expander_named(name: str) -> Expander:
    """The expander registered under ``name`` (importing the module that registers it, for a lazy one).

    Raises:
        ConfigError: no expander is registered under ``name``.
    """
    if name not in EXPANDERS and name in LAZY_EXPANDERS:
        module = importlib.import_module(LAZY_EXPANDERS[name])
        module.register_all()
    expander = EXPANDERS.get(name)
    if expander is None:
        known = ", ".join(sorted({*EXPANDERS, *LAZY_EXPANDERS})) or "none"
        raise ConfigError(f"no stage expander named {name!r} (known: {known})")
    return expander


def run_stage(
    db: Any, job_id: int, worker: str, payload: Mapping[str, Any], stage_key: str, patience: Patience | None = None
) -> str:
    """Run the stage job ``job_id`` (claimed by ``worker``): expand, then record the new jobs and its success.

    Args:
        patience: rides the record out through a database outage, as a trial's result is (the expansion is
            kept, not lost to a short outage); None tries once.

    Returns:
        The stage's state afterwards ("succeeded", or the state it was found in when no longer this worker's).
        The jobs it added are its end's decision's ``added`` (farm.store.scheduling.job_ended).

    Raises:
        ConfigError: the expander is unknown or its parameters are wrong (the stage fails with the reason).
        StoreUnavailable: the database stayed away past the patience.
    """
    from farm.store import expansion

    name = str(payload.get("stage"))
    expander = expander_named(name)
    inputs = expansion.stage_inputs(db, job_id)
    own_queue = next(iter(expansion.queue_of(db, job_id)), None)
    jobs = expander(Stage(stage_key, name, dict(payload.get("params") or {})), inputs)
    routes = {j.key: _route(j, inputs, own_queue) for j in jobs}

    def record() -> str:
        return expansion.record_stage(db, job_id, worker, jobs, routes)

    return patience.call(record) if patience is not None else record()


def _route(job: PlannedJob, inputs: Sequence[Any], own_queue: str | None) -> tuple[str, str, str | None]:
    """A new job goes where its sibling (the input of the same model) ran; a local run's stage adds local jobs."""
    if own_queue == LOCAL_QUEUE:
        return LOCAL_QUEUE, "all", None
    sibling = next((i for i in inputs if i.spec.get("model") == job.spec.model and i.role != "stage"), None)
    if sibling is None or sibling.route[0] in (None, LOCAL_QUEUE):
        return own_queue or "cpu", "all", None
    queue, stage, finish_queue = sibling.route
    return queue, stage, finish_queue


@register("calibration_sizes")
def calibration_sizes(stage: Stage, inputs: Sequence[Any]) -> list[PlannedJob]:
    """The best succeeded trial of the inputs (highest accuracy, ties to fewer calibration samples) again at each
    of ``params["sizes"]`` calibration samples: does the winner need more data, or would less do?

    Raises:
        ConfigError: ``sizes`` is not a list of positive integers.
    """
    sizes = stage.params.get("sizes")
    if not isinstance(sizes, list) or not all(isinstance(n, int) and n > 0 for n in sizes):
        raise ConfigError(f"stage calibration_sizes: params.sizes must be a list of positive integers, not {sizes!r}")
    trials = [
        i
        for i in inputs
        if i.state == SUCCEEDED and i.role == "trial" and i.figures.get("accuracy") is not None
        if "calibration_size" in i.spec.get("method", {})
    ]
    if not trials:
        return []
    best = min(trials, key=lambda i: (-i.figures["accuracy"], i.spec["method"].get("calibration_size") or 0, i.id))
    spec = JobSpec.from_dict(best.spec)
    digest = (stage.params.get("weights") or {}).get(spec.model)
    out: list[PlannedJob] = []
    for size in dict.fromkeys(sizes):
        new_spec = dataclasses.replace(spec, method=spec.method.replace(calibration_size=size))
        key = job_key(new_spec, digest)
        out.append(PlannedJob(key, "trial", new_spec, best.device, digest, best.reference_key, (stage.key,)))
    return out
