"""Sweep specs: YAML (or JSON) validated with pydantic, expanded into jobs with deterministic keys.

Every problem is collected and reported at once, each with its path
(``methods[2].static.observer: 'minmax2' is not one of ...``). Nothing here imports torch: the producer
plans and submits sweeps from a laptop.

Expansion is models x methods x each method's parameter axes x bits (integer methods) x
calibration_size (static, qat) x backend, minus ``exclude``, plus ``include``, plus one fp32 reference
job per (model, weights, dataset, device) that every other job of that model is compared with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from farm.errors import ConfigError, Problem
from farm.jobs.contract import ENGINE_VERSION, JobSpec
from farm.quant.config import (
    BACKENDS,
    MAX_BATCH_SIZE,
    MAX_CALIBRATION_SIZE,
    MAX_THREADS,
    METHODS,
    BenchmarkConfig,
    Fp32Config,
    MethodConfig,
    parse_method,
    public_methods,
    resolve_device,
)
from farm.routing import Pools, route
from farm.zoo.refs import parse_dataset_ref, parse_model_ref

DEFAULT_JOB_LIMIT = 10_000
# Past this multiple of the limit, a spec is refused from its axis lengths alone, before expansion.
_EARLY_LIMIT_FACTOR = 10
# Keys an exclude / include entry may name besides a method's own parameters.
_JOB_KEYS = ("model", "dataset", "method", "bits", "calibration_size", "backend", "device")


class _Strict(BaseModel):
    # strict: YAML's yes / on / true and quoted numbers are not integers (as for method parameters).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class BenchmarkSpec(_Strict):
    batch_size: list[int] = Field(default_factory=lambda: [1, 8])
    threads: int = Field(1, ge=1, le=MAX_THREADS)
    device: str = "auto"
    warmup_s: float = Field(0.2, ge=0)
    max_time_s: float = Field(3.0, gt=0)
    min_reps: int = Field(20, ge=1)
    rel_tol: float = Field(0.02, gt=0, lt=1)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("at least one batch size is needed")
        bad = [b for b in v if b < 1]
        if bad:
            raise ValueError(f"batch sizes must be at least 1, got {bad[0]}")
        bad = [b for b in v if b > MAX_BATCH_SIZE]
        if bad:
            raise ValueError(f"batch sizes must be at most {MAX_BATCH_SIZE}, got {bad[0]}")
        if len(set(v)) != len(v):
            raise ValueError("batch sizes repeat")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda"):
            raise ValueError(f"{v!r} is not one of auto, cpu, cuda")
        return v

    def config(self) -> BenchmarkConfig:
        return BenchmarkConfig(
            batch_sizes=tuple(self.batch_size),
            threads=self.threads,
            device=self.device,
            warmup_s=self.warmup_s,
            max_time_s=self.max_time_s,
            min_reps=self.min_reps,
            rel_tol=self.rel_tol,
        )


class SweepSpec(_Strict):
    """The structure of a spec file; the meaning of its values is checked by :func:`load_spec`."""

    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    models: list[Any] = Field(min_length=1)
    dataset: str = "sklearn:digits"
    methods: list[Any] = Field(min_length=1)
    bits: list[int] | None = None
    calibration_size: list[int] | None = None
    backend: list[str] | None = None
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    include: list[dict[str, Any]] = Field(default_factory=list)
    seed: int = Field(0, ge=-(2**63), le=2**63 - 1)

    @field_validator("bits", "calibration_size", "backend", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if v is not None and not isinstance(v, list) else v

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: list[int] | None) -> list[int] | None:
        for b in v or []:
            if not 2 <= b <= 8:
                raise ValueError(f"must be between 2 and 8, got {b}")
        return v

    @field_validator("calibration_size")
    @classmethod
    def _calibration(cls, v: list[int] | None) -> list[int] | None:
        for n in v or []:
            if n < 1:
                raise ValueError(f"must be at least 1, got {n}")
            if n > MAX_CALIBRATION_SIZE:
                raise ValueError(f"must be at most {MAX_CALIBRATION_SIZE}, got {n}")
        return v

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: list[str] | None) -> list[str] | None:
        for b in v or []:
            if b not in BACKENDS:
                raise ValueError(f"{b!r} is not one of {', '.join(BACKENDS)}")
        return v


@dataclass(frozen=True)
class ModelEntry:
    ref: str
    weights: str | None
    dataset: str


@dataclass(frozen=True)
class PlannedJob:
    """One job of an expanded sweep.

    Attributes:
        key: sha256 of the job's canonical JSON; equal jobs have equal keys in every process.
        role: "reference" for an fp32 job others compare with, "trial" otherwise.
        spec: what the worker runs.
        device: where it is evaluated and timed.
        reference_key: the key of the fp32 job this one compares with (None for references).
    """

    key: str
    role: str
    spec: JobSpec
    device: str
    weights_digest: str | None
    reference_key: str | None

    @property
    def method(self) -> MethodConfig:
        return self.spec.method

    def columns(self) -> dict[str, Any]:
        """The typed parameter columns of the jobs table."""
        p = self.spec.method.params()
        return {
            "model": self.spec.model,
            "dataset": self.spec.dataset,
            "method": self.spec.method.method,
            "bits": p.get("bits"),
            "calibration_size": p.get("calibration_size"),
            "backend": p.get("backend"),
            "observer": p.get("observer"),
            "granularity": p.get("granularity"),
            "device": self.device,
        }


@dataclass
class Plan:
    """An expanded sweep: its jobs (references first) and notes for the reader."""

    spec: SweepSpec
    text: str
    jobs: list[PlannedJob]
    notes: list[str] = field(default_factory=list)

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def references(self) -> list[PlannedJob]:
        return [j for j in self.jobs if j.role == "reference"]


def read_spec_text(path: str | Path) -> str:
    """The spec file's text.

    Raises:
        ConfigError: the file does not exist or can't be read.
    """
    p = Path(path)
    try:
        return p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"spec file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"spec file {p} can't be read: {e}") from None


def load_spec(
    text: str, *, source: str = "spec", limit: int | None = DEFAULT_JOB_LIMIT, pools: Pools | None = None
) -> Plan:
    """Parse, validate and expand a spec.

    Args:
        text: YAML or JSON.
        source: the file name, for messages.
        limit: refuse a spec expanding past this many jobs (None: no limit).
        pools: the worker pools a farm submission routes to; a named (non-default) pool becomes part of the
            keys of the jobs it measures.

    Returns:
        The plan.

    Raises:
        ConfigError: listing every problem with its path.
    """
    data = _parse_text(text, source)
    problems: list[Problem] = []
    spec: SweepSpec | None = None
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        problems.extend(_pydantic_problems(e))
    # The values pydantic leaves loosely typed (references, method parameters) are checked here, whether or
    # not the structure was valid, so that one run reports everything.
    raw = data if isinstance(data, dict) else {}
    default_dataset = raw.get("dataset", "sklearn:digits")
    models = _check_models(raw.get("models"), default_dataset if isinstance(default_dataset, str) else None, problems)
    methods = _check_methods(raw.get("methods"), problems)
    _check_dataset(default_dataset, problems)
    if spec is not None and methods is not None:
        if spec.bits is not None and not any(METHODS[name].integer for name, _ in methods):
            problems.append(
                Problem("bits", "given, but no method in methods takes a bit-width (fp32, fp16, bf16 are float)")
            )
        _check_filters(spec.exclude, "exclude", problems)
        _check_filters(spec.include, "include", problems, include=True)
    if problems or spec is None or models is None or methods is None:
        raise ConfigError(problems, source=source)
    if limit is not None:
        # Refuse a runaway product before building (and hashing) every job of it.
        bound = _product_bound(spec, models, methods)
        if bound > _EARLY_LIMIT_FACTOR * limit:
            raise ConfigError(
                f"the spec's axes multiply to {bound:,} combinations before exclude, far past the job limit of "
                f"{limit:,}: narrow its axes or pass --force",
                source=source,
            )
    plan = _expand(spec, text, models, methods, problems, pools)
    if problems:
        raise ConfigError(problems, source=source)
    if limit is not None and len(plan.jobs) > limit:
        raise ConfigError(
            f"the spec expands to {len(plan.jobs):,} jobs, past the limit of {limit:,}: "
            "narrow its axes or pass --force",
            source=source,
        )
    return plan


def job_key(spec: JobSpec, weights_digest: str | None) -> str:
    """sha256 of a job's canonical JSON: model, weights digest, dataset, method config, seed, benchmark, engine."""
    payload: dict[str, Any] = {
        "model": spec.model,
        "weights": weights_digest,
        "dataset": spec.dataset,
        "method": spec.method.to_dict(),
        "seed": spec.seed,
        "benchmark": spec.benchmark.to_dict(),
        "engine_version": ENGINE_VERSION,
    }
    if spec.pool is not None:  # only named pools: local runs and the default farm pools share results
        payload["pool"] = spec.pool
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --- parsing ---------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", key_node.start_mark
            )
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)  # type: ignore[arg-type]


def _parse_text(text: str, source: str) -> Any:
    if source.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}", source=source) from None
    else:
        try:
            data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            what = getattr(e, "problem", None) or str(e)
            raise ConfigError(f"invalid YAML at {where}{what}", source=source) from None
    if not isinstance(data, dict):
        raise ConfigError("a spec must be a mapping with name, models and methods", source=source)
    return data


def _path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _pydantic_problems(e: ValidationError) -> list[Problem]:
    problems = []
    valid_top = ", ".join(SweepSpec.model_fields)
    for err in e.errors():
        loc, kind, msg = err["loc"], err["type"], err["msg"]
        path = _path(loc)
        if kind == "extra_forbidden":
            where = "top-level key" if len(loc) == 1 else "key"
            valid = valid_top if len(loc) == 1 else ", ".join(BenchmarkSpec.model_fields)
            problems.append(Problem(path, f"unknown {where} (valid: {valid})"))
        elif kind == "missing":
            problems.append(Problem(path, "required"))
        elif kind == "too_short":
            problems.append(Problem(path, "must list at least one"))
        elif kind.endswith("_type") or kind.endswith("_parsing"):
            wanted = kind.split("_")[0]
            wanted = {"dict": "mapping", "model": "mapping"}.get(wanted, wanted)
            problems.append(Problem(path, f"must be {_article(wanted)}, got {err.get('input')!r}"))
        elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            word = {"greater_than_equal": "at least", "greater_than": "greater than", "less_than_equal": "at most"}
            bound = next(iter(err.get("ctx", {}).values()), "?")
            problems.append(Problem(path, f"must be {word.get(kind, 'less than')} {bound}, got {err.get('input')!r}"))
        elif kind == "value_error":
            problems.append(Problem(path, msg.removeprefix("Value error, ")))
        else:
            problems.append(Problem(path, msg))
    return problems


def _article(word: str) -> str:
    word = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}.get(word, word)
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


# --- semantic checks ---------------------------------------------------------------------------------------


def _check_dataset(ref: Any, problems: list[Problem], path: str = "dataset") -> None:
    if not isinstance(ref, str):
        return
    try:
        parse_dataset_ref(ref)
    except ConfigError as e:
        problems.extend(Problem(path, p.message) for p in e.problems)


def _check_models(raw: Any, default_dataset: str | None, problems: list[Problem]) -> list[ModelEntry] | None:
    if not isinstance(raw, list) or not raw:
        return None
    entries: list[ModelEntry] = []
    seen: dict[tuple[str, str | None, str], int] = {}
    ok = True
    for i, item in enumerate(raw):
        path = f"models[{i}]"
        if isinstance(item, str):
            item = {"ref": item}
        if not isinstance(item, dict):
            problems.append(Problem(path, "must be a reference string or a mapping with ref, weights, dataset"))
            ok = False
            continue
        unknown = set(item) - {"ref", "weights", "dataset"}
        if unknown:
            problems.append(Problem(f"{path}.{sorted(unknown)[0]}", "unknown key (valid: ref, weights, dataset)"))
            ok = False
        ref, weights, dataset = item.get("ref"), item.get("weights"), item.get("dataset", default_dataset)
        if not isinstance(ref, str):
            problems.append(Problem(f"{path}.ref", "required: a model reference such as farm:digits-cnn"))
            ok = False
            continue
        try:
            parse_model_ref(ref)
        except ConfigError as e:
            problems.extend(Problem(path, p.message) for p in e.problems)
            ok = False
        if weights is not None and not isinstance(weights, str):
            problems.append(Problem(f"{path}.weights", "must be a path or s3:// URI"))
            ok = False
        if "dataset" in item:
            if not isinstance(item["dataset"], str):
                problems.append(Problem(f"{path}.dataset", "must be a dataset reference"))
                ok = False
            else:
                before = len(problems)
                _check_dataset(item["dataset"], problems, f"{path}.dataset")
                ok = ok and len(problems) == before
        if not isinstance(dataset, str):
            continue
        ident = (ref, weights, dataset)
        if ident in seen:
            problems.append(Problem(path, f"duplicate of models[{seen[ident]}] ({ref})"))
            ok = False
        seen[ident] = i
        entries.append(ModelEntry(ref, weights, dataset))
    return entries if ok else None


def _check_methods(raw: Any, problems: list[Problem]) -> list[tuple[str, dict[str, list[Any]]]] | None:
    """Each entry as (name, {parameter: [values...]}), every value checked on its own."""
    if not isinstance(raw, list) or not raw:
        return None
    names = ", ".join(c.method for c in public_methods())
    out: list[tuple[str, dict[str, list[Any]]]] = []
    ok = True
    for i, item in enumerate(raw):
        path = f"methods[{i}]"
        params: dict[str, Any]
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, params = next(iter(item.items()))
            params = {} if params is None else params
            if not isinstance(params, dict):
                problems.append(Problem(f"{path}.{name}", "parameters must be a mapping of name: value or [values]"))
                ok = False
                continue
        else:
            problems.append(Problem(path, "must be a method name, or one name mapped to its parameters"))
            ok = False
            continue
        if name not in METHODS:
            problems.append(Problem(path, f"unknown method {name!r}; choose one of {names}"))
            ok = False
            continue
        axes = {k: (v if isinstance(v, list) else [v]) for k, v in params.items()}
        for param, values in axes.items():
            if not values:
                problems.append(Problem(f"{path}.{name}.{param}", "an empty list gives no jobs"))
                ok = False
            for value in values:
                try:
                    parse_method(name, {param: value}, path=f"{path}.{name}")
                except ConfigError as e:
                    for p in e.problems:
                        if p not in problems:
                            problems.append(p)
                    ok = False
        out.append((name, axes))
    return out if ok else None


def _check_filters(
    entries: list[dict[str, Any]], where: str, problems: list[Problem], *, include: bool = False
) -> None:
    # dataclasses.fields, not __dataclass_fields__: the latter also holds the ClassVars (summary, integer, ...).
    valid = set(_JOB_KEYS).union(f.name for cls in METHODS.values() for f in dataclasses.fields(cls))
    for i, entry in enumerate(entries):
        for key in entry:
            if key not in valid:
                problems.append(Problem(f"{where}[{i}].{key}", f"unknown key (valid: {', '.join(sorted(valid))})"))
        if include:
            method = entry.get("method")
            if not isinstance(method, str):
                problems.append(Problem(f"{where}[{i}].method", "required: the method of the extra job"))
            elif method not in METHODS:
                names = ", ".join(c.method for c in public_methods())
                problems.append(Problem(f"{where}[{i}].method", f"unknown method {method!r}; choose one of {names}"))
            # An extra job may name a model or dataset the spec does not list: check them as models[] are.
            if "model" in entry:
                if not isinstance(entry["model"], str):
                    problems.append(Problem(f"{where}[{i}].model", "must be a model reference"))
                else:
                    try:
                        parse_model_ref(entry["model"])
                    except ConfigError as e:
                        problems.extend(Problem(f"{where}[{i}].model", p.message) for p in e.problems)
            if "dataset" in entry:
                if isinstance(entry["dataset"], str):
                    _check_dataset(entry["dataset"], problems, f"{where}[{i}].dataset")
                else:
                    problems.append(Problem(f"{where}[{i}].dataset", "must be a dataset reference"))


# --- expansion -----------------------------------------------------------------------------------------------


def _expand(
    spec: SweepSpec,
    text: str,
    models: list[ModelEntry],
    methods: list[tuple[str, dict[str, list[Any]]]],
    problems: list[Problem],
    pools: Pools | None,
) -> Plan:
    bench = spec.benchmark.config()
    notes: list[str] = []
    digests = {m.weights: _weights_digest(m.weights, i, problems) for i, m in enumerate(models) if m.weights}
    configs: dict[str, MethodConfig] = {}
    trials: dict[str, PlannedJob] = {}
    references: dict[str, PlannedJob] = {}
    skipped: dict[str, set[Any]] = {}

    benches: dict[str, BenchmarkConfig] = {}
    ref_keys: dict[tuple[ModelEntry, str], str] = {}

    def add(model: ModelEntry, cfg: MethodConfig, *, excludable: bool = True) -> None:
        device = _job_device(cfg, bench.device, problems)
        if device is None:
            return
        if excludable and spec.exclude:
            attrs = {"model": model.ref, "dataset": model.dataset, "device": device, "method": cfg.method}
            attrs.update(cfg.params())
            if any(_matches(attrs, ex) for ex in spec.exclude):
                return
        job_bench = benches.get(device) or benches.setdefault(device, _with_device(bench, device))
        digest = digests.get(model.weights) if model.weights else None
        ref_key = ref_keys.get((model, device))
        if ref_key is None:
            ref_pool = _named_pool(Fp32Config(), device, pools)
            ref_spec = JobSpec(model.ref, model.dataset, Fp32Config(), model.weights, spec.seed, job_bench, ref_pool)
            ref_key = ref_keys[(model, device)] = job_key(ref_spec, digest)
            references.setdefault(ref_key, PlannedJob(ref_key, "reference", ref_spec, device, digest, None))
        if cfg.method == "fp32":
            return  # the reference itself
        pool = _named_pool(cfg, device, pools)
        job_spec = JobSpec(model.ref, model.dataset, cfg, model.weights, spec.seed, job_bench, pool)
        key = job_key(job_spec, digest)
        trials.setdefault(key, PlannedJob(key, "trial", job_spec, device, digest, ref_key))

    for method_index, (name, axes) in enumerate(methods):
        for combo in _combinations(name, axes, spec, skipped, problems, f"methods[{method_index}].{name}"):
            cfg = _config(name, combo, configs, f"methods[{method_index}].{name}", problems)
            if cfg is None:
                continue
            for model in models:
                add(model, cfg)
    for i, entry in enumerate(spec.include):
        name = entry["method"]
        targets = [m for m in models if m.ref == entry["model"]] if "model" in entry else models
        if "model" in entry and not targets:
            dataset = entry.get("dataset", spec.dataset)
            targets = [ModelEntry(entry["model"], None, dataset)]
        axes = {k: (v if isinstance(v, list) else [v]) for k, v in entry.items() if k not in _JOB_KEYS}
        for key in ("bits", "calibration_size", "backend"):
            if key in entry:
                axes[key] = entry[key] if isinstance(entry[key], list) else [entry[key]]
        for combo in _product(axes):
            cfg = _config(name, combo, configs, f"include[{i}]", problems)
            if cfg is None:
                continue
            for model in targets:
                spec_model = ModelEntry(model.ref, model.weights, entry.get("dataset", model.dataset))
                add(spec_model, cfg, excludable=False)  # the product minus exclude, plus include
    for name, values in sorted(skipped.items()):
        supported = ", ".join(map(str, METHODS[name].supported_bits))
        notes.append(f"{name}: bits {', '.join(map(str, sorted(values)))} skipped (supports {supported})")
    jobs = list(references.values()) + list(trials.values())
    return Plan(spec, text, jobs, notes)


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


def _product_bound(spec: SweepSpec, models: list[ModelEntry], methods: list[tuple[str, dict[str, list[Any]]]]) -> int:
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
        total += n * len(models)
    for entry in spec.include:
        n = math.prod(len(v) if isinstance(v, list) else 1 for v in entry.values())
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
    return BenchmarkConfig(**{**bench.to_dict(), "batch_sizes": bench.batch_sizes, "device": device})


def _matches(attrs: dict[str, Any], entry: dict[str, Any]) -> bool:
    for key, want in entry.items():
        have = attrs.get(key)
        if isinstance(want, list):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


def _weights_digest(weights: str, index: int, problems: list[Problem]) -> str | None:
    """A digest that changes when the weights change: sha256 of a local file, the ETag of an S3 object."""
    path = f"models[{index}].weights"
    if weights.startswith("s3://"):
        from farm.artifacts import object_digest

        try:
            return object_digest(weights)
        except ConfigError as e:
            problems.extend(Problem(path, p.message) for p in e.problems)
            return None
    local = Path(weights.removeprefix("file://")).expanduser()
    if not local.is_file():
        problems.append(Problem(path, f"{weights} does not exist"))
        return None
    h = hashlib.sha256()
    with open(local, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
