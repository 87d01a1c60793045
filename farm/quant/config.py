"""Method configurations: frozen, versioned, JSON round-trippable, validated with errors that name the field.

This module imports nothing but the standard library, so the producer (which never imports torch) can
validate sweep specs with the same rules the workers apply. The handlers that apply a config live in
sibling modules (``fp``, ``dynamic``, ``static``, ``qat``); ``registry`` maps each config type to its handler.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from farm.errors import ConfigError, Problem
from farm.quant import deploy
from farm.quant.layers import LayerRule, method_problems, parse_rules, rules_to_list
from farm.quant.params import check_value, param, problem_path, type_hints, type_name
from farm.runtimes.registry import DEFAULT_RUNTIME, RUNTIMES

OBSERVERS = ("minmax", "moving_average", "histogram", "percentile")
GRANULARITIES = ("per_tensor", "per_channel")
ACTIVATIONS = ("affine", "symmetric")
BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn")
OPTIMIZERS = ("sgd", "adam", "adamw")
TRAIN_DEVICES = ("auto", "cpu", "cuda")
LOSSES = ("auto", "ce", "kd")
HALF_MODES = ("cast", "autocast")
STATIC_MODES = ("fx", "eager")
MIN_BITS, MAX_BITS = 2, 8
#: Bound on the calibration size a job stores in its database row (a 32-bit column).
MAX_CALIBRATION_SIZE = 10_000_000
#: The deploy runtimes a method config may name (farm.runtimes.registry).
RUNTIME_NAMES = tuple(RUNTIMES)
#: The deploy parameters every method has, added after jobs were keyed (left out of to_dict at their default).
DEPLOY_PARAMS = ("runtime", "provider")
#: Parameters every method has that were added after jobs were keyed: the deploy ones and the per-layer rules.
LATE_PARAMS = (*DEPLOY_PARAMS, "layers")


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method config. Subclasses are frozen dataclasses whose fields are the parameters.

    Every method has the two deploy parameters: ``runtime`` (where the model is deployed and timed: eager torch,
    or exported to ONNX Runtime, OpenVINO, TensorRT) and ``provider`` (ONNX Runtime's execution provider).
    """

    method: ClassVar[str] = ""
    version: ClassVar[int] = 1
    summary: ClassVar[str] = ""
    #: Has a bit-width (the sweep's ``bits`` axis applies).
    integer: ClassVar[bool] = False
    #: Consumes calibration samples (the sweep's ``calibration_size`` axis applies).
    calibrated: ClassVar[bool] = False
    #: Not listed by ``farm methods`` (internal benchmarking aids).
    hidden: ClassVar[bool] = False
    #: Bit-widths an integer method accepts (a sweep's bits axis applies only these).
    supported_bits: ClassVar[tuple[int, ...]] = ()
    #: Parameters added after jobs were keyed: left out of to_dict at their default, so those keys don't change.
    omit_at_default: ClassVar[tuple[str, ...]] = LATE_PARAMS

    runtime: str = param(
        DEFAULT_RUNTIME,
        "where the model is deployed and timed: torch (eager), or exported to another runtime",
        choices=RUNTIME_NAMES,
    )
    provider: str | None = param(
        None, "onnxruntime execution provider, e.g. CUDAExecutionProvider; default: the runtime's own for the device"
    )
    layers: tuple[LayerRule, ...] = param(
        (),
        "per-layer rules (farm.quant.layers): by name glob / re:REGEX and/or type, skip (keep in floating point) "
        "or override bits, granularity, observer, dtype; later rules win",
    )

    def problems(self) -> list[Problem]:
        """Cross-field checks beyond each field's own type and range."""
        return []

    def deploy_problems(self) -> list[Problem]:
        """Whether the runtime can run this method, the provider is the runtime's, and the bit-width is real."""
        bits = getattr(self, "bits", None) if self.simulated else None
        return deploy.deploy_problems(self.runtime, self.provider, self.method, bits)

    @property
    def simulated(self) -> bool:
        """True when the figures come from fake quantization rather than real low-bit kernels."""
        return self.integer and int(getattr(self, "bits", 8)) < 8

    def params(self) -> dict[str, Any]:
        """The parameters as a plain dict (no method name or version)."""
        return dict(self._params)

    @functools.cached_property
    def _params(self) -> dict[str, Any]:
        # Every field is a scalar or a tuple of frozen rules, so a shallow read is exact (dataclasses.asdict
        # deep-copies: 20x slower).
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"method": ..., "version": ..., <params>}`` (less :attr:`omit_at_default` ones at
        their default)."""
        params = {k: v for k, v in self._params.items() if k not in self.omit_at_default or v != _default(self, k)}
        if "layers" in params:
            params["layers"] = rules_to_list(params["layers"])
        return {"method": self.method, "version": self.version, **params}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): equal configs give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def replace(self, **changes: Any) -> MethodConfig:
        """A validated copy with ``changes`` applied."""
        return parse_method(self.method, {**self.params(), **changes})

    def label(self) -> str:
        """A short human label such as ``static int8 minmax per_channel``."""
        return self.method


@dataclass(frozen=True)
class Fp32Config(MethodConfig):
    method: ClassVar[str] = "fp32"
    summary: ClassVar[str] = "the fp32 reference: the model as given, eager mode"


@dataclass(frozen=True)
class HalfConfig(MethodConfig):
    mode: str = param("cast", "cast the weights and inputs, or run under torch.autocast", choices=HALF_MODES)

    def label(self) -> str:
        return f"{self.method} ({self.mode})"


@dataclass(frozen=True)
class Fp16Config(HalfConfig):
    method: ClassVar[str] = "fp16"
    summary: ClassVar[str] = "float16 inference; needs a CUDA device"


@dataclass(frozen=True)
class Bf16Config(HalfConfig):
    method: ClassVar[str] = "bf16"
    summary: ClassVar[str] = "bfloat16 inference on CPU or CUDA"


@dataclass(frozen=True)
class DynamicConfig(MethodConfig):
    method: ClassVar[str] = "dynamic"
    summary: ClassVar[str] = (
        "int8 dynamic quantization of Linear/LSTM/GRU weights; activations quantized on the fly. "
        "Leaves Conv2d in fp32: check coverage"
    )
    integer: ClassVar[bool] = True
    supported_bits: ClassVar[tuple[int, ...]] = (8,)
    omit_at_default: ClassVar[tuple[str, ...]] = (*LATE_PARAMS, "granularity")

    bits: int = param(8, "weight bit-width; dynamic quantization has int8 kernels only")
    backend: str = param("x86", "quantized engine the kernels run on", choices=BACKENDS)
    granularity: str = param(
        "per_tensor",
        "Linear weight scales per output channel or one per tensor; LSTM/GRU stay per tensor",
        choices=GRANULARITIES,
    )

    def problems(self) -> list[Problem]:
        if self.bits != 8:
            return [Problem("bits", f"dynamic quantization runs int8 kernels only; bits must be 8, got {self.bits}")]
        return []

    def label(self) -> str:
        return "dynamic int8" + (" per_channel" if self.granularity == "per_channel" else "")


@dataclass(frozen=True)
class _IntegerConfig(MethodConfig):
    """Fields shared by static PTQ and QAT."""

    integer: ClassVar[bool] = True
    calibrated: ClassVar[bool] = True
    supported_bits: ClassVar[tuple[int, ...]] = tuple(range(MIN_BITS, MAX_BITS + 1))

    bits: int = param(8, "8 runs real int8 kernels; 2-7 are simulated with fake quantization", min=2, max=8)
    calibration_size: int = param(
        256, "calibration samples drawn deterministically from the calibration split", min=1, max=MAX_CALIBRATION_SIZE
    )
    observer: str = param("minmax", "activation range observer", choices=OBSERVERS)
    percentile: float = param(99.99, "percentile of |activation| kept by the percentile observer", min=50, max=100)
    granularity: str = param("per_channel", "weight scales per output channel or one per tensor", choices=GRANULARITIES)
    activation: str = param("affine", "activation quantization scheme", choices=ACTIVATIONS)
    backend: str = param("x86", "quantized engine the converted model runs on", choices=BACKENDS)
    reduce_range: bool | None = param(
        None, "7-bit activations, against int16 saturation on CPUs without VNNI; default: on, except on qnnpack"
    )

    def label(self) -> str:
        kind = f"int{self.bits}" + (" (simulated)" if self.simulated else "")
        return f"{self.method} {kind} {self.observer} {self.granularity} n={self.calibration_size}"


@dataclass(frozen=True)
class StaticConfig(_IntegerConfig):
    method: ClassVar[str] = "static"
    summary: ClassVar[str] = "post-training static quantization with calibration (torch.ao FX graph mode, or eager)"

    mode: str = param("fx", "fx: trace the model; eager: the model carries QuantStub/DeQuantStub", choices=STATIC_MODES)

    def problems(self) -> list[Problem]:
        out: list[Problem] = []
        if self.mode == "eager" and self.bits < 8:
            out.append(Problem("mode", "eager mode runs real int8 kernels only; use mode fx for bits below 8"))
        return out


@dataclass(frozen=True)
class QATConfig(_IntegerConfig):
    method: ClassVar[str] = "qat"
    summary: ClassVar[str] = "quantization-aware fine-tuning with fake quantization, then convert"

    observer: str = param("moving_average", "activation range observer", choices=OBSERVERS)
    epochs: int | None = param(1, "passes over the train split (ignored when steps is set)", min=1)
    steps: int | None = param(None, "optimizer steps; overrides epochs", min=1)
    lr: float = param(1e-3, "learning rate", min=0, min_exclusive=True)
    optimizer: str = param("sgd", "optimizer", choices=OPTIMIZERS)
    momentum: float = param(0.9, "SGD momentum", min=0, max=1)
    weight_decay: float = param(0.0, "weight decay", min=0)
    batch_size: int = param(32, "training batch size", min=1)
    freeze_observers_after: int | None = param(None, "stop updating quantization ranges after this many steps", min=0)
    freeze_bn_after: int | None = param(None, "freeze batch-norm statistics after this many steps", min=0)
    device: str = param("auto", "where to fine-tune: cuda when present (auto), or cpu / cuda", choices=TRAIN_DEVICES)
    loss: str = param(
        "auto", "ce on labels, kd to distil the fp32 model's outputs; auto: ce when labels exist", choices=LOSSES
    )

    def label(self) -> str:
        budget = f"{self.steps} steps" if self.steps else f"{self.epochs} ep"
        return f"{super().label()} {budget}"


@dataclass(frozen=True)
class NoopConfig(MethodConfig):
    method: ClassVar[str] = "noop"
    summary: ClassVar[str] = "does nothing: measures the bookkeeping around a job"
    hidden: ClassVar[bool] = True


METHODS: dict[str, type[MethodConfig]] = {
    c.method: c for c in (Fp32Config, Fp16Config, Bf16Config, DynamicConfig, StaticConfig, QATConfig, NoopConfig)
}
FLOAT_METHODS = tuple(name for name, c in METHODS.items() if not c.integer and not c.hidden)
INTEGER_METHODS = tuple(name for name, c in METHODS.items() if c.integer)


def _default(config: MethodConfig, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(config) if f.name == name)


def _method_first(names: Iterable[str]) -> list[str]:
    """Parameter names with the method's own first and the deploy parameters every method shares last."""
    names = list(names)
    return [n for n in names if n not in LATE_PARAMS] + [n for n in names if n in LATE_PARAMS]


def public_methods() -> list[type[MethodConfig]]:
    """The method config classes a user may ask for, in a stable order."""
    return [c for c in METHODS.values() if not c.hidden]


def parameter_specs(cls: type[MethodConfig]) -> list[dict[str, Any]]:
    """Describe each parameter of ``cls``: name, type, default, choices, range and help."""
    hints = type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        out.append(
            {
                "name": f.name,
                "type": "list of layer rules" if f.name == "layers" else type_name(hints[f.name]),
                "default": f.default,
                "choices": meta.get("choices"),
                "min": meta.get("min"),
                "max": meta.get("max"),
                "help": meta.get("help", ""),
            }
        )
    return out


def parse_method(method: str, params: Mapping[str, Any] | None = None, *, path: str = "") -> MethodConfig:
    """Build and validate a method config.

    Args:
        method: a method name such as ``"static"``.
        params: parameter values; unknown names, wrong types and out-of-range values are all reported.
        path: prefix for the problem paths (e.g. ``"methods[2].static"``).

    Returns:
        The frozen config.

    Raises:
        ConfigError: listing every problem found.
    """
    params = dict(params or {})
    cls = METHODS.get(method)
    if cls is None:
        names = ", ".join(c.method for c in public_methods())
        raise ConfigError(Problem(path, f"unknown method {method!r}; choose one of {names}"))
    hints = type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    for name, value in params.items():
        if name in ("method", "version"):
            continue
        f = fields.get(name)
        if f is None:
            valid = ", ".join(_method_first(fields)) or "none"
            problems.append(Problem(problem_path(path, name), f"unknown parameter for method {method}; valid: {valid}"))
            continue
        if name == "layers":
            rules, found = parse_rules(value, problem_path(path, name))
            problems.extend(found)
            values[name] = rules
            continue
        coerced, problem = check_value(value, hints[name], f.metadata)
        if problem:
            problems.append(Problem(problem_path(path, name), problem))
        else:
            values[name] = coerced
    if problems:
        raise ConfigError(problems)
    config = cls(**values)
    cross = config.problems() + config.deploy_problems()
    cross += method_problems(config.method, config.layers, getattr(config, "mode", None))  # what rules can't do here
    if cross:
        raise ConfigError([Problem(problem_path(path, p.path), p.message) for p in cross])
    return config


def config_from_dict(data: Mapping[str, Any], *, path: str = "") -> MethodConfig:
    """Inverse of :meth:`MethodConfig.to_dict`.

    Raises:
        ConfigError: when the method is unknown, the version is newer than this code, or a parameter is bad.
    """
    method = data.get("method")
    if not isinstance(method, str):
        raise ConfigError(Problem(problem_path(path, "method"), "missing method name"))
    version = data.get("version", 1)
    cls = METHODS.get(method)
    if cls is not None and isinstance(version, int) and version > cls.version:
        raise ConfigError(
            Problem(
                problem_path(path, "version"),
                f"{method} config version {version} is newer than this code's {cls.version}",
            )
        )
    return parse_method(method, {k: v for k, v in data.items() if k not in ("method", "version")}, path=path)


def config_from_json(text: str) -> MethodConfig:
    """Parse :meth:`MethodConfig.to_json` output."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"method config is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("method config must be a JSON object")
    return config_from_dict(data)


def resolve_device(config: MethodConfig, requested: str) -> str:
    """Where a job evaluates and benchmarks its model.

    On torch, integer methods run torch.ao's int8 CPU kernels, fp16 defaults to CUDA. On another runtime, the
    device is the one the runtime (and its provider) runs on: ``auto`` picks CUDA for a runtime that runs only
    there, for a CUDA provider, and for fp16; else the CPU.

    Raises:
        ConfigError: an integer method asked to run on CUDA on torch, a runtime asked for a device it does not run
            on, a provider that runs on another device.
    """
    if config.runtime != DEFAULT_RUNTIME and config.runtime in RUNTIMES:
        return deploy.runtime_device(config.runtime, config.provider, config.method, requested)
    if requested == "auto":
        return "cuda" if config.method == "fp16" else "cpu"
    if requested == "cuda" and config.integer:
        raise ConfigError(
            Problem(
                "device",
                f"{config.method} models run torch.ao's int8 CPU kernels: benchmark them on cpu "
                "(qat still fine-tunes on CUDA when present: see its device parameter)",
            )
        )
    return requested
