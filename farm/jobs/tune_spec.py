"""What a tune's spec may say (farm/jobs/tune_plan.py plans it): one model, its methods (each once, one value per
parameter), runtimes that run one of them here, and a budget that holds stage 1; every problem found before
anything is planned or written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from farm.errors import ConfigError, Problem
from farm.quant.config import MIN_BITS
from farm.quant.deploy import deploy_problems
from farm.runtimes.registry import DEFAULT_RUNTIME, RUNTIMES, runtime_problems, unavailable

#: The methods a tune searches (layers fall back to floating point; the fp methods have nothing to fall back).
TUNE_METHODS = ("dynamic", "static", "qat")


def default_runtimes(methods: str | Sequence[str], simulated: bool = False) -> list[str]:
    """torch and every CPU runtime installed here that runs ``methods`` (one of them, where several are asked); torch
    alone where they are ``simulated`` (below 8 bits)."""
    wanted = [methods] if isinstance(methods, str) else list(methods)
    if simulated:
        return [DEFAULT_RUNTIME]
    return [
        name
        for name, rt in RUNTIMES.items()
        if name == DEFAULT_RUNTIME
        or ("cpu" in rt.devices and any(m in rt.methods for m in wanted) and unavailable(name) is None)
    ]


def stage1_size(
    runtimes: Sequence[str],
    method: str = "static",
    granularity: str | None = None,
    *,
    methods: Mapping[str, str | None] | None = None,
) -> int:
    """Stage 1's jobs: the fp32 reference, per runtime its global recipes (per method it runs, per tensor and per
    channel, one where the tune fixes it or the runtime runs one) and (off torch) the exported fp32, and the
    sensitivity stage job. ``methods`` (name: the granularity the tune fixes, or None) replaces ``method`` and
    ``granularity`` where a tune searches several."""
    asked = dict(methods) if methods is not None else {method: granularity}
    size = 2
    for r in runtimes:
        runs = [m for m in asked if m in RUNTIMES[r].methods]
        size += (r != DEFAULT_RUNTIME) + sum(2 - bool(asked[m] or RUNTIMES[r].fixed_granularity(m)) for m in runs)
    return size


#: The keys a tune's spec may have: one model, its methods, the runtimes, how to measure, and the tune section.
TUNE_SPEC_KEYS = ("name", "description", "models", "dataset", "methods", "runtime", "benchmark", "seed", "output",
                  "metric", "tune")  # fmt: skip


def checked_spec(
    data: Mapping[str, Any], objective: str, budget_jobs: int | None, source: str
) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """The tuned methods (name, parameters) and the runtimes, once the spec is a tune's: only a tune's keys, one
    model, each method once, bits 8 for a latency search, runtimes that can run a method of it here, a budget that
    holds stage 1.

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
    if not isinstance(methods, list) or not methods:
        raise ConfigError(
            f"a tune searches one method or more: methods must list {', '.join(TUNE_METHODS)} (each at most once)",
            source=source,
        )
    entries = [_method_entry(entry, i, source) for i, entry in enumerate(methods)]
    names = [name for name, _ in entries]
    again = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if again is not None:
        raise ConfigError(f"methods: {again} is listed twice (a tune searches each method once)", source=source)
    for _, params in entries:
        if objective == "latency" and _bits(params) < 8:
            raise ConfigError(
                f"bits {params['bits']} is simulated (fake quantization on fp32 kernels): it has no deployed latency "
                "to search for; use bits 8, or --objective size",
                source=source,
            )
    low = [name for name, params in entries if _bits(params) < 8]
    if low and len(low) < len(entries):  # a packed size estimate against files: not one answer's comparison
        real = ", ".join(name for name, _ in entries if name not in low)
        raise ConfigError(
            f"methods: {', '.join(low)} below 8 bits is simulated and {real} is not: their sizes are a packed "
            "estimate against a file's; tune them apart",
            source=source,
        )
    given = data.get("runtime")
    # Below 8 bits a method is simulated in torch (no other runtime has its kernels): torch alone by default.
    runtimes = list([given] if isinstance(given, str) else (given or default_runtimes(names, bool(low))))
    problems = []
    for r in runtimes:
        if low and r in RUNTIMES and r != DEFAULT_RUNTIME:  # the method's own check would drop its jobs there
            problems += [
                Problem("runtime", p.message)
                for name, params in entries
                for p in deploy_problems(r, None, name, _bits(params))
                if p.path == "bits"
            ]
            continue
        cant = [runtime_problems(r, name) for name in names]
        if all(cant):  # a runtime that runs none of the methods (one that runs some searches those)
            problems += cant[0] if len(names) == 1 or r not in RUNTIMES else [_runs_none(r, names)]
    known = [r for r in runtimes if r in RUNTIMES]
    if not problems and len(names) > 1:  # each runtime runs one of them: is any method left to no runtime?
        problems += [
            Problem("methods", f"no runtime asked ({', '.join(known)}) runs {name}")
            for name in names
            if not any(name in RUNTIMES[r].methods for r in known)
        ]
    problems += [Problem("runtime", why) for r in known if (why := unavailable(r)) is not None]
    if problems:
        raise ConfigError(problems, source=source)
    size = stage1_size(runtimes, methods={name: params.get("granularity") for name, params in entries})
    if budget_jobs is not None and budget_jobs < size:
        raise ConfigError(
            f"--budget-jobs {budget_jobs} is below stage 1's {size} jobs (the fp32 reference and exports, "
            f"the global recipes on {', '.join(runtimes)}, and the sensitivity stage)",
            source=source,
        )
    return entries, runtimes


def _bits(params: Mapping[str, Any]) -> int:
    """A method entry's bit-width (8 where it names none, or one that is not an integer: the method's own checks say
    what is wrong with it)."""
    bits = params.get("bits", 8)
    if isinstance(bits, float) and bits.is_integer():  # 4.0 is 4, as the method's own parameter check reads it
        bits = int(bits)
    # Out of range (1, 0): the method's own parameter check refuses it, saying which bit-widths it takes.
    return bits if isinstance(bits, int) and not isinstance(bits, bool) and bits >= MIN_BITS else 8


def _runs_none(runtime: str, names: Sequence[str]) -> Problem:
    can = ", ".join(m for m in RUNTIMES[runtime].methods if m in TUNE_METHODS)
    return Problem("runtime", f"runtime {runtime} runs none of {', '.join(names)}; of a tune's methods it runs: {can}")


def _method_entry(entry: Any, index: int, source: str) -> tuple[str, dict[str, Any]]:
    """(name, fixed parameters) of a method entry of a tune (a name, or {name: {param: value}})."""
    where = f"methods[{index}]"
    if isinstance(entry, str):
        name, params = entry, {}
    elif isinstance(entry, Mapping) and len(entry) == 1:
        name, raw = next(iter(entry.items()))
        params = dict(raw or {}) if isinstance(raw, Mapping) else {}
    else:
        raise ConfigError(f"{where}: a method name or {{name: {{param: value}}}}, got {entry!r}", source=source)
    if name not in TUNE_METHODS:
        raise ConfigError(f"{where}: a tune searches {', '.join(TUNE_METHODS)}, not {name!r}", source=source)
    lists = [k for k, v in params.items() if isinstance(v, list)]
    if lists:
        raise ConfigError(
            f"{where}.{name}: a tune takes one value per parameter, not an axis ({', '.join(lists)})", source=source
        )
    if "layers" in params:
        raise ConfigError(f"{where}.{name}.layers: the tune chooses the layer rules itself", source=source)
    return str(name), params
