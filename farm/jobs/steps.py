"""The ONE place where a job's steps are ordered: run_job and the fp32 reference (qat's first half, fine-tuning on
another worker, is :mod:`farm.jobs.train`).

load model and data -> fp32 reference (given, or computed here) -> apply the method -> evaluate -> benchmark ->
save the artifact -> result. The measuring itself is the engine's (:mod:`farm.quant.measure`); this module only
says in which order it happens. It writes only into the directory it is given; whoever calls it (the CLI, the
local runner, a Celery task) decides where that directory's files go and records the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.jobs.contract import JobResult, JobSpec
from farm.jobs.fp32_reference import compute_reference, on_split
from farm.jobs.manifest import write_job_manifest
from farm.jobs.preflight import preflight
from farm.jobs.timing import allow_for_drift, seeded, timed_step
from farm.quant.config import resolve_device
from farm.quant.measure import ProgressFn, benchmark, evaluate, load_metric
from farm.quant.reference import REFERENCE_FILE, Reference
from farm.runtimes.engine import runtime_of

__all__ = ["compute_reference", "preflight", "run_job", "seeded", "timed_step"]


@dataclass
class _Inputs:
    """What a job loads before anything is quantized: the data splits, the calibration subset, the model."""

    splits: Any
    calibration: Any
    loaded: Any
    example: Any


@dataclass
class _Measured:
    """The model a job deploys (a ``QuantOutcome``), its outputs on the test split and its latency figures; a job
    on another runtime than torch also has what it built (a :class:`farm.jobs.runtime_job.RuntimeMeasured`)."""

    outcome: Any
    outputs: Any
    latency: list[dict[str, Any]]
    runtime: Any = None


def run_job(
    spec: JobSpec,
    out_dir: Path,
    *,
    reference: Reference | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint: Path | None = None,
) -> JobResult:
    """Run one trial and write its artifact (``model.pt``, or the runtime's file, + ``manifest.json``) into ``out_dir``.

    Args:
        spec: what to run.
        out_dir: an empty directory for the artifact; an fp32 job also writes ``reference.pt`` there.
        reference: the fp32 reference of the same model, dataset and device; computed here when None.
        progress: called with (step, fraction) as the job advances.
        should_stop: polled in long loops; True raises :class:`farm.errors.Cancelled`.
        checkpoint: for qat, a :func:`farm.jobs.train.train_job` checkpoint (fine-tuned on another worker) to convert
            instead of fine-tuning here.

    Returns:
        The trial's metrics.

    Raises:
        ConfigError: bad references, weights, calibration size, or a device this machine lacks.
        QuantizationError: the method cannot be applied to the model.
        Cancelled: ``should_stop`` said so.
    """
    started = time.perf_counter()
    cfg = spec.method
    device = resolve_device(cfg, spec.benchmark.device)
    result = _blank_result(spec, device)
    if cfg.method == "noop":  # bookkeeping benchmarks: nothing to load, nothing to import
        result.duration_s = time.perf_counter() - started
        return result

    import torch

    from farm.quant.isolation import compute_step
    from farm.quant.latency import torch_threads
    from farm.quant.measure import check_runs, fill_figures
    from farm.quant.memory import peak_rss_bytes, reset_peak
    from farm.quant.registry import quiet_torch_ao

    report = progress or (lambda step, fraction: None)
    stop = should_stop or (lambda: False)
    timings: dict[str, float] = {}

    preflight(cfg, device, training=checkpoint is None)
    load_metric(spec.metric)  # a metric function that can't run is refused before anything is measured
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch_threads(spec.benchmark.threads), seeded(spec.seed), quiet_torch_ao():
        reset_peak()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        with compute_step(stop):  # building a model computes: it pauses while another job on this host times
            inputs = _load(spec, timings, report)
            check_runs(inputs.loaded.module, inputs.example, spec)
        result.warnings.extend(inputs.splits.notes)
        reference_here = reference is None  # its fp32 p50 joins the host's drift history (farm.jobs.timing)
        reference = _reference(reference, spec, inputs, device, timings, report, stop)
        _record_hardware(result, device)
        fp32 = cfg.method == "fp32" and runtime_of(cfg) == "torch"  # fp32 on another runtime is a trial
        if fp32:
            measured = _as_reference(reference, inputs, device, result)
        else:
            measured = _trial(spec, inputs, device, result, out_dir, timings, report, stop, checkpoint)
        here = cfg.method == "fp32" and (reference_here or not fp32)  # this job timed fp32 itself: it is recorded
        measured.latency = allow_for_drift(measured.latency, spec, device, result.hardware_id, fp32_timed_here=here)
        fill_figures(result, measured.outcome, measured.outputs, measured.latency, reference, inputs.splits, spec)
        with compute_step(stop):
            _save(result, measured, inputs.example, reference, out_dir, timings, report, fp32=fp32)
        result.peak_memory_bytes = peak_rss_bytes()
        if device.startswith("cuda"):
            result.peak_gpu_memory_bytes = int(torch.cuda.max_memory_allocated())
    result.timings_s = {k: round(v, 6) for k, v in timings.items()}
    result.duration_s = time.perf_counter() - started
    write_job_manifest(out_dir, spec, result, measured.outcome, inputs.example, device, runtime=measured.runtime)
    return result


def _reference(
    given: Reference | None,
    spec: JobSpec,
    inputs: _Inputs,
    device: str,
    timings: dict[str, float],
    report: ProgressFn,
    stop: Callable[[], bool],
) -> Reference:
    """The fp32 reference on the job's split: the one handed in, carried to the job's split where it was measured
    on another (a tune's validation-split jobs: farm.jobs.fp32_reference.on_split), or computed in this job."""
    from farm.quant.isolation import compute_step

    splits = inputs.splits
    if given is not None and given.split == spec.split:
        return given
    with timed_step("reference", timings, report):
        if given is not None:
            with compute_step(stop):
                return on_split(given, spec, inputs.loaded.module, splits, device, report, stop)
        return compute_reference(
            inputs.loaded.module, splits.test, splits.labelled, spec, device, report, stop, splits.num_classes
        )


def _record_hardware(result: JobResult, device: str) -> None:
    from farm.quant.fingerprint import fingerprint, hardware_id, hardware_label

    fp = fingerprint(device)
    result.hardware, result.hardware_id, result.fingerprint = hardware_label(fp), hardware_id(fp), fp


def _load(spec: JobSpec, timings: dict[str, float], report: ProgressFn) -> _Inputs:
    """Load the data first, so that a bad path or calibration size is refused before a model is built (or
    trained), then the model; the C allocator's thresholds are fixed before either (farm.quant.allocator: the
    job's timings must not depend on what this process ran before)."""
    from farm.quant.allocator import steady
    from farm.zoo.data import calibration_subset, first_batch, for_split, load_dataset
    from farm.zoo.models import load_model

    cfg = spec.method
    steady()
    with timed_step("load", timings, report):
        splits = for_split(load_dataset(spec.dataset), spec.split)  # metrics on spec.split's samples
        calibration = calibration_subset(splits, cfg.calibration_size, spec.seed) if cfg.calibrated else None  # type: ignore[attr-defined]
        loaded = load_model(spec.model, weights=spec.weights)
    return _Inputs(splits, calibration, loaded, first_batch(splits.test, 1))


def _as_reference(reference: Reference, inputs: _Inputs, device: str, result: JobResult) -> _Measured:
    """An fp32 job deploys the model the reference measured: its figures are the reference's own."""
    import torch

    from farm.quant.registry import QuantOutcome

    model = reference.module if reference.module is not None else inputs.loaded.module
    outcome = QuantOutcome(model, device=device)
    result.deployed_as = reference.deployed_as or (
        "torchscript" if isinstance(outcome.model, torch.jit.ScriptModule) else "eager"
    )
    return _Measured(outcome, reference.outputs, list(reference.latency.values()))


def _trial(
    spec: JobSpec,
    inputs: _Inputs,
    device: str,
    result: JobResult,
    out_dir: Path,
    timings: dict[str, float],
    report: ProgressFn,
    stop: Callable[[], bool],
    checkpoint: Path | None,
) -> _Measured:
    """A trial's model, built and measured in torch, or on the job's runtime
    (:func:`farm.jobs.runtime_job.measure_on_runtime`: its files land in ``out_dir``)."""
    if runtime_of(spec.method) == "torch":
        return _quantize_and_measure(spec, inputs, device, result, timings, report, stop, checkpoint)
    from farm.jobs.runtime_job import measure_on_runtime

    ctx = _context(spec, inputs, device, report, stop, checkpoint)
    test = inputs.splits.test
    done = measure_on_runtime(spec, inputs.loaded.module, ctx, test, result, out_dir, timings, report, stop)
    return _Measured(done.outcome, done.outputs, done.latency, runtime=done)


def _quantize_and_measure(
    spec: JobSpec,
    inputs: _Inputs,
    device: str,
    result: JobResult,
    timings: dict[str, float],
    report: ProgressFn,
    stop: Callable[[], bool],
    checkpoint: Path | None,
) -> _Measured:
    """Apply the method, make the model deployable (scripted where it can be), then evaluate it and time it side by
    side with an untouched fp32 copy, deployed the way the reference is (:func:`farm.quant.reference.fp32_baseline`).
    """
    import copy

    from farm.jobs.rivals import rival_models
    from farm.quant.artifact import deployable
    from farm.quant.isolation import compute_step
    from farm.quant.measure import fill_coverage
    from farm.quant.reference import fp32_baseline
    from farm.quant.registry import apply_method

    cfg = spec.method
    ctx = _context(spec, inputs, device, report, stop, checkpoint)
    untouched = copy.deepcopy(inputs.loaded.module)  # before the method: some rewrite the module in place
    method_started = time.perf_counter()
    outcome = apply_method(inputs.loaded.module, cfg, ctx)
    timings.update(outcome.timings_s)
    timings["quantize"] = time.perf_counter() - method_started
    result.warnings.extend(outcome.warnings)
    with compute_step(stop):  # profiling runs the model
        fill_coverage(result, inputs.loaded, inputs.example, outcome, cfg)  # on the eager modules, before scripting
    with timed_step("script", timings, report):
        outcome.model, scripted = deployable(
            outcome.model, outcome.prepare_input(inputs.example), autocast=outcome.autocast_dtype
        )
    result.deployed_as = "torchscript" if scripted else "eager"
    with timed_step("evaluate", timings, report):
        outputs = evaluate(outcome, inputs.splits.test, report, stop, label=cfg.label(), output=spec.output)
    with timed_step("benchmark", timings, report):
        timed = None if outcome.simulated else spec  # a simulated trial claims no speed: no rivals
        with rival_models(timed, untouched, ctx, result.warnings, stop) as rivals:  # before the baseline moves it
            baseline = None if outcome.simulated else fp32_baseline(untouched, inputs.example, device)
            latency = benchmark(outcome, inputs.splits.test, spec.benchmark, report, stop, baseline, rivals)
    return _Measured(outcome, outputs, latency)


def _context(
    spec: JobSpec,
    inputs: _Inputs,
    device: str,
    report: ProgressFn,
    stop: Callable[[], bool],
    checkpoint: Path | None,
) -> Any:
    """What a method handler (or a runtime's build) is given besides the model and its config."""
    from farm.quant.context import QuantContext

    return QuantContext(
        model_ref=spec.model,
        example_input=inputs.example,
        device=device,
        calibration=inputs.calibration,
        train=inputs.splits.train,
        labelled=inputs.splits.labelled,
        teacher=inputs.loaded.module,
        seed=spec.seed,
        graph=inputs.loaded.graph,
        output=spec.output,
        progress=report,
        should_stop=stop,
        checkpoint=_checkpoint(checkpoint) if checkpoint is not None else None,
    )


def _save(
    result: JobResult,
    measured: _Measured,
    example: Any,
    reference: Reference,
    out_dir: Path,
    timings: dict[str, float],
    report: ProgressFn,
    *,
    fp32: bool,
) -> None:
    """Write the model file (an fp32 job also writes ``reference.pt``) and record its size; a runtime job's files
    are in ``out_dir`` already."""
    from farm.quant.artifact import save_model
    from farm.quant.measure import fill_size

    outcome = measured.outcome
    if measured.runtime is not None:
        from farm.jobs.runtime_job import record_artifact

        record_artifact(result, measured.runtime, reference)
        return
    with timed_step("save", timings, report):
        saved = save_model(outcome.model, outcome.prepare_input(example), out_dir, autocast=outcome.autocast_dtype)
        if fp32:
            reference.size_bytes = saved.size_bytes
            reference.save(out_dir / REFERENCE_FILE)
    result.artifact = {
        "file": saved.path.name,
        "format": saved.format,
        "sha256": saved.sha256,
        "size_bytes": saved.size_bytes,
    }
    fill_size(result, saved.size_bytes, outcome, reference)


def _checkpoint(path: Path) -> dict[str, Any]:
    """A qat job's fine-tuning checkpoint, converted here (:func:`farm.quant.checkpoint.read_checkpoint`)."""
    from farm.quant.checkpoint import read_checkpoint

    return read_checkpoint(path)


def _blank_result(spec: JobSpec, device: str) -> JobResult:
    from farm.quant.recipe import recipe_label

    params = spec.method.params()
    return JobResult(
        model=spec.model,
        dataset=spec.dataset,
        method=spec.method.method,
        config=spec.method.to_dict(),
        bits=params.get("bits"),
        calibration_size=params.get("calibration_size"),
        backend=params.get("backend"),
        observer=params.get("observer"),
        granularity=params.get("granularity"),
        device=device,
        seed=spec.seed,
        threads=spec.benchmark.threads,
        recipe=recipe_label(spec.method),
    )
