"""Planning a tune (``farm tune``, or a sweep spec with a ``tune:`` section): stage 1 of the search, no torch.

A tune is a sweep. Its spec text is an ordinary sweep spec of ONE model and ONE quantized method plus a ``tune:``
section (metric, target, objective, budget); stage 1 is planned here, up front:

- the fp32 reference on the test split (the sensitivity stage's validation-split jobs compare with its fp32 outputs
  on their split, computed in their process: farm.jobs.fp32_reference);
- per runtime asked: fp32 exported to that runtime (other than torch), and the method's all-quantized recipe per
  tensor and per channel (test split): the global recipes, the bar the search must beat;
- the stage job ``tune_sensitivity`` after all of them (farm/jobs/tune_stages.py), which adds the next stage.

Budget: per runtime at most ``layers + 2*log2(layers) + 4`` jobs (:func:`budget_per_runtime`). ``budget_jobs``
below stage 1's size is refused before anything is written; above it, the later stages are capped to it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from farm.errors import ConfigError, Problem
from farm.jobs.tune_timing import screening_spec
from farm.metric_targets import METRICS, Target, make_target
from farm.runtimes.registry import DEFAULT_RUNTIME, RUNTIMES, granularity_runs, runtime_problems, unavailable
from farm.spec.plan import Plan, PlannedJob, job_key

#: The methods a tune searches (layers fall back to floating point; the fp methods have nothing to fall back).
TUNE_METHODS = ("dynamic", "static", "qat")
#: The metrics ``farm tune --metric`` offers (farm.metric_targets has their ranges).
#: The metrics a tune targets: every one of farm.metric_targets.METRICS but a sweep's own metric function (its
#: stages read the built-in figures only).
TUNE_METRICS = tuple(name for name in METRICS if name != "metric")
OBJECTIVES = ("latency", "size")
#: The stages of a tune in order, each a stage job's expander (stage 1 is planned up front: "global").
STAGES = ("global", "tune_sensitivity", "tune_candidates", "tune_refine", "tune_verify", "tune_answer")
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
    """

    metric: str
    min_metric: float | None = None
    max_accuracy_drop: float | None = None
    objective: str = "latency"
    budget_jobs: int | None = None
    good_enough: bool = False

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


def default_runtimes(method: str) -> list[str]:
    """torch and every CPU runtime installed here that runs ``method``."""
    return [
        name
        for name, rt in RUNTIMES.items()
        if name == DEFAULT_RUNTIME or ("cpu" in rt.devices and method in rt.methods and unavailable(name) is None)
    ]


def tune_text(
    *,
    model: str,
    dataset: str,
    method: str,
    runtimes: Sequence[str],
    settings: TuneSettings,
    batch_size: int,
    threads: int | None,
    max_time_s: float | None = None,
    output: str | int | None = None,
) -> str:
    """The sweep spec (YAML) of a tune asked on the command line; its ``tune:`` section marks it as a tune.

    ``output`` picks the model output the metric is computed on (a dict key or tuple index; None: the logits).

    Raises:
        ConfigError: an unknown method or runtime (before any planning).
    """
    if method not in TUNE_METHODS:
        raise ConfigError(f"--method: a tune searches {', '.join(TUNE_METHODS)}, not {method!r}")
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
    name = f"tune {model} {method} {settings.metric} {target} {settings.objective}"
    data: dict[str, Any] = {
        "name": name[:200],
        "models": [model],
        "dataset": dataset,
        "methods": [method],
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
    if not isinstance(section.get("good_enough", False), bool):
        problems.append(Problem("tune.good_enough", f"must be true or false, got {section.get('good_enough')!r}"))
    for key in ("min_metric", "max_accuracy_drop"):
        v = section.get(key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            problems.append(Problem(f"tune.{key}", f"must be a number, got {v!r}"))
    if problems:
        raise ConfigError(problems, source=source)
    floats = {k: float(section[k]) for k in ("min_metric", "max_accuracy_drop") if section.get(k) is not None}
    settings = TuneSettings.from_dict({**section, "metric": metric, **floats})
    make_target(settings.metric, settings.min_metric, settings.max_accuracy_drop)
    return settings


def stage1_size(runtimes: Sequence[str], method: str = "static", granularity: str | None = None) -> int:
    """Stage 1's jobs: the fp32 reference, per runtime its global recipes (per tensor and per channel, one where
    the tune fixes it or the runtime runs one) and (off torch) the exported fp32, and the sensitivity stage job."""
    one = [bool(granularity or RUNTIMES[r].fixed_granularity(method)) for r in runtimes]
    return 2 + sum((2 - fixed) + (r != DEFAULT_RUNTIME) for r, fixed in zip(runtimes, one, strict=True))


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
        ConfigError: the spec's problems, not one model and one tuned method, a bad target, a runtime that can't
            run the method, a budget below stage 1's size.
    """
    from farm.jobs.stages import stage_job
    from farm.spec.load import load_spec

    settings = settings_of(data.get("tune"), source)
    make_target(settings.metric, settings.min_metric, settings.max_accuracy_drop, labelled)
    name, params, runtimes = _checked(data, settings, source)
    grid = {k: v for k, v in data.items() if k != "tune"}
    axes = {**params, "granularity": [params["granularity"]] if "granularity" in params else list(GRANULARITIES)}
    grid.update(methods=["fp32", {name: axes}], runtime=runtimes)
    plan = load_spec(
        yaml.safe_dump(grid, sort_keys=False), source=source, limit=None, pools=pools, remote_digest=remote_digest
    )
    (reference,) = plan.references
    # Global int8 recipes only rank: screened, the answer timed again (tune_verify); fp32 keeps the tune's timing.
    globals_ = [_screened_job(j) if j.spec.method.method != "fp32" else j for j in plan.jobs if j.role != "reference"]
    if "granularity" not in params:  # both enumerated: not the one a runtime would not run (the same build twice)
        globals_ = [j for j in globals_ if granularity_runs(j.spec.method)]
    jobs = [reference, *_costliest_first(globals_)]
    stage_params = {
        **settings.to_dict(),
        "method": name,
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


#: The keys a tune's spec may have: one model, one method, the runtimes, how to measure, and the tune section.
TUNE_SPEC_KEYS = ("name", "description", "models", "dataset", "methods", "runtime", "benchmark", "seed", "output",
                  "metric", "tune")  # fmt: skip


def _checked(data: Mapping[str, Any], settings: TuneSettings, source: str) -> tuple[str, dict[str, Any], list[str]]:
    """The tuned method, its parameters and the runtimes, once the spec is a tune's: only a tune's keys, one model,
    one method, bits 8 for a latency search, runtimes that can run it here, a budget that holds stage 1.

    Raises:
        ConfigError: every problem found.
    """
    extra = [k for k in data if k not in TUNE_SPEC_KEYS]
    if extra:  # a tune plans its own grid: another axis would break its budget and its stages' reading of it
        raise ConfigError(
            [Problem(k, f"not part of a tune (a tune spec has {', '.join(TUNE_SPEC_KEYS)})") for k in extra],
            source=source,
        )
    models, methods = data.get("models"), data.get("methods")
    if not isinstance(models, list) or len(models) != 1:
        raise ConfigError("a tune searches one model: models must list exactly one", source=source)
    if not isinstance(methods, list) or len(methods) != 1:
        raise ConfigError(
            f"a tune searches one method: methods must list one of {', '.join(TUNE_METHODS)}", source=source
        )
    name, params = _method_entry(methods[0], source)
    if settings.objective == "latency" and int(params.get("bits", 8)) < 8:
        raise ConfigError(
            f"bits {params['bits']} is simulated (fake quantization on fp32 kernels): it has no deployed latency "
            "to search for; use bits 8, or --objective size",
            source=source,
        )
    given = data.get("runtime")
    runtimes = list([given] if isinstance(given, str) else (given or default_runtimes(name)))
    problems = [p for r in runtimes for p in runtime_problems(r, name)]
    problems += [Problem("runtime", why) for r in runtimes if r in RUNTIMES and (why := unavailable(r)) is not None]
    if problems:
        raise ConfigError(problems, source=source)
    size = stage1_size(runtimes, name, params.get("granularity"))
    if settings.budget_jobs is not None and settings.budget_jobs < size:
        raise ConfigError(
            f"--budget-jobs {settings.budget_jobs} is below stage 1's {size} jobs (the fp32 reference and exports, "
            f"the global recipes on {', '.join(runtimes)}, and the sensitivity stage)",
            source=source,
        )
    return name, params, runtimes


def _method_entry(entry: Any, source: str) -> tuple[str, dict[str, Any]]:
    """(name, fixed parameters) of the one method entry of a tune (a name, or {name: {param: value}})."""
    if isinstance(entry, str):
        name, params = entry, {}
    elif isinstance(entry, Mapping) and len(entry) == 1:
        name, raw = next(iter(entry.items()))
        params = dict(raw or {}) if isinstance(raw, Mapping) else {}
    else:
        raise ConfigError(f"methods[0]: a method name or {{name: {{param: value}}}}, got {entry!r}", source=source)
    if name not in TUNE_METHODS:
        raise ConfigError(f"methods[0]: a tune searches {', '.join(TUNE_METHODS)}, not {name!r}", source=source)
    lists = [k for k, v in params.items() if isinstance(v, list)]
    if lists:
        raise ConfigError(
            f"methods[0].{name}: a tune takes one value per parameter, not an axis ({', '.join(lists)})", source=source
        )
    if "layers" in params:
        raise ConfigError(f"methods[0].{name}.layers: the tune chooses the layer rules itself", source=source)
    return str(name), params


def _screened_job(job: PlannedJob) -> PlannedJob:
    """A planned global recipe timed as it is screened (its key follows its spec)."""
    spec = screening_spec(job.spec)
    if spec == job.spec:
        return job
    return dataclasses.replace(job, key=job_key(spec, job.weights_digest), spec=spec)


def info(job: Any) -> dict[str, Any]:
    """What the search reads of a job: runtime, split, granularity, the layers it keeps in floating point and how it
    was timed (``isolation``: a candidate is screened pinned, farm.jobs.tune_timing.SCREENING_ISOLATION)."""
    method = job.spec.get("method", {})
    return {
        "runtime": method.get("runtime", "torch"),
        "split": job.spec.get("split", "test"),
        "method": method.get("method"),
        "granularity": method.get("granularity"),
        "fallback": [r["name"] for r in method.get("layers", []) if r.get("skip")],
        "isolation": (job.spec.get("benchmark") or {}).get("isolation", "exclusive"),
    }


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
