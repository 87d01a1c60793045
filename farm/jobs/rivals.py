"""The rivals of a trial: other runtimes' fp32 exports of its model (``benchmark.rivals``), built in the trial's own
process so that it is timed side by side with each of them as with its own runtime's fp32
(:func:`farm.quant.measure.benchmark`).

Why: "faster than the fastest fp32 on any runtime" is the bar a tune's answer must clear, and the fp32 export of
another runtime was timed in its own job, minutes earlier, on a host whose speed drifts 10-60 % within the hour.
A pair timed alternately in one process cancels that drift, as it does for the trial's own speedup.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from farm.errors import ConfigError, QuantizationError
from farm.jobs.contract import JobSpec


@contextlib.contextmanager
def rival_models(
    spec: JobSpec | None, module: Any, ctx: Any, warnings: list[str], stop: Callable[[], bool]
) -> Iterator[list[tuple[str, Any]]]:
    """(runtime, fp32 model) for each of ``spec.benchmark.rivals`` other than the job's own runtime, deployed as
    that runtime's fp32 job deploys it (torch: frozen TorchScript, :func:`farm.quant.reference.fp32_baseline`;
    elsewhere: the runtime's fp32 build), alive while the context is open (their files in a temporary directory).

    A rival that cannot be built here is left out with a warning in ``warnings``: the trial's own figures stand.
    An fp32 job has none (it is the figure the rivals' own jobs compare with), nor has a simulated trial (it claims
    no speed): the caller passes ``spec`` None for it.

    Args:
        module: the untouched fp32 ``nn.Module`` (each rival gets a copy).
        ctx: the job's :class:`farm.quant.context.QuantContext` (example input, device).
        stop: the job's cancel check; building holds the host's measurement lock shared, as any compute does.
    """
    from farm.quant.isolation import compute_step
    from farm.runtimes.engine import runtime_of

    names = [] if spec is None else [r for r in spec.benchmark.rivals if r != runtime_of(spec.method)]
    if spec is None or not names or spec.method.method == "fp32":
        yield []
        return
    with tempfile.TemporaryDirectory(prefix="farm-rivals-") as tmp:
        out = []
        for name in names:
            with compute_step(stop):
                built = _built(name, module, ctx, Path(tmp) / name, spec, warnings)
            if built is not None:
                out.append((name, built))
        yield out


def _built(name: str, module: Any, ctx: Any, workdir: Path, spec: JobSpec, warnings: list[str]) -> Any:
    from farm.runtimes.registry import DEFAULT_RUNTIME

    try:
        if name == DEFAULT_RUNTIME:
            return _torch_fp32(module, ctx)
        return _runtime_fp32(name, module, ctx, workdir, spec)
    except (ConfigError, QuantizationError) as e:
        warnings.append(f"fp32 on {name} (benchmark.rivals) could not be built here, not timed: {e}")
        return None


def _torch_fp32(module: Any, ctx: Any) -> Any:
    from farm.quant.reference import fp32_baseline

    return fp32_baseline(copy.deepcopy(module), ctx.example_input, ctx.device).deployed


def _runtime_fp32(name: str, module: Any, ctx: Any, workdir: Path, spec: JobSpec) -> Any:
    from farm.quant.config import Fp32Config
    from farm.runtimes.engine import build

    workdir.mkdir(parents=True)
    bench = spec.benchmark
    cfg = Fp32Config(runtime=name)
    built = build(copy.deepcopy(module), cfg, ctx, workdir, threads=bench.threads, batch_sizes=tuple(bench.batch_sizes))
    return built.outcome
