"""The ONNX graph a TensorRT engine is built from, and the build settings: plain Python, testable without a GPU.

Which precision path the installed TensorRT takes:

- TensorRT 10 (``BuilderFlag.FP16`` and ``INT8`` exist; weakly typed networks): fp32 = the exported graph with TF32
  off; fp16 = the same graph with ``BuilderFlag.FP16``; static int8 = an explicitly quantized (Q/DQ) graph with
  ``BuilderFlag.INT8`` (which a Q/DQ network needs on 10.x, and which no calibrator then overrides).
- TensorRT 11 (those flags and ``int8_calibrator`` removed: networks are strongly typed): the graph carries the
  precision itself: fp16 = the graph converted to float16 (inputs and outputs kept fp32: ``keep_io_types``), static
  int8 = the same Q/DQ graph.

The int8 path is explicit quantization for every version: the implicit calibrators (``IInt8EntropyCalibrator2``)
are deprecated since TensorRT 10.1 and removed in 11. The Q/DQ graph comes from onnxruntime's ``quantize_static``
(:mod:`farm.runtimes.ort_quantize`), calibrated on the job's calibration batches, with what TensorRT requires:
int8 activations and weights, both symmetric (zero point 0).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from farm.errors import QuantizationError
from farm.quant.inputs import Batch
from farm.runtimes.onnx_export import batch_inputs


@dataclass(frozen=True)
class PrecisionPlan:
    """How one method is built on the installed TensorRT.

    Attributes:
        graph: the ONNX graph the engine is built from: "fp32" (as exported), "fp16" (converted) or "qdq".
        flags: ``trt.BuilderFlag`` members to set.
        tf32: leave TF32 on (off for fp32: an fp32 job's figures are fp32 figures).
        fp32_nodes: ONNX nodes per-layer rules keep fp32 (:func:`with_fp32_nodes`): left out of the Q/DQ graph,
            kept float32 by the fp16 converter, or their layers pinned to fp32 on a weakly typed network.
    """

    graph: str
    flags: tuple[str, ...]
    tf32: bool = False
    fp32_nodes: tuple[str, ...] = ()


def with_fp32_nodes(plan: PrecisionPlan, nodes: Sequence[str]) -> PrecisionPlan:
    """``plan`` keeping ``nodes`` in fp32: on a weakly typed fp16 build (the fp32 graph with ``BuilderFlag.FP16``)
    their layers are pinned, which the builder honours only with ``OBEY_PRECISION_CONSTRAINTS``."""
    if not nodes:
        return plan
    flags = plan.flags
    if plan.graph == "fp32" and "FP16" in flags and "OBEY_PRECISION_CONSTRAINTS" not in flags:
        flags = (*flags, "OBEY_PRECISION_CONSTRAINTS")
    return replace(plan, flags=flags, fp32_nodes=tuple(nodes))


def pin_fp32(network: Any, nodes: Sequence[str], float32: Any) -> list[str]:
    """Set the precision and output types of the layers the ONNX parser made of ``nodes`` to ``float32``
    (``trt.float32``). The parser names a layer after its node; a node it builds from several layers names the
    others with a suffix (``<node>_bias``), which is matched too, but not ``<node>_1``: another node's name.

    Returns:
        The names of the layers pinned.
    """
    wanted = set(nodes)
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not _made_of(layer.name, wanted):
            continue
        layer.precision = float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, float32)
        pinned.append(layer.name)
    return pinned


def _made_of(layer: str, nodes: set[str]) -> bool:
    if layer in nodes:
        return True
    head, sep, tail = layer.rpartition("_")
    while sep:
        if head in nodes and not tail.isdigit():
            return True
        head, sep, tail = head.rpartition("_")
    return False


def precision_plan(method: str, builder_flags: Sequence[str]) -> PrecisionPlan:
    """The plan for ``method`` on a TensorRT whose ``BuilderFlag`` has the members ``builder_flags``.

    Raises:
        QuantizationError: a method TensorRT does not run here.
    """
    weakly_typed = "FP16" in builder_flags  # TensorRT 10; 11 dropped the precision flags for strong typing
    if method == "fp32":
        return PrecisionPlan("fp32", ())
    if method == "fp16":
        return PrecisionPlan("fp32", ("FP16",)) if weakly_typed else PrecisionPlan("fp16", ())
    if method == "static":
        return PrecisionPlan("qdq", ("INT8",) if "INT8" in builder_flags else ())
    raise QuantizationError(f"runtime tensorrt cannot run method {method!r}; it runs: fp32, fp16, static")


def profile_shapes(example: Batch, batch_sizes: Sequence[int]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """The optimization profile: per input name (as :func:`farm.runtimes.onnx_export.export_onnx` names it),
    (min, opt, max) shapes. The batch axis spans 1 to the largest of ``batch_sizes`` (opt: the first, the batch the
    benchmark times); every other axis is fixed at the example's size.

    Raises:
        QuantizationError: no batch size, or one below 1.
    """
    if not batch_sizes or min(batch_sizes) < 1:
        raise QuantizationError(f"a TensorRT profile needs batch sizes of at least 1, not {list(batch_sizes)}")
    names, tensors, _ = batch_inputs(example)
    shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
    for name, t in zip(names, tensors, strict=True):
        rest = tuple(int(d) for d in t.shape[1:])
        shapes[name] = ((1, *rest), (batch_sizes[0], *rest), (max(batch_sizes), *rest))
    return shapes


def fp16_graph(src: str | Path, dst: str | Path, keep_fp32: Sequence[str] = ()) -> Path:
    """``src`` converted to float16 (onnxruntime's converter), inputs and outputs left fp32: the graph a strongly
    typed TensorRT runs in fp16. The nodes in ``keep_fp32`` stay float32 (casts around them). Keeps the exporter's
    metadata.

    Raises:
        QuantizationError: onnx / onnxruntime missing or the converter failing (one line).
    """
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as e:
        hint = "pip install 'quantfarm[tensorrt]'"
        raise QuantizationError(f"fp16 for TensorRT needs onnx and onnxruntime ({e}): {hint}") from e
    proto = onnx.load(str(src))
    try:
        half = convert_float_to_float16(proto, keep_io_types=True, node_block_list=list(keep_fp32) or None)
    except Exception as e:
        text = " ".join(str(e).split())[:200]
        raise QuantizationError(f"float16 conversion failed: {type(e).__name__}: {text}") from e
    onnx.helper.set_model_props(half, _metadata(src))
    onnx.save(half, str(dst))
    return Path(dst)


def qdq_graph(
    src: str | Path,
    dst: str | Path,
    cfg: Any,
    calibration: list[Batch],
    *,
    exclude: Sequence[str] = (),
    granularity: Mapping[str, str] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The explicitly quantized (Q/DQ) graph of ``src`` for TensorRT, and the recipe that made it: onnxruntime's
    ``quantize_static`` after its pre-processing, int8 activations and weights both symmetric (zero point 0), our
    observer mapped as for ONNX Runtime (:mod:`farm.runtimes.ort_calibration`), biases left float (TensorRT has no
    int32 DequantizeLinear: it folds float biases into its int8 kernels). The ``exclude`` nodes get no Q/DQ, so
    TensorRT runs them in float; ``granularity`` (node -> per_tensor / per_channel) sets one weight's granularity.

    Raises:
        QuantizationError: bits other than 8, an observer onnxruntime cannot do, no batches, or the quantizer
            failing (one line).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from farm.runtimes.ort_calibration import calibration_reader, calibration_recipe, onnx_inputs
    from farm.runtimes.ort_coverage import onnx_coverage
    from farm.runtimes.ort_quantize import preprocess, tensor_overrides

    if cfg.bits != 8:
        raise QuantizationError(f"TensorRT runs int8 kernels only; bits must be 8, not {cfg.bits}")
    if not calibration:
        raise QuantizationError("static quantization needs calibration batches; none were given")
    method, extra = calibration_recipe(
        cfg.observer, percentile=cfg.percentile, symmetric_activations=True, symmetric_weights=True
    )
    extra["QuantizeBias"] = False
    per_channel = cfg.granularity == "per_channel"
    with tempfile.TemporaryDirectory(prefix="farm-trt-") as tmp:
        error = preprocess(src, Path(tmp) / "pre.onnx")
        model = str(src) if error else str(Path(tmp) / "pre.onnx")
        reader = calibration_reader(calibration, onnx_inputs(model))
        if granularity:
            extra["TensorQuantOverrides"] = tensor_overrides(model, granularity)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their progress
                quantize_static(
                    model,
                    str(dst),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method),
                    nodes_to_exclude=list(exclude) or None,
                    extra_options=dict(extra),
                )
        except Exception as e:
            text = " ".join(str(e).split())[:300]
            raise QuantizationError(f"Q/DQ quantization for TensorRT failed: {type(e).__name__}: {text}") from e
    proto = onnx.load(str(dst))
    onnx.helper.set_model_props(proto, _metadata(src) | {p.key: p.value for p in proto.metadata_props})
    onnx.save(proto, str(dst))
    coverage = onnx_coverage(dst)
    recipe = {
        "quantizer": "onnxruntime.quantize_static (QDQ, symmetric int8, float biases)",
        "calibrate_method": method,
        "calibration_batches": reader.count,
        "per_channel": per_channel,
        "preprocessed": error is None,
        **({"nodes_to_exclude": list(exclude)} if exclude else {}),
        "coverage": {
            "params": coverage.params_quantized_fraction,
            "macs": None,
            "layers": coverage.quantized_nodes,
            "layers_total": coverage.quantizable_nodes,
            "by_op": coverage.by_op,
        },
    }
    return Path(dst), recipe


def _metadata(path: str | Path) -> dict[str, str]:
    """The exporter's metadata (the output structure) of the ONNX file at ``path``."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def activation_note(cfg: Any) -> list[str]:
    """What the user must know when the config asked for affine activations, which TensorRT cannot run."""
    if getattr(cfg, "activation", "symmetric") != "symmetric":
        return ["TensorRT runs symmetric int8 activations only: activation affine was built symmetric"]
    return []
