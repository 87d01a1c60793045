"""The runtime engine: build a job's model for the deploy runtime its config names (``cfg.runtime``).

:func:`build` hands the job to the runtime's own module, each with the same signature
``build(model, cfg, ctx, workdir, **settings) -> RuntimeBuild`` (:mod:`farm.runtimes.build`):
onnxruntime -> :mod:`farm.runtimes.ort_build`, openvino -> :mod:`farm.runtimes.openvino`, tensorrt ->
:mod:`farm.runtimes.tensorrt`, each imported only when a job asks for it. :func:`check` refuses, before anything
is loaded, a job whose runtime this machine cannot serve. A torch job never comes here:
:mod:`farm.jobs.steps` applies its method in torch.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from farm.errors import ConfigError
from farm.runtimes.build import RuntimeBuild
from farm.runtimes.registry import DEFAULT_RUNTIME, runtime_problems, unavailable

#: The module that builds for each runtime (torch has none: its methods are farm.quant's handlers).
BUILDERS = {
    "onnxruntime": "farm.runtimes.ort_build",
    "openvino": "farm.runtimes.openvino",
    "tensorrt": "farm.runtimes.tensorrt",
}

#: The artifact format of a runtime's main file, by suffix (the manifest's ``artifact.format``).
FORMATS = {".onnx": "onnx", ".xml": "openvino_ir", ".plan": "tensorrt_engine"}


def runtime_of(cfg: Any) -> str:
    """The runtime a method config deploys to (torch when it names none)."""
    return getattr(cfg, "runtime", None) or DEFAULT_RUNTIME


def check(cfg: Any, device: str) -> None:
    """Refuse a job this machine cannot run on its runtime, in one line.

    Raises:
        ConfigError: an unknown runtime, a method or device the runtime cannot do, the runtime's package missing
            here (naming the extra that installs it: :func:`farm.runtimes.registry.unavailable`), or the runtime
            module's own refusal (its ``check(cfg, device)``, where it has one: e.g. fp16 on a CPU provider).
    """
    runtime = runtime_of(cfg)
    problems = runtime_problems(runtime, cfg.method, device)
    if problems:
        raise ConfigError(problems[0].message)
    if runtime == DEFAULT_RUNTIME:
        return
    missing = unavailable(runtime)
    if missing:
        raise ConfigError(missing)
    own_check = getattr(_builder(runtime), "check", None)
    if callable(own_check):
        own_check(cfg, device)


def build(
    model: Any,
    cfg: Any,
    ctx: Any,
    workdir: Path,
    *,
    threads: int | None = None,
    batch_sizes: tuple[int, ...] = (),
) -> RuntimeBuild:
    """Build ``cfg``'s method of ``model`` for ``cfg.runtime`` in ``workdir``.

    Args:
        model: the fp32 ``nn.Module``.
        cfg: the method config.
        ctx: the job's :class:`farm.quant.context.QuantContext`.
        workdir: an empty directory for the runtime's files.
        threads: the job's benchmark threads, for the runtime's own thread pool.
        batch_sizes: the batch sizes the job benchmarks (an engine built for fixed shapes needs them).
        Each runtime's ``build`` is given those of these settings its signature names.

    Returns:
        What the runtime built (:class:`farm.runtimes.build.RuntimeBuild`).

    Raises:
        ConfigError: a torch job (it is built by ``farm.quant``'s handlers), or see :func:`check`.
        QuantizationError: the runtime could not build the model (one line).
    """
    runtime = runtime_of(cfg)
    if runtime == DEFAULT_RUNTIME:
        raise ConfigError("a torch job is built by farm.quant's method handlers, not by a runtime")
    check(cfg, ctx.device)
    builder = _builder(runtime).build
    offered = {"threads": threads, "batch_sizes": tuple(batch_sizes)}
    takes = inspect.signature(builder).parameters
    built: RuntimeBuild = builder(model, cfg, ctx, Path(workdir), **{k: v for k, v in offered.items() if k in takes})
    return built


def preload(runtime: str) -> None:
    """Import what a job of ``runtime`` imports on its first build (OpenVINO and NNCF's quantization path, ONNX
    Runtime's quantization tools: 1.0-1.3 s a process), so that a worker process with nothing else to do can pay it
    before the job arrives (farm/jobs/local_workers.py). It computes: each step holds the host's measurement lock
    shared, and a timing that waits for the host goes first between two. A runtime that is not installed here, or
    whose builder has no ``preload``, loads nothing: its first job reports what is missing."""
    from farm.quant.isolation import compute_step

    if runtime == DEFAULT_RUNTIME or unavailable(runtime):
        return
    steps = getattr(_builder(runtime), "preload", None)
    if not callable(steps):
        return
    loading = iter(steps())
    while True:
        with compute_step():
            if next(loading, StopIteration) is StopIteration:
                return


def artifact_format(path: Path) -> str:
    """The manifest's ``format`` for a runtime's main file (its suffix without the dot when it is not known)."""
    return FORMATS.get(path.suffix, path.suffix.lstrip(".") or "file")


def _builder(runtime: str) -> Any:
    name = BUILDERS.get(runtime)
    if name is None:
        raise ConfigError(f"runtime {runtime} has no builder on this machine")
    try:
        return importlib.import_module(name)
    except ImportError as e:  # the module itself (F's openvino / tensorrt) is not in this checkout
        raise ConfigError(f"runtime {runtime}: {name} cannot be imported ({e})") from None
