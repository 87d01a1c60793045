"""Measuring a quantized model against its fp32 reference: outputs on the test split, latency side by side, and
the figures a trial reports (accuracy and fidelity, speedup, layer coverage, size).

The engine's half of a job: :mod:`farm.jobs.steps` orders a job's steps and calls these; they know nothing of the
farm around them (no database, broker or artifact store) and fill in a :class:`farm.jobs.contract.JobResult`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from farm.errors import ConfigError, QuantizationError
from farm.jobs.contract import JobResult, JobSpec
from farm.quant.bench_config import BenchmarkConfig
from farm.quant.config import MethodConfig
from farm.quant.hostload import crowded
from farm.quant.isolation import compute_step, measuring
from farm.quant.reference import Baseline, Reference
from farm.quant.timed_calls import Calls, time_batch

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
    output: str | int | None = None,
) -> Any:
    """Outputs (and labels) of ``outcome``'s model on every sample of ``dataset``.

    Args:
        output: which of the model's outputs to keep (:func:`farm.quant.inputs.select_output`).

    Raises:
        QuantizationError: the model fails to run (e.g. an op with no kernel on the chosen engine) or
            produces NaN/Inf.
        Cancelled: ``stop`` said so.
    """
    import torch

    from farm.errors import Cancelled
    from farm.quant.inputs import batch_len, select_output
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
                with compute_step(stop):  # pauses while another job on this host times its benchmark
                    raw = outcome.forward(outcome.prepare_input(x))
            except Exception as e:
                raise QuantizationError(
                    f"{label} model failed to run: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
                ) from e
            outs.append(select_output(raw, output).detach().float().cpu())
            labels.append(y)
            done += batch_len(x)
            report("evaluate", done / total)
    outputs = torch.cat(outs)
    if label != "fp32" and not all_finite(outputs):
        raise QuantizationError(f"{label} model produces NaN/Inf outputs on the test split")
    return (outputs, torch.cat(labels)) if with_labels else outputs


def benchmark(
    outcome: Any,
    dataset: Any,
    cfg: BenchmarkConfig,
    report: ProgressFn,
    stop: Callable[[], bool],
    baseline: Baseline | None = None,
    rivals: Sequence[tuple[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Latency figures for each batch size, with real inputs placed and cast before timing.

    Under ``exclusive`` isolation the warm-up (``cfg.warmup_s`` per model: first runs compile, allocate and
    profile) runs before the exclusive hold, holding the lock shared as any compute does; inside the hold each model
    re-warms for :data:`REWARM_S` (at least 3 calls), and each block of a side-by-side pair still starts with an
    untimed call.
    The host then stays exclusive only while figures are taken.

    Args:
        baseline: the fp32 model this job compares with. A trial that is not simulated is timed side by side
            with it (:func:`farm.quant.side_by_side.measure_pair`: same inputs, threads and process), which gives its
            ``speedup``; the fp32 job passes its own (``outcome is baseline.deployed``) and is timed alone. Either
            way ``fp32_deployed_as`` says how fp32 was deployed; the fp32 job also times the eager form where it
            differs from the deployed one (``fp32_eager_p50_ms``; None in a trial's entry).
        rivals: (runtime, fp32 model) of other runtimes (``cfg.rivals``, built by :mod:`farm.jobs.rivals`): a trial
            timed beside its baseline is timed beside each of them too, in the same loop (``rivals`` in its entry).
    """
    from farm.quant.latency import warm_up
    from farm.zoo.data import first_batch

    figures = []
    prewarm = cfg.isolation == "exclusive" and cfg.warmup_s > REWARM_S  # warm before the exclusive hold
    timing = dataclasses.replace(cfg, warmup_s=REWARM_S) if prewarm else cfg
    with outcome.active():
        for i, batch_size in enumerate(cfg.batch_sizes):
            with compute_step(stop):  # reloading and warming compute: they pause while another job here times
                calls = Calls.of(outcome, first_batch(dataset, batch_size), baseline, rivals)
                if prewarm:
                    warm_up(calls.all(), cfg.warmup_s, device=outcome.device)
            with measuring(cfg.isolation, stop) as isolated:  # exclusive: other jobs' compute here pauses
                entry = time_batch(calls, outcome.device, batch_size, timing, isolated)
            figures.append({**entry, **isolated.figures()})
            del calls  # the reloaded copies go before the next batch size's come
            report("benchmark", (i + 1) / len(cfg.batch_sizes))
    return figures


#: Warm-up inside an exclusive hold, after ``warmup_s`` of it just before: back to the warm state, no more.
REWARM_S = 0.01


def fill_figures(
    result: JobResult,
    outcome: Any,
    outputs: Any,
    latency: list[dict[str, Any]],
    ref: Reference,
    splits: Any = None,
    spec: JobSpec | None = None,
) -> None:
    """A trial's accuracy and latency against its fp32 reference, its own metric (``spec.metric``), and what a
    simulated model's figures mean.

    Args:
        outcome: the deployed model (a ``QuantOutcome``).
        outputs: its outputs on the test split (:func:`evaluate`).
        latency: its latency figures (:func:`benchmark`).
        splits: the dataset (``DatasetSplits``): its ``num_classes``, where known, with ``spec.output`` says whether
            the outputs are class scores (:func:`farm.quant.metrics.is_class_scores`).
        spec: the job; its ``metric`` function, if any, is called on the outputs (:func:`fill_metric`).

    Raises:
        QuantizationError: the metric function raised or returned something that is not a finite number.
    """
    result.simulated = outcome.simulated
    if outcome.simulated:
        result.warnings.append(
            f"simulated: int{result.bits} figures come from fake quantization on fp32 kernels; accuracy "
            "approximates a real low-bit deployment, latency does not (no speedup is reported), and the size "
            "is a packed estimate"
        )
    num_classes = getattr(splits, "num_classes", None)
    fill_accuracy(result, outputs, ref, num_classes=num_classes, output=spec.output if spec is not None else None)
    if spec is not None:
        fill_metric(result, spec.metric, outputs, ref)
    fill_latency(result, latency, ref)
    result.quantized_engine = outcome.engine


def fill_accuracy(
    result: JobResult, outputs: Any, ref: Reference, *, num_classes: int | None = None, output: str | int | None = None
) -> None:
    """Accuracy (top-1, top-5) and fidelity to the fp32 outputs; without labels, agreement with fp32 stands in
    for accuracy.

    Accuracy, top-5 and agreement read a top-1 class: on outputs that are not class scores (an embedding, a hidden
    state ``[batch, seq, dim]``, a last dimension other than the class count) they stay None, and cosine and SQNR
    carry the comparison.
    """
    from farm.quant.metrics import HEALTH_OK, fidelity, is_class_scores, labels_fit, result_health, topk_accuracy

    scores = is_class_scores(tuple(ref.outputs.shape), num_classes, output)
    fid = fidelity(ref.outputs, outputs, class_scores=scores)
    result.agreement, result.sqnr_db, result.cosine = fid.agreement, fid.sqnr_db, fid.cosine
    health = result_health(ref.outputs, outputs, fid, class_scores=scores)
    result.health = health.status
    if health.status != HEALTH_OK and health.reason:
        result.warnings.append(health.reason)
    if not scores:
        result.accuracy_kind = "none"
        shape = "x".join(map(str, ref.outputs.shape[1:]))
        result.warnings.append(
            f"the compared output (per sample {shape}) is not class scores: no accuracy or agreement; cosine and "
            "SQNR compare it with fp32's"
        )
    elif ref.labelled and not labels_fit(tuple(ref.outputs.shape), num_classes):
        result.accuracy_kind = "none"
        result.warnings.append(
            f"the model scores {ref.outputs.shape[-1]} classes but {num_classes} are labelled: no accuracy against "
            "labels; agreement, cosine and SQNR compare it with fp32's"
        )
    elif ref.labelled:
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


def load_metric(metric: str | None) -> Any:
    """The job's metric function (allowlisted and imported: :func:`farm.quant.metrics.load_metric_fn`), or None.

    Raises:
        ConfigError: a malformed reference, a module outside FARM_ALLOWED_MODULES, or one that does not import.
    """
    from farm.quant.metrics import load_metric_fn

    return None if metric is None else load_metric_fn(metric)


def fill_metric(result: JobResult, metric: str | None, outputs: Any, ref: Reference, fn: Any = None) -> None:
    """The user's own metric (``JobSpec.metric``) on the job's outputs against the fp32 outputs, with the labels
    where the dataset has them.

    Args:
        metric: ``entrypoint:pkg.module:function``, or None (nothing to do).
        fn: the function, when the caller loaded it already (:func:`farm.quant.metrics.load_metric_fn`).

    Raises:
        ConfigError: the function is not allowlisted or does not import.
        QuantizationError: it raised or returned something that is not a finite number.
    """
    from farm.quant.metrics import load_metric_fn, user_metric

    if metric is None:
        return
    function = fn if fn is not None else load_metric_fn(metric)
    labels = ref.labels if ref.labelled else None
    result.metric_name, result.metric = metric, user_metric(function, metric, outputs, ref.outputs, labels)


def fill_latency(result: JobResult, latency: list[dict[str, Any]], ref: Reference) -> None:
    """Latency per batch size, and a warning for each figure that is not stable.

    A trial's ``speedup`` is its own side-by-side ratio over its fp32 baseline (:func:`benchmark`), never a
    division by the reference job's latency, which was timed at another moment (and maybe elsewhere). The fp32
    job's is 1.0: its figures are the reference's own. A simulated model runs fake quantization on fp32
    kernels, so no speedup is claimed for it.
    """
    from farm.quant.drift import drift_remedy

    for lat in latency:
        speedup = 1.0 if result.method == "fp32" and ref.latency.get(lat["batch_size"]) else lat.get("speedup")
        result.latency.append({**lat, "speedup": None if result.simulated else speedup})
    unstable = [lat for lat in result.latency if lat.get("stable") is False]
    for lat in unstable:
        reason = lat.get("unstable_reason") or "unknown"
        remedy = (
            drift_remedy(lat, fp32=result.method == "fp32")
            if "between runs" in reason
            else "quiet the machine or raise benchmark.max_time_s before trusting its p50"
            + (" and speedup" if lat.get("speedup") is not None and result.method != "fp32" else "")
        )
        if crowded(lat):  # name the likeliest cause: the neighbours
            busy = f"; other processes kept {lat['host_load']:.0%} of the CPU time this job left busy while it timed "
            reason += busy + (
                "(the measurement lock pauses farm jobs only)"
                if lat.get("isolation") == "exclusive"
                else f"(isolation {lat.get('isolation') or 'none'}: other farm jobs may have run or timed alongside)"
            )
        result.warnings.append(f"latency at batch {lat['batch_size']} is not stable: {reason}; {remedy}")


def fill_coverage(result: JobResult, loaded: Any, example: Any, outcome: Any, cfg: MethodConfig) -> None:
    """How much of the model (parameters, MACs, layers) the method quantized; measured on the eager modules,
    before scripting."""
    from farm.quant import coverage
    from farm.quant.layer_list import kept_by_rules

    if loaded.graph or cfg.method in ("fp32", "noop"):
        return
    profile = coverage.profile_layers(loaded.module.cpu(), example)
    kept = kept_by_rules(loaded.module, cfg.method, cfg.layers)  # the layers per-layer rules keep in fp32
    if cfg.integer:
        cov = coverage.measure(profile, outcome.model, simulated=outcome.simulated)
        warning = coverage.low_coverage_warning(cfg.method, cov, kept)
        if warning:
            result.warnings.append(warning)
    else:  # a cast stores every parameter in half precision; autocast keeps fp32 weights, runs the MACs in half
        params = 0.0 if outcome.autocast_dtype is not None else 1.0
        cov = coverage.full(profile, params=params, kept=kept, model=loaded.module)
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
    """Refuse a model that fails on the dataset's inputs, or whose outputs lack ``spec.output``, before anything is
    quantized or timed.

    Raises:
        ConfigError: the model raises on one sample (with the inputs' shapes and the error in one line),
            ``spec.output`` names no output of the model (with the outputs it has), or a per-layer rule matches no
            layer the method quantizes (:func:`farm.quant.layer_list.check_rules`).
    """
    import torch

    from farm.quant.inputs import call, describe, select_output

    try:
        with torch.inference_mode():
            out = call(model, example)
    except Exception as e:
        if isinstance(example, torch.Tensor):
            shapes = f"sample shape {tuple(example.shape[1:])}"
        else:
            shapes = "sample " + ", ".join(f"{d['name']} {tuple(d['shape'])} {d['dtype']}" for d in describe(example))
        raise ConfigError(
            f"model {spec.model} fails on inputs from {spec.dataset} ({shapes}): "
            f"{type(e).__name__}: {' '.join(str(e).split())[:240]}"
        ) from None
    try:
        select_output(out, spec.output)
    except QuantizationError as e:
        raise ConfigError(f"model {spec.model}: {e}") from None
    from farm.quant.layer_list import check_rules

    check_rules(model, spec.method)  # per-layer rules that fit no layer: refused before anything is measured
