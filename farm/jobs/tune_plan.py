"""Planning a tune (``farm tune``, or a sweep spec with a ``tune:`` section): stage 1 of the search, no torch.

A tune is a sweep. Its spec text is an ordinary sweep spec of ONE model and one or more quantized methods plus a
``tune:`` section (metric, target, objective, budget); stage 1 is planned here, up front:

- the fp32 reference on the test split (the sensitivity stage's validation-split jobs compare with its fp32 outputs
  on their split, computed in their process: farm.jobs.fp32_reference);
- per runtime asked: fp32 exported to that runtime (other than torch), and each method's all-quantized recipe per
  tensor and per channel (test split), on the runtimes that run it: the global recipes, the bar the search must beat;
- the stage job ``tune_sensitivity`` after all of them (farm/jobs/tune_stages.py), which adds the next stage.

Several methods (``--method static --method dynamic``): each runtime searches each method as its own line (its
base recipe, sensitivity, candidates), so a faster method is not left out because another scores higher globally.

Budget: per runtime (per runtime and method, with several) at most ``layers + 2*log2(layers) + 4`` jobs
(:func:`budget_per_runtime`). ``budget_jobs`` below stage 1's size is refused before anything is written; above it,
the later stages are capped to it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from farm.errors import ConfigError, Problem
from farm.jobs.tune_spec import TUNE_METHODS, checked_spec
from farm.jobs.tune_timing import screening_spec
from farm.metric_targets import METRICS, Target, make_target
from farm.quant.config import METHODS
from farm.runtimes.registry import DEFAULT_RUNTIME, RUNTIMES, granularity_runs
from farm.spec.plan import Plan, PlannedJob, job_key

#: The metrics ``farm tune --metric`` offers (farm.metric_targets has their ranges).
#: The metrics a tune targets: every one of farm.metric_targets.METRICS but a sweep's own metric function (its
#: stages read the built-in figures only).
TUNE_METRICS = tuple(name for name in METRICS if name != "metric")
OBJECTIVES = ("latency", "size")
#: The stages of a tune in order, each a stage job's expander (stage 1 is planned up front: "global").
STAGES = (
    "global",
    "tune_sensitivity",
    "tune_candidates",
    "tune_refine",
    "tune_explore",
    "tune_verify",
    "tune_answer",
)
GRANULARITIES = ("per_tensor", "per_channel")
#: The warm-up of a tune's timings (``farm tune``; a spec's ``tune:`` sweep sets its own).
TUNE_WARMUP_S = 0.05
#: Each side's timed budget in a tune's jobs (``farm tune --max-time-s``; a pair gets twice): half a sweep's. A
#: pair that has not settled in 3 s is held back by the host, not by too few samples, and a tune's comparisons
#: already allow for the host's drift between runs (several % on a shared VM), beside which a longer timing adds
#: nothing; an exclusive timing (fp32, the answer) holds the host: a search's wall time is made of them.
TUNE_MAX_TIME_S = 1.5


@dataclass(frozen=True)
class TuneSettings:
    """The ``tune:`` section: what the search optimises and how much it may spend.

    Attributes:
        metric: one of :data:`TUNE_METRICS`.
        min_metric: the floor of ``metric`` (``--min-metric``), or None.
        max_accuracy_drop: the accuracy budget (``--max-accuracy-drop``), or None.
        objective: "latency" (p50) or "size" (bytes).
        budget_jobs: at most this many jobs in all (None: the per-runtime bound alone).
        good_enough: stop after stage 1 when a global recipe meets the target.
        trials: the explore stage's recipes per search line (farm/jobs/tune_explore.py: Optuna's multi-objective
            sampler over which layers stay in floating point); None: no explore stage. Left out of
            :meth:`to_dict` (and so of the stage jobs' keys) while None.
    """

    metric: str
    min_metric: float | None = None
    max_accuracy_drop: float | None = None
    objective: str = "latency"
    budget_jobs: int | None = None
    good_enough: bool = False
    trials: int | None = None

    @property
    def target(self) -> Target:
        return Target(self.metric, self.min_metric, self.max_accuracy_drop)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TuneSettings:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def budget_per_runtime(layers: int) -> int:
    """The most jobs one runtime's search may take: ``layers + 2*log2(layers) + 4`` (rounded down)."""
    return int(layers + 2 * math.log2(max(layers, 1)) + 4)


def tune_text(
    *,
    model: str,
    dataset: str,
    method: str | Sequence[str],
    runtimes: Sequence[str],
    settings: TuneSettings,
    batch_size: int,
    threads: int | None,
    max_time_s: float | None = None,
    output: str | int | None = None,
    bits: int | None = None,
) -> str:
    """The sweep spec (YAML) of a tune asked on the command line; its ``tune:`` section marks it as a tune.

    ``method`` is one method or several (each searched on every runtime that runs it). ``output`` picks the model
    output the metric is computed on (a dict key or tuple index; None: the logits). ``bits`` (below 8: simulated)
    is each method's bit-width; None or 8: real int8.

    Raises:
        ConfigError: an unknown or repeated method (before any planning).
    """
    given = [method] if isinstance(method, str) else list(method)
    for m in given:
        if m not in TUNE_METHODS:
            raise ConfigError(f"--method: a tune searches {', '.join(TUNE_METHODS)}, not {m!r}")
    again = next((m for i, m in enumerate(given) if m in given[:i]), None)
    if not given or again is not None:
        raise ConfigError(f"--method {again}: give each of {', '.join(TUNE_METHODS)} at most once, at least one")
    # In one order whatever the flags' (the spec text names the tune: the same search is the same tune).
    methods = [m for m in TUNE_METHODS if m in given]
    # A tune times dozens of small jobs one at a time (the measurement lock): a short warm-up (still at least
    # farm.quant.latency's warmup_reps calls, and every block re-warms) leaves the time to the timed pairs.
    bench: dict[str, Any] = {
        "batch_size": [batch_size],
        "warmup_s": TUNE_WARMUP_S,
        "max_time_s": TUNE_MAX_TIME_S if max_time_s is None else max_time_s,
    }
    if threads is not None:
        bench["threads"] = threads
    target = (
        f"drop{settings.max_accuracy_drop:g}" if settings.max_accuracy_drop is not None else f"{settings.min_metric:g}"
    )
    low = f"@int{bits}" if bits not in (None, 8) else ""
    name = f"tune {model} {'+'.join(methods)}{low} {settings.metric} {target} {settings.objective}"
    data: dict[str, Any] = {
        "name": name[:200],
        "models": [model],
        "dataset": dataset,
        "methods": [{m: {"bits": bits}} if bits not in (None, 8) else m for m in methods],
        "benchmark": bench,
        "tune": settings.to_dict(),
    }
    if output is not None:
        data["output"] = output
    if runtimes:
        data["runtime"] = list(runtimes)
    return yaml.safe_dump(data, sort_keys=False)


def settings_of(section: Any, source: str = "tune") -> TuneSettings:
    """The checked ``tune:`` section of a spec.

    Raises:
        ConfigError: every problem of the section (unknown keys, a metric or objective it lacks, a target outside
            the metric's range, a budget that is not a positive integer).
    """
    if not isinstance(section, Mapping):
        raise ConfigError(f"tune: a mapping with metric and a target, got {section!r}", source=source)
    known = {f.name for f in dataclasses.fields(TuneSettings)}
    problems = [
        Problem(f"tune.{k}", f"unknown key (valid: {', '.join(sorted(known))})") for k in section if k not in known
    ]
    metric = section.get("metric", "accuracy")
    if metric not in TUNE_METRICS:
        problems.append(Problem("tune.metric", f"{metric!r} is not one of {', '.join(TUNE_METRICS)}"))
    if section.get("objective", "latency") not in OBJECTIVES:
        problems.append(
            Problem("tune.objective", f"{section.get('objective')!r} is not one of {', '.join(OBJECTIVES)}")
        )
    budget = section.get("budget_jobs")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
        problems.append(Problem("tune.budget_jobs", f"must be a positive integer, got {budget!r}"))
    trials = section.get("trials")
    if trials is not None and (not isinstance(trials, int) or isinstance(trials, bool) or trials < 0):
        problems.append(Problem("tune.trials", f"must be a whole number >= 0, got {trials!r}"))
    if not isinstance(section.get("good_enough", False), bool):
        problems.append(Problem("tune.good_enough", f"must be true or false, got {section.get('good_enough')!r}"))
    for key in ("min_metric", "max_accuracy_drop"):
        v = section.get(key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            problems.append(Problem(f"tune.{key}", f"must be a number, got {v!r}"))
    if problems:
        raise ConfigError(problems, source=source)
    floats = {k: float(section[k]) for k in ("min_metric", "max_accuracy_drop") if section.get(k) is not None}
    # trials: 0 is no explore stage, as None (the same tune, the same stage keys).
    settings = TuneSettings.from_dict({**section, "metric": metric, **floats, "trials": trials or None})
    make_target(settings.metric, settings.min_metric, settings.max_accuracy_drop)
    return settings


def plan_tune(
    text: str,
    data: Mapping[str, Any],
    *,
    source: str = "spec",
    pools: Any = None,
    remote_digest: Any = None,
    labelled: bool | None = None,
) -> Plan:
    """Stage 1 of the tune a spec describes (``data`` is its parsed text, with a ``tune:`` section).

    Args:
        text: the spec's text: the sweep keeps it, so ``farm tune list`` finds it and a re-run resumes it.
        labelled: whether the dataset has labels, where the caller knows (accuracy needs them).

    Returns:
        The plan: references, global recipes, and the ``tune_sensitivity`` stage job last.

    Raises:
        ConfigError: the spec's problems, not one model, a method listed twice, a bad target, a runtime that runs
            none of the methods, a budget below stage 1's size.
    """
    from farm.jobs.stages import stage_job
    from farm.spec.load import load_spec

    settings = settings_of(data.get("tune"), source)
    make_target(settings.metric, settings.min_metric, settings.max_accuracy_drop, labelled)
    entries, runtimes = checked_spec(data, settings.objective, settings.budget_jobs, source)
    grid = {k: v for k, v in data.items() if k != "tune"}
    methods: list[Any] = ["fp32"]
    for name, params in entries:
        grains = [params["granularity"]] if "granularity" in params else list(GRANULARITIES)
        methods.append({name: {**params, "granularity": grains}})
    grid.update(methods=methods, runtime=runtimes)
    plan = load_spec(
        yaml.safe_dump(grid, sort_keys=False), source=source, limit=None, pools=pools, remote_digest=remote_digest
    )
    (reference,) = plan.references
    # Global int8 recipes only rank: screened, the answer timed again (tune_verify); fp32 keeps the tune's timing.
    globals_ = [_screened_job(j) if j.spec.method.method != "fp32" else j for j in plan.jobs if j.role != "reference"]
    # Both granularities enumerated: not the one a runtime would not run (the same build twice).
    fixed = {name for name, params in entries if "granularity" in params}
    globals_ = [j for j in globals_ if j.spec.method.method in fixed or granularity_runs(j.spec.method)]
    jobs = [reference, *_costliest_first(globals_)]
    names = [name for name, _ in entries]
    stage_params = {
        **settings.to_dict(),
        "method": names[0],
        # Several methods only: a tune of one has the parameters (and so the stage job's key) it always had, so a
        # tune stored before is resumed, not started again.
        **({"methods": names} if len(names) > 1 else {}),
        "runtimes": runtimes,
        "isolation": reference.spec.benchmark.isolation,
        "rel_tol": reference.spec.benchmark.rel_tol,  # the verify job's (screened timings settle looser)
        # One fp32 reference job: a validation-split job carries it to its split (farm.jobs.fp32_reference).
        "references": {"test": reference.key, "validation": reference.key},
        "weights": {reference.spec.model: reference.weights_digest},
    }
    stage = stage_job("tune_sensitivity", stage_params, [j.key for j in jobs], reference.spec)
    notes = [
        *plan.notes,
        f"tune: {settings.target.describe()}, objective {settings.objective}, runtimes {', '.join(runtimes)}",
    ]
    return Plan(plan.spec, text, [*jobs, stage], notes)


def _screened_job(job: PlannedJob) -> PlannedJob:
    """A planned global recipe timed as it is screened (its key follows its spec)."""
    spec = screening_spec(job.spec)
    if spec == job.spec:
        return job
    return dataclasses.replace(job, key=job_key(spec, job.weights_digest), spec=spec)


def info(job: Any) -> dict[str, Any]:
    """What the search reads of a job: runtime, split, granularity, the layers it falls back (``fallback``: kept in
    floating point, or at int8 over a simulated base: ``fallback_to``, farm.jobs.tune_jobs.rung; a tune's methods take
    no layer rules but the search's) and how it was timed (``isolation``: a candidate is screened pinned,
    farm.jobs.tune_timing.SCREENING_ISOLATION)."""
    method = job.spec.get("method", {})
    rules = [r for r in method.get("layers", []) if r.get("skip") or r.get("bits") is not None]
    bits = method.get("bits", 8)
    return {
        "runtime": method.get("runtime", "torch"),
        "split": job.spec.get("split", "test"),
        "method": method.get("method"),
        # A method's default granularity is left out of its stored spec (dynamic's per_tensor): read it back.
        "granularity": method.get("granularity", _default_granularity(method.get("method"))),
        "fallback": [r["name"] for r in rules],
        "fallback_to": None if not rules else "fp32" if rules[0].get("skip") else f"int{rules[0]['bits']}",
        # Below 8 bits static and qat are fake quantization (farm.quant.config's ``simulated``), whatever its state.
        "simulated": method.get("method") in ("static", "qat") and isinstance(bits, int) and bits < 8,
        "isolation": (job.spec.get("benchmark") or {}).get("isolation", "exclusive"),
    }


@functools.cache
def _default_granularity(method: str | None) -> str | None:
    """The granularity a method's config takes when its spec names none (None: the method has no such field)."""
    cls = METHODS.get(method or "")
    field = next((f for f in dataclasses.fields(cls) if f.name == "granularity"), None) if cls else None
    return None if field is None else str(field.default)


def _costliest_first(jobs: list[PlannedJob]) -> list[PlannedJob]:
    """Stage 1's global recipes in the order they are released: the runtime whose builds take longest first
    (``Runtime.build_cost``), a quantized recipe before that runtime's fp32 export, so that a pool does not end the
    stage on one process building OpenVINO's last recipe while the other idles (longest processing time first,
    as later stages order theirs by what the previous stage took)."""
    # RUNTIMES, not farm.runtimes.engine: that imports torch, 2 s of the CLI before any job starts.

    def cost(job: PlannedJob) -> tuple[int, bool]:
        runtime = RUNTIMES.get(job.spec.method.runtime or DEFAULT_RUNTIME)
        return -(runtime.build_cost if runtime else 0), job.spec.method.method == "fp32"

    return sorted(jobs, key=cost)
