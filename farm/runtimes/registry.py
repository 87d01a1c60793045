"""The runtimes a job can deploy to, what each can do, and whether this machine can serve it.

Standard library only: the producer (no torch, maybe no onnxruntime) validates specs with these rules, and a
worker's capability check asks :func:`unavailable` before it takes a job. The engine side of each runtime lives in
its own modules (:mod:`farm.runtimes.engine` dispatches to them).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from farm.errors import Problem

#: The runtime of every job that names none: eager / TorchScript PyTorch, today's path.
DEFAULT_RUNTIME = "torch"


@dataclass(frozen=True)
class Runtime:
    """One deploy runtime.

    Attributes:
        name: as a spec and ``--runtime`` write it.
        short: its word in a recipe label (``static int8 ... ort``).
        methods: the methods it can run.
        modules: Python modules it needs (import names), all of them.
        extra: the pyproject extra that installs them (``pip install 'quantfarm[EXTRA]'``); None: always there.
        devices: where it runs: "cpu", "cuda" or both.
        providers: execution providers a job may name (ONNX Runtime's); the first is the default on that device.
        build_cost: how long its builds take, as a rank (a tune hands out its first stage's jobs, which no earlier
            stage has timed, highest first): TensorRT's engine builds, then NNCF's calibration (about 3 s a
            digits-cnn job), torch's FX calibration and scripting, ONNX Runtime's quantizer (0.3 s).
        preloads: its builder has ``preload`` (farm.runtimes.engine.preload): a local run's idle worker process can
            import what its first job would before the job arrives.
        granularity_of: (method, granularity) pairs: the one weight granularity the runtime runs ``method`` with,
            whatever the job asks (OpenVINO's dynamic int8: its weight compression scales per output channel). A
            tune plans that granularity only, not a second global recipe that builds the same model.
    """

    name: str
    short: str
    methods: tuple[str, ...]
    modules: tuple[str, ...]
    extra: str | None
    devices: tuple[str, ...]
    providers: tuple[str, ...] = ()
    build_cost: int = 0
    granularity_of: tuple[tuple[str, str], ...] = ()
    preloads: bool = False

    def fixed_granularity(self, method: str) -> str | None:
        """The granularity this runtime runs ``method`` with whatever a job asks, or None where the job decides."""
        return dict(self.granularity_of).get(method)


RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime(
            "torch",
            "torch",
            ("fp32", "fp16", "bf16", "dynamic", "static", "qat", "noop"),
            ("torch",),
            "engine",
            ("cpu", "cuda"),
            build_cost=1,
        ),
        Runtime(
            "onnxruntime",
            "ort",
            ("fp32", "fp16", "dynamic", "static", "qat"),
            ("onnx", "onnxruntime"),
            "onnx",
            ("cpu", "cuda"),
            ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"),
            preloads=True,
        ),
        Runtime(
            "openvino",
            "ov",
            ("fp32", "dynamic", "static"),
            ("openvino", "nncf"),
            "openvino",
            ("cpu",),
            build_cost=2,
            granularity_of=(("dynamic", "per_channel"),),
            preloads=True,
        ),
        Runtime("tensorrt", "trt", ("fp32", "fp16", "static"), ("tensorrt",), "tensorrt", ("cuda",), build_cost=3),
    )
}


def granularity_runs(cfg: Any) -> bool:
    """Whether a method config's weight granularity is what its runtime runs (not one it ignores: OpenVINO's dynamic
    int8 is per channel whatever a job asks; the job then says so in a warning)."""
    runtime = RUNTIMES.get(getattr(cfg, "runtime", None) or DEFAULT_RUNTIME)
    fixed = runtime.fixed_granularity(cfg.method) if runtime else None
    return fixed is None or getattr(cfg, "granularity", fixed) == fixed


def runtime_problems(runtime: str, method: str, device: str | None = None, *, path: str = "runtime") -> list[Problem]:
    """Why ``method`` cannot run on ``runtime`` (on ``device``, when given): an unknown runtime, a method it can't
    do (naming those it can), a device it does not run on. Empty when it can. Installation is :func:`unavailable`.
    """
    spec = RUNTIMES.get(runtime)
    if spec is None:
        return [Problem(path, f"unknown runtime {runtime!r}: choose from {', '.join(RUNTIMES)}")]
    if method not in spec.methods:
        can = ", ".join(m for m in spec.methods if m != "noop")
        return [Problem(path, f"runtime {runtime} cannot run method {method!r}; it runs: {can}")]
    kind = None if device is None else ("cuda" if device.startswith("cuda") else device)
    if kind not in (None, "auto") and kind not in spec.devices:
        return [Problem(path, f"runtime {runtime} runs on {' and '.join(spec.devices)} only, not on {device}")]
    return []


def unavailable(runtime: str) -> str | None:
    """Why this machine cannot serve ``runtime`` (a module it needs is not installed, with the extra that installs
    it), or None when it can. Looks for the modules without importing them."""
    spec = RUNTIMES[runtime]
    missing = [m for m in spec.modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    hint = f": pip install 'quantfarm[{spec.extra}]'" if spec.extra else ""
    return f"runtime {runtime} needs {', '.join(missing)}, which this machine lacks{hint}"


def short_name(runtime: str) -> str:
    """The runtime's word in a recipe label."""
    spec = RUNTIMES.get(runtime)
    return spec.short if spec is not None else runtime
