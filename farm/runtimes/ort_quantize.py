"""Quantize an exported fp32 .onnx file with onnxruntime's own tools: dynamic (int8 weights, activations
quantized on the fly) or static (QDQ, calibrated on given batches).

onnxruntime recommends pre-processing a float model before quantizing it (``quant_pre_process``: symbolic shape
inference, its graph optimizer, ONNX shape inference), so that Conv+BatchNorm are fused and shapes are known;
both functions run it first and record whether it ran. Where it fails (symbolic shape inference cannot follow
every graph) the model is quantized as exported and the reason is kept beside the figures.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from farm.errors import QuantizationError
from farm.quant.inputs import Batch
from farm.runtimes.onnx_export import OUTPUTS_KEY
from farm.runtimes.ort import require_ort
from farm.runtimes.ort_calibration import calibration_reader, calibration_recipe, onnx_inputs
from farm.runtimes.ort_coverage import OrtCoverage, onnx_coverage


@dataclass(frozen=True)
class OrtQuantInfo:
    """What :func:`quantize_dynamic_onnx` / :func:`quantize_static_onnx` wrote.

    Attributes:
        path: the quantized .onnx file.
        mode: "dynamic" or "static".
        per_channel: weights quantized per output channel.
        calibrate_method: onnxruntime's CalibrationMethod name (static only).
        extra_options: what was passed to the quantizer as ``extra_options``.
        calibration_batches: batches fed to calibration (static only).
        preprocessed: ``quant_pre_process`` ran; ``preprocess_error`` says why not when it failed.
        coverage: nodes and parameters quantized.
        size_bytes, fp32_size_bytes: the quantized and the fp32 file's bytes.
        timings_s: preprocess, quantize (static: calibration included).
        ort_version: the onnxruntime that quantized it.
    """

    path: str
    mode: str
    per_channel: bool
    calibrate_method: str | None
    extra_options: dict[str, Any]
    calibration_batches: int
    preprocessed: bool
    preprocess_error: str | None
    coverage: OrtCoverage
    size_bytes: int
    fp32_size_bytes: int
    timings_s: dict[str, float] = field(default_factory=dict)
    ort_version: str = ""

    @property
    def size_ratio(self) -> float:
        """Quantized over fp32 file size."""
        return self.size_bytes / self.fp32_size_bytes if self.fp32_size_bytes else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "size_ratio": self.size_ratio}


def preprocess(src: str | Path, dst: str | Path) -> str | None:
    """Run onnxruntime's ``quant_pre_process`` from ``src`` to ``dst``; None when it ran, else why it did not."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
    except Exception as e:
        return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return None


def quantize_dynamic_onnx(
    src: str | Path,
    dst: str | Path,
    *,
    per_channel: bool = False,
    reduce_range: bool = False,
    run_preprocess: bool = True,
    nodes_to_exclude: Sequence[str] = (),
) -> OrtQuantInfo:
    """Dynamic int8 (QInt8 weights) of the fp32 ONNX file ``src`` into ``dst``.

    onnxruntime's dynamic quantizer rewrites Conv, MatMul (Gemm too, as MatMulInteger), Gather (embeddings) and
    Attention; biases stay fp32. ``nodes_to_exclude`` (per-layer rules' skipped layers) stay fp32.

    Raises:
        QuantizationError: onnxruntime is missing or its quantizer fails (one line).
    """
    ort = require_ort()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def run(model: str) -> None:
        quantize_dynamic(
            model,
            str(dst),
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded or None,
        )

    # the dynamic quantizer splits each Gemm into <name>_MatMul + <name>_Add before it reads nodes_to_exclude
    excluded = [*nodes_to_exclude, *(f"{name}_MatMul" for name in nodes_to_exclude)]
    version = ort.__version__
    return _quantize(
        src, dst, "dynamic", run, run_preprocess, per_channel=per_channel, ort_version=version, nodes=nodes_to_exclude
    )


def quantize_static_onnx(
    src: str | Path,
    dst: str | Path,
    calibration: Iterable[Batch],
    *,
    observer: str = "minmax",
    percentile: float = 99.99,
    averaging_constant: float = 0.01,
    per_channel: bool = True,
    symmetric_activations: bool = False,
    symmetric_weights: bool = True,
    reduce_range: bool = False,
    run_preprocess: bool = True,
    nodes_to_exclude: Sequence[str] = (),
    granularity_overrides: Mapping[str, str] | None = None,
    stop: Callable[[], bool] | None = None,
) -> OrtQuantInfo:
    """Static int8 in QDQ format of the fp32 ONNX file ``src`` into ``dst``, calibrated on ``calibration``.

    Activations are QUInt8 (QInt8 when symmetric), weights QInt8. ``calibration`` is iterated once per
    calibration pass: give a list (or another re-iterable) of batches, the same deterministic samples the torch
    methods calibrate on. See :mod:`farm.runtimes.ort_calibration` for the observer mapping.

    Raises:
        QuantizationError: an observer onnxruntime cannot do, no calibration batches, batches that do not match
            the graph, or the quantizer failing (one line each).
    """
    ort = require_ort()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method, extra = calibration_recipe(
        observer,
        percentile=percentile,
        averaging_constant=averaging_constant,
        symmetric_activations=symmetric_activations,
        symmetric_weights=symmetric_weights,
    )
    fed: list[int] = []
    used: dict[str, Any] = dict(extra)

    def run(model: str) -> None:
        options = dict(extra)
        if granularity_overrides:
            options["TensorQuantOverrides"] = tensor_overrides(model, granularity_overrides)
            used["TensorQuantOverrides"] = {k: [dict(d) for d in v] for k, v in options["TensorQuantOverrides"].items()}
        reader = calibration_reader(calibration, onnx_inputs(model), stop)
        try:
            quantize_static(
                model,
                str(dst),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, method),
                nodes_to_exclude=list(nodes_to_exclude) or None,
                extra_options=options,
            )
        except Exception as e:
            if reader.count == 0:
                raise QuantizationError("static quantization needs calibration batches; none were given") from e
            raise
        fed.append(reader.count)

    nodes = [*nodes_to_exclude, *(granularity_overrides or {})]
    info = _quantize(
        src, dst, "static", run, run_preprocess, per_channel=per_channel, ort_version=ort.__version__, nodes=nodes
    )
    return _replace(info, calibrate_method=method, extra_options=used, calibration_batches=fed[-1] if fed else 0)


def tensor_overrides(model: str | Path, granularity: Mapping[str, str]) -> dict[str, list[dict[str, Any]]]:
    """onnxruntime's ``TensorQuantOverrides`` for the weights of the nodes in ``granularity``: per_channel is one
    entry with the weight's output-channel axis, per_tensor one entry without an axis (which the QDQ quantizer reads
    as "this initializer per tensor", whatever ``per_channel`` says)."""
    import onnx

    from farm.runtimes.layer_nodes import weight_axis

    graph = onnx.load(str(model), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    out: dict[str, list[dict[str, Any]]] = {}
    for node in graph.node:
        kind = granularity.get(node.name)
        if kind is None or len(node.input) < 2 or node.input[1] not in inits:
            continue
        out[node.input[1]] = [{"axis": weight_axis(node)}] if kind == "per_channel" else [{}]
    return out


def _quantize(
    src: str | Path,
    dst: str | Path,
    mode: str,
    run: Any,
    run_preprocess: bool,
    *,
    per_channel: bool,
    ort_version: str,
    nodes: Sequence[str] = (),
) -> OrtQuantInfo:
    """Pre-process (when asked; a failure falls back to ``src``), check that the ``nodes`` per-layer rules name
    are in the graph the quantizer reads, quantize with ``run``, keep the output structure metadata, and measure
    coverage and size."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise QuantizationError(f"no ONNX file at {src}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="farm-ort-") as tmp:
        model, error = str(src), None
        if run_preprocess:
            began = time.perf_counter()
            pre = Path(tmp) / "pre.onnx"
            error = preprocess(src, pre)
            timings["preprocess"] = time.perf_counter() - began
            if error is None:
                model = str(pre)
        _check_nodes(model, nodes)
        began = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()), _quiet_quantizer_log():  # calibrator progress, chatter
                run(model)
        except QuantizationError:
            raise
        except Exception as e:
            text = " ".join(str(e).split())[:300]
            raise QuantizationError(f"onnxruntime {mode} quantization failed: {type(e).__name__}: {text}") from e
        timings["quantize"] = time.perf_counter() - began
    _copy_metadata(src, dst)
    return OrtQuantInfo(
        path=str(dst),
        mode=mode,
        per_channel=per_channel,
        calibrate_method=None,
        extra_options={},
        calibration_batches=0,
        preprocessed=run_preprocess and error is None,
        preprocess_error=error,
        coverage=onnx_coverage(dst),
        size_bytes=dst.stat().st_size,
        fp32_size_bytes=src.stat().st_size,
        timings_s=timings,
        ort_version=ort_version,
    )


def _check_nodes(model: str, nodes: Sequence[str]) -> None:
    """Refuse names of nodes the graph lacks: onnxruntime would ignore them and quantize the layer silently."""
    if not nodes:
        return
    import onnx

    have = {n.name for n in onnx.load(model, load_external_data=False).graph.node}
    lost = [n for n in nodes if n not in have]
    if lost:
        raise QuantizationError(
            f"per-layer rules name node(s) {', '.join(lost[:4])} that pre-processing removed or renamed"
        )


class _QuantizerLog(logging.Filter):
    """Drops the warnings onnxruntime's quantizer logs on the root logger (``Axis 1 is out-of-range for weight
    ...`` for every LayerNorm weight of a per-channel run): they would reach a job's stderr as noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "/onnxruntime/" not in record.pathname.replace("\\", "/")


@contextlib.contextmanager
def _quiet_quantizer_log() -> Iterator[None]:
    root, quiet = logging.getLogger(), _QuantizerLog()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _copy_metadata(src: Path, dst: Path) -> None:
    """Put the exporter's output-structure key back where pre-processing or the quantizer dropped it."""
    import onnx

    props = onnx.load(str(src), load_external_data=False).metadata_props
    kind = next((p.value for p in props if p.key == OUTPUTS_KEY), None)
    if kind is None:
        return
    proto = onnx.load(str(dst))
    if any(p.key == OUTPUTS_KEY for p in proto.metadata_props):
        return
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, OUTPUTS_KEY: kind})
    onnx.save(proto, str(dst))


def _replace(info: OrtQuantInfo, **changes: Any) -> OrtQuantInfo:
    import dataclasses

    return dataclasses.replace(info, **changes)
