"""ONNX Runtime as a job's deploy runtime: :func:`build` exports the fp32 model once and makes of it what the job
deploys, plus the fp32 session it is timed against.

- fp32: the exported graph, run by onnxruntime. A trial like any other: the torch fp32 job stays the reference
  that accuracy drop, agreement and cosine compare with.
- fp16: the graph converted to float16 (inputs and outputs kept float32); only on a CUDA execution provider.
- dynamic: :func:`farm.runtimes.ort_quantize.quantize_dynamic_onnx`, per channel when ``granularity`` says so.
- static: :func:`farm.runtimes.ort_quantize.quantize_static_onnx`, calibrated on the job's calibration subset in
  the batches torch calibration reads (``ctx.batch_size``); observer, percentile, granularity and activation
  (symmetric or affine) mapped; ``reduce_range`` as given (None: off, onnxruntime's default).
- qat: fine-tuned in torch exactly as the torch method is (:mod:`farm.runtimes.ort_qat`), then exported as a
  QuantizeLinear / DequantizeLinear graph that onnxruntime runs with int8 kernels.

Integer methods run 8-bit only (onnxruntime has no int4 kernels): other bit-widths are refused by
:func:`check`, before anything is loaded.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from farm.errors import ConfigError, QuantizationError
from farm.runtimes.build import RuntimeBuild, calibration_batches
from farm.runtimes.layer_plan import LayerPlan, layer_plan
from farm.runtimes.registry import RUNTIMES

RUNTIME = "onnxruntime"
#: The deployed graph, the artifact's file.
MODEL_FILE = "model.onnx"
#: The fp32 graph a trial is timed against (not part of its artifact).
FP32_FILE = "fp32.onnx"
#: Providers that run on a CUDA device.
CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
#: Below this share of weight elements stored as integers, the job carries a low-coverage warning.
LOW_COVERAGE = 0.5


def preload() -> Iterator[None]:
    """What a process's first ONNX Runtime job imports, a step per ``yield`` (a timing waiting for the host goes first
    between two): the exporter, ONNX, ONNX Runtime and its quantization tools with the shape inference that
    pre-processes a graph (sympy). Measured on digits-cnn: the first static build 1.06 s without it, 0.12 s after it
    (as every later job's)."""
    import torch.onnx  # noqa: F401

    yield
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    yield
    import onnxruntime.quantization  # noqa: F401

    yield
    import onnxruntime.quantization.shape_inference  # noqa: F401
    from onnxruntime.tools import symbolic_shape_infer  # noqa: F401


def default_provider(device: str) -> str:
    """The execution provider a job on ``device`` runs with when it names none."""
    return "CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider"


def provider_for(cfg: Any, device: str) -> str:
    """The job's provider: the one its config names, else :func:`default_provider`."""
    return getattr(cfg, "provider", None) or default_provider(device)


def check(cfg: Any, device: str) -> None:
    """Refuse, before anything is loaded, an onnxruntime job this machine or this runtime cannot run.

    Raises:
        ConfigError: fp16 without a CUDA provider, an integer method below 8 bits, a provider onnxruntime does not
            know, or one this onnxruntime build lacks (the message lists those it has).
    """
    provider = provider_for(cfg, device)
    known = RUNTIMES[RUNTIME].providers
    if provider not in known:
        raise ConfigError(f"unknown onnxruntime execution provider {provider!r}: choose from {', '.join(known)}")
    if cfg.method == "fp16" and provider not in CUDA_PROVIDERS:
        raise ConfigError(
            f"fp16 on onnxruntime runs on a CUDA execution provider only, not {provider}: pass --device cuda "
            "(on CPU use fp32, dynamic or static)"
        )
    bits = getattr(cfg, "bits", None)
    if bits is not None and bits != 8:
        raise ConfigError(f"onnxruntime runs int8 kernels only: {cfg.method} bits must be 8, got {bits}")
    from farm.runtimes.ort import require_ort

    try:
        available = require_ort().get_available_providers()
    except QuantizationError as e:
        raise ConfigError(str(e)) from None
    if provider not in available:
        raise ConfigError(
            f"execution provider {provider} is not in this machine's onnxruntime (has: {', '.join(available)})"
        )


def build(model: Any, cfg: Any, ctx: Any, workdir: Path, *, threads: int | None = None) -> RuntimeBuild:
    """Export ``model`` and build ``cfg``'s method for onnxruntime in ``workdir``.

    Args:
        model: the fp32 ``nn.Module`` (left as it is: a copy is exported when it is not on the CPU).
        cfg: the method config (its ``runtime`` is onnxruntime; ``provider`` optional).
        ctx: the job's :class:`farm.quant.context.QuantContext` (example input, output, calibration, train split).
        workdir: an empty directory for the graphs.
        threads: intra-op threads of both sessions (the job's benchmark threads).

    Returns:
        The deployed session, the fp32 session it is timed against (None for fp32), ``model.onnx`` and the recipe.

    Raises:
        ConfigError: see :func:`check`.
        QuantizationError: export, quantization or session creation failed (one line each).
    """
    from farm.quant.isolation import compute_step
    from farm.runtimes.onnx_export import export_onnx
    from farm.runtimes.ort import require_ort

    check(cfg, ctx.device)
    plan = layer_plan(model, cfg, RUNTIME)  # a rule that matches nothing is refused before the export
    ort = require_ort()
    workdir = Path(workdir)
    provider = provider_for(cfg, ctx.device)
    timings: dict[str, float] = {}
    fp32_path = workdir / (MODEL_FILE if cfg.method == "fp32" else FP32_FILE)
    with _timed("export", timings), compute_step(ctx.should_stop):
        exported = export_onnx(_on_cpu(model), ctx.example_input, fp32_path, output=ctx.output)
    path, details, coverage, warnings = _deploy(model, cfg, ctx, fp32_path, workdir, timings, plan)
    with _timed("session", timings):
        outcome = _session(path, threads, provider, ctx.device)
        baseline = None if path == fp32_path else _session(fp32_path, threads, provider, ctx.device)
    info = {
        "runtime": RUNTIME,
        "runtime_version": ort.__version__,
        "execution_provider": provider,
        "opset": exported.opset,
        "exporter": exported.exporter,
        "torch_version": exported.torch_version,
        "onnx_version": exported.onnx_version,
        "threads": threads,
        "format": "onnx",
        **details,
        **(plan.details() if plan.rules else {}),
    }
    return RuntimeBuild(
        outcome=outcome,
        baseline=baseline,
        files=[path],
        size_bytes=path.stat().st_size,
        coverage=coverage,
        info=info,
        warnings=warnings,
        timings_s=timings,
    )


def _deploy(
    model: Any, cfg: Any, ctx: Any, fp32_path: Path, workdir: Path, timings: dict[str, float], plan: LayerPlan
) -> tuple[Path, dict[str, Any], dict[str, Any] | None, list[str]]:
    """(the deployed graph, the recipe's details, coverage, warnings) for ``cfg.method``."""
    from farm.quant.isolation import compute_step

    dst = workdir / MODEL_FILE
    method = cfg.method
    if method == "fp32":
        return fp32_path, {}, None, []
    if method == "qat":
        from farm.runtimes.ort_qat import export_qat

        qat = export_qat(model, cfg, ctx, dst, timings)
        # the rules were applied in torch: fine-tuning left the skipped layers without fake quantizers
        return dst, qat.details, _coverage(qat.coverage), _coverage_warnings(method, qat.coverage, len(plan.skipped))
    exclude, overrides = _rule_nodes(fp32_path, plan)
    if method == "fp16":
        with _timed("convert", timings), compute_step(ctx.should_stop):
            _to_fp16(fp32_path, dst, exclude)
        return dst, {"fp16": "keep_io_types", **({"fp32_nodes": exclude} if exclude else {})}, None, []
    if method not in ("dynamic", "static"):
        raise QuantizationError(f"onnxruntime cannot run method {method!r}")
    with compute_step(ctx.should_stop):  # the static quantizer runs every calibration batch
        q = _quantize(cfg, ctx, fp32_path, dst, exclude, overrides)
    timings.update(q.timings_s)
    details = {
        "mode": q.mode,
        "per_channel": q.per_channel,
        "calibrate_method": q.calibrate_method,
        "extra_options": q.extra_options,
        "calibration_batches": q.calibration_batches,
        "preprocessed": q.preprocessed,
        "coverage_by_op": q.coverage.by_op,
        **({"nodes_to_exclude": exclude} if exclude else {}),
    }
    warnings = _coverage_warnings(method, q.coverage, len(plan.skipped))
    if method == "dynamic" and q.coverage.by_op.get("Conv", [0, 0])[0]:
        warnings.append(
            "onnxruntime's dynamic quantization runs Conv as ConvInteger, which is usually slower than fp32 on CPU; "
            "static quantizes convolutions into its fast int8 kernels"
        )
    if q.preprocess_error:
        details["preprocess_error"] = q.preprocess_error
        warnings.append(
            f"onnxruntime's quant_pre_process failed ({q.preprocess_error}); the graph was quantized as exported"
        )
    return dst, details, _coverage(q.coverage), warnings


def _rule_nodes(path: Path, plan: LayerPlan) -> tuple[list[str], dict[str, Any]]:
    """The exported graph's nodes the rules keep fp32, and node -> setting for those they quantize differently."""
    if not plan.settings:
        return [], {}
    import onnx

    from farm.runtimes.layer_nodes import rule_nodes

    return rule_nodes(onnx.load(str(path), load_external_data=False), plan.rules, plan.layers)


def _quantize(cfg: Any, ctx: Any, src: Path, dst: Path, exclude: list[str], overrides: dict[str, Any]) -> Any:
    from farm.runtimes.ort_quantize import quantize_dynamic_onnx, quantize_static_onnx

    per_channel = cfg.granularity == "per_channel"
    if cfg.method == "dynamic":
        return quantize_dynamic_onnx(src, dst, per_channel=per_channel, nodes_to_exclude=exclude)
    # a granularity equal to the method's needs no override (layer_plan refused what onnxruntime cannot do)
    granularity = {node: s.granularity for node, s in overrides.items() if s.granularity not in (None, cfg.granularity)}
    return quantize_static_onnx(
        src,
        dst,
        calibration_batches(ctx),
        observer=cfg.observer,
        percentile=cfg.percentile,
        per_channel=per_channel,
        symmetric_activations=cfg.activation == "symmetric",
        reduce_range=bool(cfg.reduce_range),
        nodes_to_exclude=exclude,
        granularity_overrides=granularity,
        stop=ctx.should_stop,
    )


def _coverage(cov: Any) -> dict[str, Any]:
    """onnxruntime coverage in the results' terms (MACs are not weighted: None)."""
    return {
        "params": cov.params_quantized_fraction,
        "macs": None,
        "layers": cov.quantized_nodes,
        "layers_total": cov.quantizable_nodes,
    }


def _coverage_warnings(method: str, cov: Any, skipped: int = 0) -> list[str]:
    if cov.params_quantized_fraction >= LOW_COVERAGE:
        return []
    ruled = f"; per-layer rules keep {skipped} layer(s) fp32" if skipped else ""
    left = [f"{op} ({total - done} of {total})" for op, (done, total) in cov.by_op.items() if done < total]
    return [
        f"low coverage: onnxruntime {method} stored {cov.params_quantized_fraction:.1%} of the weights as integers "
        f"({cov.quantized_nodes} of {cov.quantizable_nodes} compute nodes quantized"
        + (f"; left fp32: {', '.join(left)}" if left else "")
        + ruled
        + ")"
    ]


def _to_fp16(src: Path, dst: Path, keep_fp32: list[str] | None = None) -> None:
    """A float16 copy of the graph whose inputs and outputs stay float32 (the feeds and metrics need no change);
    the nodes in ``keep_fp32`` (layers per-layer rules skip) stay float32, with casts around them."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        half = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, node_block_list=keep_fp32 or None)
    except Exception as e:
        raise QuantizationError(f"onnxruntime fp16 conversion failed: {type(e).__name__}: {str(e)[:240]}") from e
    onnx.save(half, str(dst))


def _session(path: Path, threads: int | None, provider: str, device: str) -> Any:
    from farm.runtimes.ort import OrtModel

    session = OrtModel.load(path, threads=threads, provider=provider)
    session.device = "cuda" if provider in CUDA_PROVIDERS and device.startswith("cuda") else "cpu"
    return session


def _on_cpu(model: Any) -> Any:
    """``model`` itself when it lives on the CPU, else a CPU copy (the caller's model stays where it is)."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).cpu()


@contextlib.contextmanager
def _timed(name: str, timings: dict[str, float]) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - started
