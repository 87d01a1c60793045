"""Measuring a quantized model against its fp32 reference: outputs on the test split, latency side by side, and
the figures a trial reports (accuracy and fidelity, speedup, layer coverage, size).

The engine's half of a job: :mod:`farm.jobs.steps` decides the order of a job's steps and calls these; they know
nothing of the farm around them (no database, broker or artifact store) and fill in a
:class:`farm.jobs.contract.JobResult`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from farm.errors import ConfigError, QuantizationError
from farm.jobs.contract import JobResult, JobSpec
from farm.quant.config import BenchmarkConfig, MethodConfig
from farm.quant.reference import Reference

EVAL_BATCH_SIZE = 64

#: Called with (step, fraction done) as a job advances.
ProgressFn = Callable[[str, float | None], None]


def evaluate(
    outcome: Any,
    dataset: Any,
    report: ProgressFn,
    stop: Callable[[], bool],
    *,
    label: str,
    with_labels: bool = False,
) -> Any:
    """Outputs (and labels) of ``outcome``'s model on every sample of ``dataset``.

    Raises:
        QuantizationError: the model fails to run (e.g. an op with no kernel on the chosen engine) or
            produces NaN/Inf.
        Cancelled: ``stop`` said so.
    """
    import torch

    from farm.errors import Cancelled
    from farm.quant.metrics import all_finite
    from farm.zoo.data import iterate

    outs, labels = [], []
    total = len(dataset)
    done = 0
    with outcome.active(), torch.inference_mode():
        for x, y in iterate(dataset, EVAL_BATCH_SIZE):
            if stop():
                raise Cancelled("cancelled")
            try:
                out = _logits(outcome.forward(outcome.prepare_input(x)))
            except Exception as e:
                raise QuantizationError(
                    f"{label} model failed to run: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
                ) from e
            outs.append(out.detach().float().cpu())
            labels.append(y)
            done += len(x)
            report("evaluate", done / total)
    outputs = torch.cat(outs)
    if label != "fp32" and not all_finite(outputs):
        raise QuantizationError(f"{label} model produces NaN/Inf outputs on the test split")
    return (outputs, torch.cat(labels)) if with_labels else outputs


def benchmark(
    outcome: Any, dataset: Any, cfg: BenchmarkConfig, report: ProgressFn, stop: Callable[[], bool]
) -> list[dict[str, Any]]:
    """Latency figures for each batch size, with real inputs placed and cast before timing."""
    from farm.quant.latency import LatencySettings, measure_latency
    from farm.zoo.data import first_batch

    settings = LatencySettings(
        warmup_s=cfg.warmup_s, max_time_s=cfg.max_time_s, min_reps=cfg.min_reps, rel_tol=cfg.rel_tol
    )
    figures = []
    with outcome.active():
        for i, batch_size in enumerate(cfg.batch_sizes):
            x = outcome.prepare_input(first_batch(dataset, batch_size))
            lat = measure_latency(
                functools.partial(outcome.forward, x),
                batch_size,
                device=outcome.device,
                settings=settings,
                should_stop=stop,
            )
            figures.append(lat.to_dict())
            report("benchmark", (i + 1) / len(cfg.batch_sizes))
    return figures


def fill_figures(result: JobResult, outcome: Any, outputs: Any, latency: list[dict[str, Any]], ref: Reference) -> None:
    """A trial's accuracy and latency against its fp32 reference, and what a simulated model's figures mean.

    Args:
        outcome: the deployed model (a ``QuantOutcome``).
        outputs: its outputs on the test split (:func:`evaluate`).
        latency: its latency figures (:func:`benchmark`).
    """
    result.simulated = outcome.simulated
    if outcome.simulated:
        result.warnings.append(
            f"simulated: int{result.bits} figures come from fake quantization on fp32 kernels; accuracy "
            "approximates a real low-bit deployment, latency does not (no speedup is reported), and the size "
            "is a packed estimate"
        )
    fill_accuracy(result, outputs, ref)
    fill_latency(result, latency, ref)
    result.quantized_engine = outcome.engine


def fill_accuracy(result: JobResult, outputs: Any, ref: Reference) -> None:
    """Accuracy (top-1, top-5) and fidelity to the fp32 outputs; without labels, agreement with fp32 stands in
    for accuracy."""
    from farm.quant.metrics import fidelity, topk_accuracy

    fid = fidelity(ref.outputs, outputs)
    result.agreement, result.sqnr_db, result.cosine = fid.agreement, fid.sqnr_db, fid.cosine
    if ref.labelled:
        result.accuracy = topk_accuracy(outputs, ref.labels, 1)
        result.accuracy_fp32 = ref.accuracy
        if ref.top5 is not None:
            result.top5 = topk_accuracy(outputs, ref.labels, 5)
            result.top5_fp32 = ref.top5
    else:
        # No labels: the fp32 model's top-1 is the ground truth, so accuracy is agreement with it.
        result.accuracy_kind = "relative_to_fp32"
        result.accuracy, result.accuracy_fp32 = fid.agreement, 1.0
    if result.accuracy is not None and result.accuracy_fp32 is not None:
        result.accuracy_drop = result.accuracy_fp32 - result.accuracy


def fill_latency(result: JobResult, latency: list[dict[str, Any]], ref: Reference) -> None:
    """Latency per batch size, with a speedup over fp32 only when both were timed on the same hardware and the
    model is not simulated."""
    same_hardware = ref.hardware_id == result.hardware_id
    if not same_hardware and not result.simulated and result.method != "fp32":
        result.warnings.append(
            "the fp32 reference was timed on other hardware than this job: no speedup is reported "
            "(compare latencies across machines with `farm results compare`)"
        )
    for lat in latency:
        base = ref.latency.get(lat["batch_size"])
        speedup = base["latency_p50_ms"] / lat["latency_p50_ms"] if base and lat["latency_p50_ms"] > 0 else None
        # A simulated model runs fake quantization on fp32 kernels: its latency says nothing about a
        # low-bit deployment, so no speedup is claimed for it.
        result.latency.append({**lat, "speedup": speedup if same_hardware and not result.simulated else None})


def fill_coverage(result: JobResult, loaded: Any, example: Any, outcome: Any, cfg: MethodConfig) -> None:
    """How much of the model (parameters, MACs, layers) the method quantized; measured on the eager modules,
    before scripting."""
    from farm.quant import coverage

    if loaded.graph or cfg.method in ("fp32", "noop"):
        return
    profile = coverage.profile_layers(loaded.module.cpu(), example)
    if cfg.integer:
        cov = coverage.measure(profile, outcome.model, simulated=outcome.simulated)
        warning = coverage.low_coverage_warning(cfg.method, cov)
        if warning:
            result.warnings.append(warning)
    else:  # a cast stores every parameter in half precision; autocast keeps fp32 weights, runs the MACs in half
        cov = coverage.full(profile, params=0.0 if outcome.autocast_dtype is not None else 1.0)
    result.coverage, result.coverage_macs = cov.params, cov.macs
    result.coverage_layers, result.coverage_layers_total = cov.layers, cov.layers_total


def fill_size(result: JobResult, artifact_bytes: int, outcome: Any, ref: Reference) -> None:
    """The model's size (the artifact's, or a packed estimate for a simulated model) and its ratio to fp32."""
    if outcome.simulated and outcome.packed_size_bytes is not None:
        result.size_bytes, result.size_kind = outcome.packed_size_bytes, "packed_estimate"
    else:
        result.size_bytes, result.size_kind = artifact_bytes, "artifact"
    result.size_fp32_bytes = ref.size_bytes
    result.size_ratio = result.size_bytes / ref.size_bytes if ref.size_bytes else None


def check_runs(model: Any, example: Any, spec: JobSpec) -> None:
    """Refuse a model that fails on the dataset's inputs, before anything is quantized or timed.

    Raises:
        ConfigError: the model raises on one sample, with the sample's shape and the error in one line.
    """
    import torch

    try:
        with torch.inference_mode():
            model(example)
    except Exception as e:
        raise ConfigError(
            f"model {spec.model} fails on inputs from {spec.dataset} (sample shape {tuple(example.shape[1:])}): "
            f"{type(e).__name__}: {' '.join(str(e).split())[:240]}"
        ) from None


def _logits(out: Any) -> Any:
    if isinstance(out, (tuple, list)):
        return _logits(out[0])
    if isinstance(out, dict):
        return _logits(out.get("logits", out.get("out", next(iter(out.values())))))
    return out
