"""qat on onnxruntime: fine-tune with fake quantization in torch exactly as the torch method does
(:func:`farm.quant.qat.train`, or a checkpoint fine-tuned on another worker), then export the fine-tuned model.

The export is a QDQ graph, the form onnxruntime's own static quantizer writes and runs with int8 kernels:

- each fused Conv+BatchNorm QAT module is replaced by a plain convolution whose weight and bias have the batch
  norm folded in (``w * gamma / std``, ``(b - mean) * gamma / std + beta``) and keep the module's weight fake
  quantizer: exactly what the fused module computes once its statistics are frozen, without the division and the
  BatchNormalization node that would stand between the Conv and its output's QuantizeLinear;
- every FakeQuantize becomes a QuantizeLinear / DequantizeLinear pair (torch's exporter; per-channel weights need
  opset 13, the exporter's default is above it);
- each weight's QuantizeLinear, whose inputs are all constants, is folded into an int8 initializer read by its
  DequantizeLinear: the file stores integer weights, and coverage counts them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from farm.errors import QuantizationError
from farm.runtimes.ort_coverage import OrtCoverage, onnx_coverage


@dataclass(frozen=True)
class QatExport:
    """What :func:`export_qat` wrote: the recipe's details (folded batch norms and weight quantizers) and the
    graph's coverage."""

    coverage: OrtCoverage
    details: dict[str, Any] = field(default_factory=dict)


def export_qat(model: nn.Module, cfg: Any, ctx: Any, dst: Path, timings: dict[str, float]) -> QatExport:
    """Fine-tune ``model`` for ``cfg`` (or rebuild ``ctx.checkpoint``) and export it to ``dst`` as a QDQ graph.

    Raises:
        QuantizationError: fine-tuning failed, the checkpoint was trained for another config, or the exporter
            cannot write the fake-quantized model (one line).
    """
    from farm.quant.isolation import compute_step
    from farm.runtimes.onnx_export import export_onnx

    prepared = fine_tuned(model, cfg, ctx, timings)
    started = time.perf_counter()
    with compute_step(ctx.should_stop):
        folded_bn = fold_batch_norms(prepared)
        try:
            export_onnx(prepared, ctx.example_input, dst, output=ctx.output)
        except QuantizationError as e:
            raise QuantizationError(f"qat on onnxruntime: the fine-tuned model cannot be exported: {e}") from e
        folded_weights, dropped_clips = fold_weight_quantizers(dst)
    timings["export_qat"] = time.perf_counter() - started
    details = {
        "mode": "qat_qdq",
        "folded_batch_norms": folded_bn,
        "int8_weights": folded_weights,
        "dropped_reduce_range_clips": dropped_clips,
    }
    return QatExport(coverage=onnx_coverage(dst), details=details)


def fine_tuned(model: nn.Module, cfg: Any, ctx: Any, timings: dict[str, float]) -> Any:
    """The prepared (fake-quantized) model after fine-tuning here, or rebuilt from ``ctx.checkpoint``."""
    from farm.quant import qat

    if ctx.checkpoint is None:
        return qat.train(model, cfg, ctx, timings)
    trained_for = ctx.checkpoint.get("method")
    if trained_for is not None and trained_for != cfg.to_dict():
        raise QuantizationError(
            f"qat: the checkpoint was fine-tuned for another config ({trained_for}), not this job's "
            f"({cfg.to_dict()}); its fake-quantizer ranges would not fit"
        )
    timings.update({k: float(v) for k, v in ctx.checkpoint.get("timings", {}).items()})
    return qat.rebuild(model, cfg, ctx, ctx.checkpoint["state"])


class FoldedConv(nn.Module):
    """A fused Conv+BatchNorm(+ReLU) QAT module with its batch norm folded into the weight and bias."""

    def __init__(self, fused: Any, relu: bool) -> None:
        super().__init__()
        bn = fused.bn
        with torch.no_grad():
            factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            shape = [-1] + [1] * (fused.weight.dim() - 1)
            bias = fused.bias if fused.bias is not None else torch.zeros_like(bn.running_mean)
            self.weight = nn.Parameter((fused.weight * factor.reshape(shape)).detach().clone())
            self.bias = nn.Parameter(((bias - bn.running_mean) * factor + bn.bias).detach().clone())
        self.weight_fake_quant = fused.weight_fake_quant
        self.conv = fused._conv_forward  # a bound method: not registered, so the fused module's tensors are not
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x, self.weight_fake_quant(self.weight), self.bias)
        return torch.relu(y) if self.relu else y


def fold_batch_norms(prepared: nn.Module) -> int:
    """Replace every fused Conv+BatchNorm QAT module of ``prepared`` by a :class:`FoldedConv`; how many."""
    from torch.ao.nn.intrinsic import qat as nniqat

    fused_types = (nniqat.ConvBn1d, nniqat.ConvBn2d, nniqat.ConvBn3d)
    relu_types = (nniqat.ConvBnReLU1d, nniqat.ConvBnReLU2d, nniqat.ConvBnReLU3d)
    targets = [(name, m) for name, m in prepared.named_modules() if name and isinstance(m, fused_types)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = prepared.get_submodule(parent_name) if parent_name else prepared
        setattr(parent, child, FoldedConv(module, relu=isinstance(module, relu_types)))
    return len(targets)


def fold_weight_quantizers(path: Path) -> tuple[int, int]:
    """Fold each QuantizeLinear whose inputs are all constants (a weight, its scales and zero points) into an
    integer initializer, and drop the Clip torch's exporter puts between a QuantizeLinear and its
    DequantizeLinear for 7-bit (reduce_range) activations, in place.

    Quantization follows the ONNX operator: ``clip(round_half_even(x / scale) + zero_point)`` to the zero point's
    type, along ``axis`` for per-channel scales. The Clip (to 127) would keep onnxruntime from fusing the pair
    into its int8 kernels, which take the full 8-bit range; without it an activation above the fine-tuned range
    saturates at 255 levels instead of 127.

    Returns:
        (weights folded, clips dropped).
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    graph = proto.graph
    constants = _constants(graph)
    kept, folded = [], 0
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) == 3 and all(i in constants for i in node.input):
            weight, scale, zero_point = (constants[i] for i in node.input)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            graph.initializer.append(
                numpy_helper.from_array(_quantize(weight, scale, zero_point, axis), node.output[0])
            )
            folded += 1
        else:
            kept.append(node)
    dropped = _drop_qdq_clips(kept)
    kept = _quantize_biases(kept, graph, constants)
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unused(graph)
    onnx.save(proto, str(path))
    return folded, dropped


def _quantize_biases(nodes: list[Any], graph: Any, constants: dict[str, Any]) -> list[Any]:
    """Store the float bias of each Conv / Gemm whose input and weight come from DequantizeLinear as int32 read by
    its own DequantizeLinear (scale: input scale x weight scale, zero point 0), as onnxruntime's quantizer does:
    its int8 Conv kernel takes an int32 bias. Returns the nodes, the new ones before their readers."""
    import numpy as np
    from onnx import helper, numpy_helper

    producer = {out: node for node in nodes for out in node.output}
    floats = {t.name for t in graph.initializer if t.data_type == 1}  # FLOAT
    out: list[Any] = []
    for node in nodes:
        x, w = (producer.get(i) for i in node.input[:2]) if len(node.input) == 3 else (None, None)
        if (
            node.op_type in ("Conv", "Gemm")
            and x is not None
            and w is not None
            and x.op_type == w.op_type == "DequantizeLinear"
            and node.input[2] in floats
            and x.input[1] in constants
            and w.input[1] in constants
        ):
            bias = node.input[2]
            scale = (constants[x.input[1]].astype(np.float64) * constants[w.input[1]].astype(np.float64)).astype(
                np.float32
            )
            q = np.rint(constants[bias].astype(np.float64) / scale).clip(-(2**31), 2**31 - 1).astype(np.int32)
            names = (f"{bias}_quantized", f"{bias}_quantized_scale", f"{bias}_quantized_zero_point")
            zero = np.zeros(scale.shape, dtype=np.int32)
            graph.initializer.extend(
                numpy_helper.from_array(a, n) for a, n in zip((q, scale, zero), names, strict=True)
            )
            dq = helper.make_node("DequantizeLinear", list(names), [f"{bias}_dequantized"])
            if scale.ndim == 1 and scale.size > 1:
                dq.attribute.append(helper.make_attribute("axis", 0))
            out.append(dq)
            node.input[2] = f"{bias}_dequantized"
        out.append(node)
    return out


def _drop_qdq_clips(nodes: list[Any]) -> int:
    """Remove, from ``nodes``, each Clip that reads a QuantizeLinear and feeds only DequantizeLinear nodes (those
    are rewired to the QuantizeLinear); returns how many."""
    producer = {out: node for node in nodes for out in node.output}
    readers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    dropped = []
    for node in nodes:
        source = producer.get(node.input[0]) if node.op_type == "Clip" and node.input else None
        fed = readers.get(node.output[0], []) if node.output else []
        if source is None or source.op_type != "QuantizeLinear" or not fed:
            continue
        if any(r.op_type != "DequantizeLinear" for r in fed):
            continue
        for reader in fed:
            reader.input[0] = node.input[0]
        dropped.append(node)
    for node in dropped:
        nodes.remove(node)
    return len(dropped)


def _quantize(weight: Any, scale: Any, zero_point: Any, axis: int) -> Any:
    import numpy as np

    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * weight.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    info = np.iinfo(zero_point.dtype)
    q = np.rint(weight.astype(np.float64) / scale.astype(np.float64)) + zero_point.astype(np.int64)
    return np.clip(q, info.min, info.max).astype(zero_point.dtype)


def _constants(graph: Any) -> dict[str, Any]:
    """Every constant of ``graph`` as a numpy array: its initializers, its Constant nodes' values, and Identity
    nodes of those (torch's exporter shares equal initializers through them)."""
    from onnx import numpy_helper

    found = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                found[node.output[0]] = numpy_helper.to_array(value.t)
        elif node.op_type == "Identity" and node.input[0] in found:
            found[node.output[0]] = found[node.input[0]]
    return found


def _drop_unused(graph: Any) -> None:
    """Remove initializers and Constant nodes nothing reads any more."""
    used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    nodes = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
