"""run_job: the ONE place where a job's steps are ordered.

load model and data -> fp32 reference (given, or computed here) -> apply the method -> evaluate ->
benchmark -> save the artifact -> result. It writes only into the directory it is given; whoever calls it
(the CLI, the local runner, a Celery task) decides where that directory's files go and records the result.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.errors import ConfigError, QuantizationError
from farm.jobs.contract import ENGINE_VERSION, JobResult, JobSpec, jsonable
from farm.quant.config import BenchmarkConfig, MethodConfig, resolve_device

REFERENCE_FILE = "reference.pt"
CHECKPOINT_FILE = "checkpoint.pt"
EVAL_BATCH_SIZE = 64

ProgressFn = Callable[[str, float | None], None]


@dataclass
class Reference:
    """The fp32 model's figures on the test split, shared by every job of the same model.

    Attributes:
        outputs: fp32 outputs on the test split, (N, classes), CPU float32.
        labels: test labels (-1 where there are none).
        labelled: whether the labels are real.
        accuracy, top5: fp32 accuracy on the labels (None without labels).
        latency: fp32 latency figures by batch size.
        size_bytes: size of the fp32 artifact.
        device: where the figures were measured.
        hardware_id: fingerprint hash of that machine.
    """

    outputs: Any
    labels: Any
    labelled: bool
    accuracy: float | None
    top5: float | None
    latency: dict[int, dict[str, Any]]
    size_bytes: int
    device: str
    hardware_id: str
    #: The fp32 model as measured (in this process only; never saved).
    module: Any = None

    def save(self, path: Path) -> None:
        import torch

        meta: dict[str, Any] = {
            "labelled": self.labelled,
            "accuracy": self.accuracy,
            "top5": self.top5,
            "latency": {str(k): v for k, v in self.latency.items()},
            "size_bytes": self.size_bytes,
            "device": self.device,
            "hardware_id": self.hardware_id,
        }
        torch.save({"outputs": self.outputs, "labels": self.labels, "meta": json.dumps(jsonable(meta))}, path)

    @classmethod
    def load(cls, path: Path) -> Reference:
        """Read a ``reference.pt`` (tensors and JSON only: inspected, then ``weights_only=True``).

        Raises:
            QuantizationError: the file holds something a weights-only load refuses.
        """
        import io

        import torch

        from farm.zoo.safe_load import PROMISE, UnsafeFile, check_torch_file

        raw = path.read_bytes()  # once: torch.load gets the very bytes inspected, not the path again
        try:
            check_torch_file(raw, path.name)
        except UnsafeFile as e:
            raise QuantizationError(f"fp32 reference {path} refused: {e} ({PROMISE})") from None
        data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        meta = json.loads(data["meta"])
        meta["latency"] = {int(k): v for k, v in meta["latency"].items()}
        return cls(outputs=data["outputs"], labels=data["labels"], **meta)


def run_job(
    spec: JobSpec,
    out_dir: Path,
    *,
    reference: Reference | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint: Path | None = None,
) -> JobResult:
    """Run one trial and write its artifact (``model.pt`` + ``manifest.json``) into ``out_dir``.

    Args:
        spec: what to run.
        out_dir: an empty directory for the artifact; an fp32 job also writes ``reference.pt`` there.
        reference: the fp32 reference of the same model, dataset and device; computed here when None.
        progress: called with (step, fraction) as the job advances.
        should_stop: polled in long loops; True raises :class:`farm.errors.Cancelled`.
        checkpoint: for qat, a :func:`train_job` checkpoint (fine-tuned on another worker) to convert
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

    from farm.quant.artifact import deployable, save_model, write_manifest
    from farm.quant.fingerprint import fingerprint, hardware_id, hardware_label
    from farm.quant.latency import torch_threads
    from farm.quant.memory import peak_rss_bytes, reset_peak
    from farm.quant.registry import QuantContext, QuantOutcome, apply_method, quiet_torch_ao
    from farm.zoo.data import calibration_subset, first_batch, load_dataset
    from farm.zoo.models import load_model

    report = progress or (lambda step, fraction: None)
    stop = should_stop or (lambda: False)
    timings: dict[str, float] = {}

    preflight(cfg, device, training=checkpoint is None)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch_threads(spec.benchmark.threads), _seeded(spec.seed), quiet_torch_ao():
        reset_peak()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        with _step("load", timings, report):
            # The data first: a bad path or calibration size is refused before a model is built (or trained).
            splits = load_dataset(spec.dataset)
            calibration = calibration_subset(splits, cfg.calibration_size, spec.seed) if cfg.calibrated else None  # type: ignore[attr-defined]
            loaded = load_model(spec.model, weights=spec.weights)
        result.warnings.extend(splits.notes)
        example = first_batch(splits.test, 1)
        _check_runs(loaded.module, example, spec)

        if reference is None:
            with _step("reference", timings, report):
                reference = compute_reference(loaded.module, splits.test, splits.labelled, spec, device, report, stop)
        fp = fingerprint(device)
        result.hardware, result.hardware_id, result.fingerprint = hardware_label(fp), hardware_id(fp), fp

        if cfg.method == "fp32":
            outcome = QuantOutcome(reference.module if reference.module is not None else loaded.module, device=device)
            result.deployed_as = "torchscript" if isinstance(outcome.model, torch.jit.ScriptModule) else "eager"
            outputs = reference.outputs
            latency = list(reference.latency.values())
        else:
            ctx = QuantContext(
                model_ref=spec.model,
                example_input=example,
                device=device,
                calibration=calibration,
                train=splits.train,
                labelled=splits.labelled,
                teacher=loaded.module,
                seed=spec.seed,
                graph=loaded.graph,
                progress=report,
                should_stop=stop,
                checkpoint=read_checkpoint(checkpoint) if checkpoint is not None else None,
            )
            method_started = time.perf_counter()
            outcome = apply_method(loaded.module, cfg, ctx)
            timings.update(outcome.timings_s)
            timings["quantize"] = time.perf_counter() - method_started
            result.warnings.extend(outcome.warnings)
            _fill_coverage(result, loaded, example, outcome, cfg)  # on the eager modules, before scripting
            with _step("script", timings, report):
                outcome.model, scripted = deployable(
                    outcome.model, outcome.prepare_input(example), autocast=outcome.autocast_dtype
                )
            result.deployed_as = "torchscript" if scripted else "eager"
            with _step("evaluate", timings, report):
                outputs = evaluate(outcome, splits.test, report, stop, label=cfg.label())
            with _step("benchmark", timings, report):
                latency = benchmark(outcome, splits.test, spec.benchmark, report, stop)

        result.simulated = outcome.simulated
        if outcome.simulated:
            result.warnings.append(
                f"simulated: int{result.bits} figures come from fake quantization on fp32 kernels; accuracy "
                "approximates a real low-bit deployment, latency does not (no speedup is reported), and the size "
                "is a packed estimate"
            )
        _fill_accuracy(result, outputs, reference)
        _fill_latency(result, latency, reference)
        result.quantized_engine = outcome.engine

        with _step("save", timings, report):
            saved = save_model(outcome.model, outcome.prepare_input(example), out_dir, autocast=outcome.autocast_dtype)
            if cfg.method == "fp32":
                reference.size_bytes = saved.size_bytes
                reference.save(out_dir / REFERENCE_FILE)
        result.artifact = {
            "file": saved.path.name,
            "format": saved.format,
            "sha256": saved.sha256,
            "size_bytes": saved.size_bytes,
        }
        _fill_size(result, saved.size_bytes, outcome, reference)
        result.peak_memory_bytes = peak_rss_bytes()
        if device.startswith("cuda"):
            result.peak_gpu_memory_bytes = int(torch.cuda.max_memory_allocated())
    result.timings_s = {k: round(v, 6) for k, v in timings.items()}
    result.duration_s = time.perf_counter() - started
    write_manifest(
        out_dir,
        {
            "model": spec.model,
            "dataset": spec.dataset,
            "weights": spec.weights,
            "method": cfg.to_dict(),
            "label": cfg.label(),
            "artifact": result.artifact,
            "quantized_engine": outcome.engine,
            "simulated": outcome.simulated,
            "input": {"shape": list(example.shape[1:]), "dtype": str(outcome.input_dtype).replace("torch.", "")},
            "device": device,
            "metrics": result.to_dict(),
            "fingerprint": result.fingerprint,
            "engine_version": ENGINE_VERSION,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    return result


def train_job(
    spec: JobSpec,
    out_dir: Path,
    *,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Path:
    """The first half of a qat job split across workers: fine-tune, and write ``checkpoint.pt``.

    The checkpoint is the prepared model's state dict (weights, fake-quantizer ranges, observer state)
    plus the step timings; :func:`run_job` with ``checkpoint=`` rebuilds and converts it on another machine.

    Raises:
        ConfigError: not a qat job, bad references, or CUDA asked for on a machine without it.
        QuantizationError: the model can't be prepared or the loss diverged.
    """
    import torch

    from farm.quant import qat
    from farm.quant.latency import torch_threads
    from farm.quant.registry import QuantContext, quiet_torch_ao
    from farm.zoo.data import calibration_subset, first_batch, load_dataset
    from farm.zoo.models import load_model

    cfg = spec.method
    if cfg.method != "qat":
        raise ConfigError(f"only qat jobs are fine-tuned in a separate stage, not {cfg.method}")
    preflight(cfg, "cpu")
    timings: dict[str, float] = {}
    report = progress or (lambda step, fraction: None)
    with torch_threads(spec.benchmark.threads), _seeded(spec.seed), quiet_torch_ao():
        with _step("load", timings, report):
            splits = load_dataset(spec.dataset)
            loaded = load_model(spec.model, weights=spec.weights)
        ctx = QuantContext(
            model_ref=spec.model,
            example_input=first_batch(splits.test, 1),
            calibration=calibration_subset(splits, cfg.calibration_size, spec.seed),  # type: ignore[attr-defined]
            train=splits.train,
            labelled=splits.labelled,
            teacher=loaded.module,
            seed=spec.seed,
            graph=loaded.graph,
            progress=report,
            should_stop=should_stop or (lambda: False),
        )
        prepared = qat.train(loaded.module, cfg, ctx, timings)  # type: ignore[arg-type]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CHECKPOINT_FILE
    meta = {"timings": timings, "method": cfg.to_dict()}
    torch.save({"state": prepared.state_dict(), "meta": json.dumps(meta)}, path)
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a :func:`train_job` checkpoint (tensors and JSON only: ``weights_only=True``).

    Raises:
        QuantizationError: the file is not such a checkpoint (corrupted, or something else).
    """
    import io
    import pickle

    import torch

    from farm.zoo.safe_load import PROMISE, UnsafeFile, check_torch_file

    try:
        raw = path.read_bytes()  # once: torch.load gets the very bytes inspected, not the path again
    except OSError as e:
        raise QuantizationError(f"qat: could not read checkpoint {path.name} ({e.strerror or e})") from None
    try:
        check_torch_file(raw, path.name)
    except UnsafeFile as e:
        raise QuantizationError(f"qat: checkpoint {path.name} refused: {e} ({PROMISE})") from None
    try:
        data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        state, meta = data["state"], json.loads(data["meta"])
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        detail = " ".join(str(e).split())[:200] or type(e).__name__
        raise QuantizationError(f"qat: {path.name} is not a fine-tuning checkpoint of this job ({detail})") from None
    if not isinstance(state, dict):
        raise QuantizationError(f"qat: {path.name} is not a fine-tuning checkpoint of this job (no state dict)")
    meta = meta if isinstance(meta, dict) else {}
    return {"state": state, "timings": meta.get("timings", {}), "method": meta.get("method")}


def compute_reference(
    model: Any,
    test: Any,
    labelled: bool,
    spec: JobSpec,
    device: str,
    report: ProgressFn,
    stop: Callable[[], bool],
) -> Reference:
    """Evaluate and time the fp32 model.

    Raises:
        ConfigError: the model produces NaN or Inf on the reference inputs.
    """
    from farm.quant.artifact import deployable, model_size_bytes
    from farm.quant.fingerprint import fingerprint, hardware_id
    from farm.quant.metrics import all_finite, topk_accuracy
    from farm.quant.registry import QuantOutcome
    from farm.zoo.data import first_batch

    example = first_batch(test, 1).to(device)
    deployed, _ = deployable(model.to(device), example)
    outcome = QuantOutcome(deployed, device=device)
    outputs, labels = evaluate(outcome, test, report, stop, label="fp32", with_labels=True)
    if not all_finite(outputs):
        raise ConfigError(
            f"model {spec.model} produces NaN/Inf outputs on the reference inputs ({spec.dataset} test split); "
            "check its weights"
        )
    latency = {lat["batch_size"]: lat for lat in benchmark(outcome, test, spec.benchmark, report, stop)}
    accuracy = topk_accuracy(outputs, labels, 1) if labelled else None
    top5 = topk_accuracy(outputs, labels, 5) if labelled and outputs.shape[-1] >= 10 else None
    size = model_size_bytes(model, first_batch(test, 1).to(device))
    return Reference(outputs, labels, labelled, accuracy, top5, latency, size, device, hardware_id(fingerprint(device)))


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


def _blank_result(spec: JobSpec, device: str) -> JobResult:
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
    )


def _fill_accuracy(result: JobResult, outputs: Any, ref: Reference) -> None:
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


def _fill_latency(result: JobResult, latency: list[dict[str, Any]], ref: Reference) -> None:
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


def _fill_coverage(result: JobResult, loaded: Any, example: Any, outcome: Any, cfg: MethodConfig) -> None:
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


def _fill_size(result: JobResult, artifact_bytes: int, outcome: Any, ref: Reference) -> None:
    if outcome.simulated and outcome.packed_size_bytes is not None:
        result.size_bytes, result.size_kind = outcome.packed_size_bytes, "packed_estimate"
    else:
        result.size_bytes, result.size_kind = artifact_bytes, "artifact"
    result.size_fp32_bytes = ref.size_bytes
    result.size_ratio = result.size_bytes / ref.size_bytes if ref.size_bytes else None


def _check_runs(model: Any, example: Any, spec: JobSpec) -> None:
    import torch

    try:
        with torch.inference_mode():
            model(example)
    except Exception as e:
        raise ConfigError(
            f"model {spec.model} fails on inputs from {spec.dataset} (sample shape {tuple(example.shape[1:])}): "
            f"{type(e).__name__}: {' '.join(str(e).split())[:240]}"
        ) from None


def preflight(cfg: MethodConfig, device: str, *, training: bool = True) -> None:
    """Refuse, before loading anything, a job this machine cannot run.

    Args:
        training: a qat job fine-tunes here (False: it converts a checkpoint fine-tuned elsewhere, e.g. on a
            GPU worker, and needs no training device).

    Raises:
        ConfigError: fp16 without CUDA, or a CUDA device asked for on a machine without one.
    """
    from farm.quant.fp import check_half_device

    if cfg.method in ("fp16", "bf16"):
        check_half_device(cfg.method, device)
    elif device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device {device}: this machine has no CUDA device")
    if cfg.method == "qat" and training:
        from farm.quant.qat import train_device

        train_device(cfg)  # type: ignore[arg-type]


def _logits(out: Any) -> Any:
    if isinstance(out, (tuple, list)):
        return _logits(out[0])
    if isinstance(out, dict):
        return _logits(out.get("logits", out.get("out", next(iter(out.values())))))
    return out


@contextlib.contextmanager
def _step(name: str, timings: dict[str, float], report: ProgressFn) -> Iterator[None]:
    report(name, 0.0)
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - started
    report(name, 1.0)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
