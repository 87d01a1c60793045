"""A job on a deploy runtime other than torch (ONNX Runtime, OpenVINO, TensorRT), where a torch job applies its
method: build for the runtime (:func:`farm.runtimes.engine.build`), evaluate what it built, time it side by side
with the same runtime's fp32 model, and copy the runtime's files into the job's directory.

:mod:`farm.jobs.steps` orders the job and calls :func:`measure_on_runtime` and :func:`record_artifact`; the fp32
reference a runtime trial compares with stays the torch fp32 job's (accuracy drop, agreement, cosine).
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.jobs.contract import JobResult, JobSpec
from farm.quant.measure import ProgressFn, benchmark, evaluate
from farm.quant.reference import Baseline, Reference


@dataclass
class RuntimeMeasured:
    """What a runtime job deployed and measured, and its artifact files (already in the job's directory)."""

    outcome: Any
    outputs: Any
    latency: list[dict[str, Any]]
    files: list[Path]
    size_bytes: int
    info: dict[str, Any]


def measure_on_runtime(
    spec: JobSpec,
    module: Any,
    ctx: Any,
    test: Any,
    result: JobResult,
    out_dir: Path,
    timings: dict[str, float],
    report: ProgressFn,
    stop: Callable[[], bool],
) -> RuntimeMeasured:
    """Build ``spec``'s method for its runtime, evaluate it on ``test`` and time it against the runtime's fp32.

    The fp32 job of a runtime is timed alone (its speedup is 1.0, as the torch fp32 job's); any other is timed side
    by side with the same runtime's fp32 model, same threads and provider (its ``speedup`` and interval), then with
    each of ``benchmark.rivals``' fp32 (:mod:`farm.jobs.rivals`).

    Raises:
        ConfigError: the runtime cannot serve the job here.
        QuantizationError: export, build or the built model's run failed (one line).
        Cancelled: ``stop`` said so.
    """
    from farm.jobs.rivals import rival_models
    from farm.jobs.timing import timed_step
    from farm.quant.isolation import compute_step
    from farm.runtimes.engine import build, runtime_of

    cfg = spec.method
    runtime = runtime_of(cfg)
    untouched = copy.deepcopy(module) if spec.benchmark.rivals else None  # a build may train or rewrite it
    with tempfile.TemporaryDirectory(prefix=f"farm-{runtime}-") as tmp:
        # The whole build, not only its export, calibration and compile: importing the runtime (OpenVINO and NNCF
        # take seconds of CPU on first use) and the Python between its steps must not run beside another job's
        # exclusive timing.
        with timed_step("build", timings, report), compute_step(stop):
            bench = spec.benchmark
            built = build(module, cfg, ctx, Path(tmp), threads=bench.threads, batch_sizes=tuple(bench.batch_sizes))
        timings.update(built.timings_s)  # export, calibrate, train, quantize, ...: named as a torch job's steps
        result.warnings.extend(built.warnings)
        fill_runtime(result, runtime, built.info, built.coverage)
        with timed_step("evaluate", timings, report):
            chosen = _Chosen(built.outcome, spec.output)
            outputs = evaluate(chosen, test, report, stop, label=cfg.label(), output=None)
        with timed_step("benchmark", timings, report):
            baseline = Baseline(deployed=built.baseline or built.outcome, deployed_as=runtime, eager=None)
            with rival_models(spec, untouched, ctx, result.warnings, stop) as rivals:
                latency = benchmark(built.outcome, test, spec.benchmark, report, stop, baseline, rivals)
        with timed_step("save", timings, report):
            out_dir.mkdir(parents=True, exist_ok=True)
            files = [Path(shutil.copy2(f, out_dir / f.name)) for f in built.files]
    return RuntimeMeasured(built.outcome, outputs, latency, files, built.size_bytes, built.info)


def fill_runtime(result: JobResult, runtime: str, info: dict[str, Any], coverage: dict[str, Any] | None) -> None:
    """The runtime's fields of ``result`` (runtime, its version, provider, opset) and its coverage."""
    result.runtime = runtime
    result.runtime_version = info.get("runtime_version")
    result.execution_provider = info.get("execution_provider")
    result.opset = info.get("opset")
    result.deployed_as = runtime
    if coverage is not None:
        result.coverage, result.coverage_macs = coverage.get("params"), coverage.get("macs")
        result.coverage_layers, result.coverage_layers_total = coverage.get("layers"), coverage.get("layers_total")


def record_artifact(result: JobResult, measured: RuntimeMeasured, reference: Reference) -> None:
    """``result.artifact`` (the main file, its format, sha256 and size, and every file's sha256) and the size."""
    from farm.quant.artifact import sha256_file
    from farm.quant.measure import fill_size
    from farm.runtimes.engine import artifact_format

    main = measured.files[0]
    result.artifact = {
        "file": main.name,
        "format": artifact_format(main),
        "sha256": sha256_file(main),
        "size_bytes": measured.size_bytes,
        "files": {f.name: sha256_file(f) for f in measured.files},
    }
    fill_size(result, measured.size_bytes, measured.outcome, reference)


def manifest_entries(result: JobResult, info: dict[str, Any]) -> dict[str, Any]:
    """What a runtime job's manifest adds: the runtime, its version, provider, opset and exporter at the top,
    and everything the runtime recorded of its recipe under ``runtime_info``."""
    return {
        "runtime": result.runtime,
        "runtime_version": result.runtime_version,
        "execution_provider": result.execution_provider,
        "opset": result.opset,
        "exporter": info.get("exporter"),
        "runtime_info": info,
    }


class _Chosen:
    """A built model whose ``forward`` returns the tensor metrics are computed on: a runtime may have exported
    ``spec.output`` alone (then it returns that tensor) or every output (then ``select_output`` picks it)."""

    def __init__(self, outcome: Any, output: str | int | None) -> None:
        self.outcome, self.output = outcome, output

    def prepare_input(self, batch: Any) -> Any:
        return self.outcome.prepare_input(batch)

    def forward(self, prepared: Any) -> Any:
        import torch

        from farm.quant.inputs import select_output

        raw = self.outcome.forward(prepared)
        return raw if isinstance(raw, torch.Tensor) else select_output(raw, self.output)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self.outcome.active():
            yield
