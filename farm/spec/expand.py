"""Expansion of a checked spec into jobs.

models x methods x each method's parameter axes x bits (integer methods) x calibration_size (static, qat) x
backend x runtime, minus ``exclude``, plus ``include``, plus one fp32 reference job per (model, weights, dataset,
device) that every other job of that model is compared with. fp32 on a runtime other than torch is a trial
(the model exported and run there) compared with the torch fp32 reference; a configuration a runtime of the
``runtime`` axis cannot run is skipped for it with a plan note.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from farm.errors import ConfigError, Problem
from farm.jobs.contract import JobSpec
from farm.quant.bench_config import BenchmarkConfig
from farm.quant.config import METHODS, Fp32Config, MethodConfig, parse_method, resolve_device
from farm.quant.layers import param_axis, parse_rules
from farm.routing import Pools, route
from farm.runtimes.registry import DEFAULT_RUNTIME
from farm.spec.checks import ModelEntry
from farm.spec.plan import Plan, PlannedJob, job_key
from farm.spec.schema import JOB_KEYS, SweepSpec
from farm.spec.weights import RemoteDigest, weights_digest


def expand(
    spec: SweepSpec,
    text: str,
    models: list[ModelEntry],
    methods: list[tuple[str, dict[str, list[Any]]]],
    problems: list[Problem],
    pools: Pools | None,
    remote_digest: RemoteDigest | None = None,
) -> Plan:
    """The plan of a checked spec: references first, then trials; new problems are appended to ``problems``.

    Args:
        spec: the validated structure.
        text: the spec's text (its hash names the sweep's version).
        models: the checked ``models`` entries.
        methods: the checked ``methods`` entries, each as (name, {parameter: [values]}).
        problems: where a job that cannot be built says why.
        pools: the pools a farm submission routes to (a named pool is part of the keys), or None.
        remote_digest: the digest of an ``s3://`` weights object (see :func:`farm.spec.weights.weights_digest`).

    Returns:
        The plan.
    """
    digests = {
        m.weights: weights_digest(m.weights, f"models[{i}].weights", problems, remote_digest)
        for i, m in enumerate(models)
        if m.weights
    }
    jobs = _Jobs(spec, digests, pools, problems)
    configs: dict[str, MethodConfig] = {}
    skipped: dict[str, set[Any]] = {}
    runtimes = _RuntimeAxis(spec, jobs.bench.device)
    for method_index, (name, axes) in enumerate(methods):
        path = f"methods[{method_index}].{name}"
        parsed = made = 0
        for combo in _combinations(name, axes, spec, skipped, problems, path):
            cfg = _config(name, combo, configs, path, problems)
            if cfg is None:
                continue
            parsed += 1
            for variant in runtimes.variants(cfg, from_axis="runtime" not in axes):
                made += 1
                for model in models:
                    jobs.add(model, variant)
        if parsed and not made:
            problems.append(Problem(path, f"no runtime of the runtime axis runs it: {runtimes.why(name)}"))
    for i, entry in enumerate(spec.include):
        targets, axes = _included(entry, models, spec.dataset)
        for combo in _product(axes):
            cfg = _config(entry["method"], combo, configs, f"include[{i}]", problems)
            if cfg is None:
                continue
            for model in targets:
                jobs.add(model, cfg, excludable=False)  # the product minus exclude, plus include
    notes = []
    for name, values in sorted(skipped.items()):
        supported = ", ".join(map(str, METHODS[name].supported_bits))
        notes.append(f"{name}: bits {', '.join(map(str, sorted(values)))} skipped (supports {supported})")
    notes += runtimes.notes()
    return Plan(spec, text, list(jobs.references.values()) + list(jobs.trials.values()), notes)


class _RuntimeAxis:
    """The spec's ``runtime`` axis: each method config once per runtime, less those a runtime cannot run (a method
    it lacks, a simulated bit-width, a device it does not run on), which are skipped with a note, not an error."""

    def __init__(self, spec: SweepSpec, device: str) -> None:
        self.names = spec.runtime or []
        self.device = device
        self._skipped: dict[tuple[str, str], list[str]] = {}

    def variants(self, cfg: MethodConfig, *, from_axis: bool) -> list[MethodConfig]:
        """``cfg`` on every runtime of the axis it can run on (``cfg`` itself without an axis, or when the method
        names its own runtime)."""
        if not self.names or not from_axis:
            return [cfg]
        out = []
        for runtime in self.names:
            try:
                variant = cfg if runtime == cfg.runtime else cfg.replace(runtime=runtime)
                if runtime != DEFAULT_RUNTIME:
                    resolve_device(variant, self.device)
            except ConfigError as e:
                reasons = self._skipped.setdefault((cfg.method, runtime), [])
                reasons.extend(p.message for p in e.problems if p.message not in reasons)
                continue
            out.append(variant)
        return out

    def why(self, method: str) -> str:
        """Why ``method`` was skipped on every runtime of the axis."""
        return "; ".join(m for (name, _), why in self._skipped.items() if name == method for m in why)

    def notes(self) -> list[str]:
        """One line per method and runtime that skipped some of its configurations, with why."""
        return [
            f"{method} on {runtime}: skipped ({'; '.join(why)})" for (method, runtime), why in self._skipped.items()
        ]


class _Jobs:
    """The jobs of one expansion, deduplicated by key: each model's fp32 reference per device, then trials."""

    def __init__(
        self, spec: SweepSpec, digests: dict[str, str | None], pools: Pools | None, problems: list[Problem]
    ) -> None:
        self.spec, self.digests, self.pools, self.problems = spec, digests, pools, problems
        self.bench = spec.benchmark.config()
        self.references: dict[str, PlannedJob] = {}
        self.trials: dict[str, PlannedJob] = {}
        self._benches: dict[str, BenchmarkConfig] = {}
        self._ref_keys: dict[tuple[ModelEntry, str], str] = {}

    def add(self, model: ModelEntry, cfg: MethodConfig, *, excludable: bool = True) -> None:
        """Add the job of ``cfg`` on ``model`` (unless ``exclude`` drops it), and the reference it compares with."""
        device = _job_device(cfg, self.bench.device, self.problems)
        if device is None:
            return
        if excludable and self.spec.exclude:
            attrs = {"model": model.ref, "dataset": model.dataset, "device": device, "method": cfg.method}
            attrs.update(cfg.params())
            if any(_matches(attrs, ex) for ex in self.spec.exclude):
                return
        job_bench = self._benches.get(device) or self._benches.setdefault(device, _with_device(self.bench, device))
        digest = self.digests.get(model.weights) if model.weights else None
        ref_key = self._ref_keys.get((model, device))
        if ref_key is None:
            ref_pool = _named_pool(Fp32Config(), device, self.pools)
            ref_spec = JobSpec(
                model.ref, model.dataset, Fp32Config(), model.weights, self.spec.seed, job_bench, ref_pool,
                model.output, metric=self.spec.metric,  # the fp32 row carries the metric too: the baseline
            )  # fmt: skip
            ref_key = self._ref_keys[(model, device)] = job_key(ref_spec, digest)
            self.references.setdefault(ref_key, PlannedJob(ref_key, "reference", ref_spec, device, digest, None))
        if cfg.method == "fp32" and cfg.runtime == DEFAULT_RUNTIME:
            return  # the reference itself (fp32 on another runtime is a trial compared with it)
        pool = _named_pool(cfg, device, self.pools)
        job_spec = JobSpec(
            model.ref, model.dataset, cfg, model.weights, self.spec.seed, job_bench, pool, model.output,
            metric=self.spec.metric,
        )  # fmt: skip
        key = job_key(job_spec, digest)
        self.trials.setdefault(key, PlannedJob(key, "trial", job_spec, device, digest, ref_key))


def _included(
    entry: dict[str, Any], models: list[ModelEntry], default_dataset: str
) -> tuple[list[ModelEntry], dict[str, list[Any]]]:
    """The models an ``include`` entry adds jobs to (one it names but ``models`` lacks too), and its axes."""
    targets = [m for m in models if m.ref == entry["model"]] if "model" in entry else models
    if "model" in entry and not targets:
        targets = [ModelEntry(entry["model"], None, entry.get("dataset", default_dataset))]
    targets = [ModelEntry(m.ref, m.weights, entry.get("dataset", m.dataset), m.output) for m in targets]
    axes = {k: param_axis(k, v) for k, v in entry.items() if k not in JOB_KEYS}  # a layers rule list is one value
    for key in ("bits", "calibration_size", "backend"):
        if key in entry:
            axes[key] = entry[key] if isinstance(entry[key], list) else [entry[key]]
    return targets, axes


def _combinations(
    name: str,
    axes: dict[str, list[Any]],
    spec: SweepSpec,
    skipped: dict[str, set[Any]],
    problems: list[Problem],
    path: str,
) -> Iterable[dict[str, Any]]:
    cls = METHODS[name]
    fields = cls.__dataclass_fields__
    axes = dict(axes)
    if cls.integer and "bits" not in axes and spec.bits is not None:
        supported = [b for b in spec.bits if b in cls.supported_bits]
        if len(supported) < len(spec.bits):
            skipped.setdefault(name, set()).update(b for b in spec.bits if b not in supported)
        if not supported:
            takes = ", ".join(map(str, cls.supported_bits))
            problems.append(Problem(path, f"none of bits {spec.bits} applies to {name} (it takes {takes})"))
        axes["bits"] = supported
    if cls.calibrated and "calibration_size" not in axes and spec.calibration_size is not None:
        axes["calibration_size"] = list(spec.calibration_size)
    if "backend" in fields and "backend" not in axes and spec.backend is not None:
        axes["backend"] = list(spec.backend)
    return _product(axes)


def product_bound(spec: SweepSpec, models: list[ModelEntry], methods: list[tuple[str, dict[str, list[Any]]]]) -> int:
    """An upper bound of the job count before exclude: the product of every axis, plus the references."""
    total = len(models)  # one fp32 reference per model (per device, at most two)
    for name, axes in methods:
        cls = METHODS[name]
        fields = cls.__dataclass_fields__
        n = math.prod(len(v) for v in axes.values())
        if cls.integer and "bits" not in axes and spec.bits is not None:
            n *= max(1, len(spec.bits))
        if cls.calibrated and "calibration_size" not in axes and spec.calibration_size is not None:
            n *= max(1, len(spec.calibration_size))
        if "backend" in fields and "backend" not in axes and spec.backend is not None:
            n *= max(1, len(spec.backend))
        if "runtime" not in axes and spec.runtime is not None:
            n *= max(1, len(spec.runtime))
        total += n * len(models)
    for entry in spec.include:
        n = math.prod(len(param_axis(k, v)) for k, v in entry.items())
        total += n * (1 if "model" in entry else len(models))
    return total


def _product(axes: Mapping[str, list[Any]]) -> Iterable[dict[str, Any]]:
    keys = list(axes)
    for values in itertools.product(*(axes[k] for k in keys)):
        yield dict(zip(keys, values, strict=True))


def _config(
    name: str, combo: dict[str, Any], cache: dict[str, MethodConfig], path: str, problems: list[Problem]
) -> MethodConfig | None:
    cache_key = name + json.dumps(combo, sort_keys=True, default=str)
    if cache_key not in cache:
        try:
            cache[cache_key] = parse_method(name, combo, path=path)
        except ConfigError as e:
            for p in e.problems:
                if p not in problems:
                    problems.append(p)
            return None
    return cache[cache_key]


def _job_device(cfg: MethodConfig, requested: str, problems: list[Problem]) -> str | None:
    if cfg.runtime != DEFAULT_RUNTIME:
        try:
            return resolve_device(cfg, requested)
        except ConfigError as e:
            for p in e.problems:
                problem = Problem("benchmark.device", f"{cfg.method} on {cfg.runtime}: {p.message}")
                if problem not in problems:
                    problems.append(problem)
            return None
    if cfg.integer:
        return "cpu"  # torch.ao's int8 kernels are CPU kernels (qat may still fine-tune on CUDA)
    if cfg.method == "fp16" and requested == "cpu":
        problem = Problem("benchmark.device", "fp16 runs on CUDA only, and the benchmark device is cpu")
        if problem not in problems:
            problems.append(problem)
        return None
    return resolve_device(cfg, requested)


def _named_pool(cfg: MethodConfig, device: str, pools: Pools | None) -> str | None:
    """The named pool that measures this job (where it is benchmarked), or None for the default pools."""
    if pools is None:
        return None
    r = route(cfg, device, pools)
    measured_on = r.finish_queue or r.queue
    return None if measured_on in (Pools.cpu, Pools.gpu) else measured_on


def _with_device(bench: BenchmarkConfig, device: str) -> BenchmarkConfig:
    return dataclasses.replace(bench, device=device)


def _matches(attrs: dict[str, Any], entry: dict[str, Any]) -> bool:
    for key, want in entry.items():
        have = attrs.get(key)
        if key == "layers":  # one rule list, or a list of them: compared as parsed rules
            parsed = [parse_rules(value) for value in param_axis(key, want)]
            if have not in [rules for rules, problems in parsed if not problems]:  # a bad rule list matches nothing
                return False
        elif isinstance(want, list):
            if have not in want:
                return False
        elif have != want:
            return False
    return True
