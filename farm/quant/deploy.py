"""The deploy parameters every method config has (``runtime``, ``provider``): their checks, and the device a job
on a runtime other than torch runs on.

Standard library only, as :mod:`farm.quant.config` (the producer validates specs without torch): the rules are
:mod:`farm.runtimes.registry`'s, applied to one method config.
"""

from __future__ import annotations

from farm.errors import ConfigError, Problem
from farm.runtimes.registry import DEFAULT_RUNTIME, RUNTIMES, runtime_problems

#: Execution providers that run on a CUDA device.
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def deploy_problems(runtime: str, provider: str | None, method: str, bits: int | None) -> list[Problem]:
    """Why a method config cannot deploy as asked: a runtime that cannot run the method (naming those it can), a
    provider the runtime does not have, a bit-width below 8 (simulated in torch) on another runtime.

    Args:
        runtime: the config's runtime.
        provider: its execution provider, or None.
        method: the method name.
        bits: the bit-width of an integer method whose figures would be simulated (below 8), else None.

    Returns:
        The problems, each with the parameter's name as its path; empty when it can deploy.
    """
    out = runtime_problems(runtime, method)
    spec = RUNTIMES.get(runtime)
    if provider is not None and spec is not None:
        if not spec.providers:
            takes = ", ".join(r.name for r in RUNTIMES.values() if r.providers)
            out.append(Problem("provider", f"runtime {runtime} takes no provider (only {takes} does)"))
        elif provider not in spec.providers:
            out.append(Problem("provider", f"{provider!r} is not one of {', '.join(spec.providers)}"))
    if runtime != DEFAULT_RUNTIME and bits is not None:
        out.append(
            Problem(
                "bits",
                f"runtime {runtime} runs int8 only; int{bits} is simulated with fake quantization in torch "
                "(use runtime torch)",
            )
        )
    return out


def runtime_device(runtime: str, provider: str | None, method: str, requested: str) -> str:
    """The device a job on ``runtime`` (not torch) evaluates and times on.

    ``auto`` picks CUDA for a runtime that runs only there, for a CUDA execution provider and for fp16, when the
    runtime runs on CUDA; else the CPU.

    Raises:
        ConfigError: the runtime does not run on the device, or the provider runs on another one.
    """
    devices = RUNTIMES[runtime].devices
    gpu_provider = provider in GPU_PROVIDERS
    if requested == "auto":
        wants_cuda = gpu_provider or method == "fp16" or "cpu" not in devices
        requested = "cuda" if wants_cuda and "cuda" in devices else "cpu"
    problems = runtime_problems(runtime, method, requested, path="device")
    if not problems and provider is not None and gpu_provider != requested.startswith("cuda"):
        problems.append(Problem("device", f"provider {provider} does not run on {requested}"))
    if problems:
        raise ConfigError(problems)
    return requested
