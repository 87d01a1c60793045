"""The structure of a sweep spec: pydantic models, a YAML loader that refuses duplicate keys, and pydantic's
errors turned into :class:`~farm.errors.Problem` lines with their paths.

The meaning of the loosely typed values (model references, method parameters) is checked in
:mod:`farm.spec.checks`; nothing here imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from farm.errors import ConfigError, Problem
from farm.quant.bench_config import ISOLATION_MODES, MAX_BATCH_SIZE, MAX_THREADS, BenchmarkConfig
from farm.quant.config import BACKENDS, MAX_CALIBRATION_SIZE
from farm.runtimes.registry import RUNTIMES

# Keys an exclude / include entry may name besides a method's own parameters.
JOB_KEYS = ("model", "dataset", "method", "bits", "calibration_size", "backend", "device")


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
    isolation: str = "exclusive"
    #: Other runtimes whose fp32 export each trial is also timed side by side with (farm.quant.bench_config).
    rivals: list[str] = Field(default_factory=list)

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

    @field_validator("isolation")
    @classmethod
    def _isolation(cls, v: str) -> str:
        if v not in ISOLATION_MODES:
            raise ValueError(f"{v!r} is not one of {', '.join(ISOLATION_MODES)}")
        return v

    @field_validator("rivals")
    @classmethod
    def _rivals(cls, v: list[str]) -> list[str]:
        unknown = [r for r in v if r not in RUNTIMES]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not one of {', '.join(RUNTIMES)}")
        if len(set(v)) != len(v):
            raise ValueError("runtimes repeat")
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
            isolation=self.isolation,
            rivals=tuple(self.rivals),
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
    #: Deploy runtimes: every method runs on each (those a runtime cannot run are skipped for it, with a note).
    runtime: list[str] | None = None
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    include: list[dict[str, Any]] = Field(default_factory=list)
    seed: int = Field(0, ge=-(2**63), le=2**63 - 1)
    #: The model output every metric is computed on (a dict key or attribute, or a tuple index); per model too.
    output: Any = None  # checked by farm.spec.checks.check_output
    #: The user's metric function, ``entrypoint:pkg.module:function`` (allowlisted on the worker like models):
    #: every job stores its value as metric_value (farm.metric_targets).
    metric: str | None = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str | None) -> str | None:
        from farm.metric_targets import parse_metric_fn

        if v is None:
            return v
        try:
            return parse_metric_fn(v, source="metric")
        except ConfigError as e:
            raise ValueError(e.problems[0].message) from None

    @field_validator("bits", "calibration_size", "backend", "runtime", mode="before")
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

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, v: list[str] | None) -> list[str] | None:
        for r in v or []:
            if r not in RUNTIMES:
                raise ValueError(f"unknown runtime {r!r}: choose from {', '.join(RUNTIMES)}")
        if v is not None and len(set(v)) != len(v):
            raise ValueError("runtimes repeat")
        if v is not None and not v:
            raise ValueError("an empty list gives no jobs")
        return v


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


def parse_text(text: str, source: str) -> Any:
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


def pydantic_problems(e: ValidationError) -> list[Problem]:
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
