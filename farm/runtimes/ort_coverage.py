"""How much of an ONNX graph onnxruntime's quantizer quantized: nodes and parameters.

Read from the quantized file alone (the fp32 graph may have been rewritten by pre-processing, so node counts are
taken on one graph). A compute node (Conv, ConvTranspose, MatMul, Gemm, Attention, LSTM, GRU, and a Gather from a
weight table: an embedding) is quantized when it was replaced by an integer op (ConvInteger, QLinearConv,
MatMulInteger, ...: QOperator and dynamic graphs) or when an input comes from a DequantizeLinear (QDQ graphs).
A MatMul of two activations (attention scores) counts too: static QDQ quantizes it, dynamic quantization leaves
it fp32, and the fraction says so. A node with a weight counts as quantized only when its weight is: a node left
fp32 (``nodes_to_exclude``) may read an activation quantized for a neighbour that shares it. The parameter share
is the elements of integer weight initializers over those of all weight initializers; scales and zero points
(the Q/DQ nodes' parameters and ORT's ``*_scale`` / ``*_zero_point`` tensors) and int64 shape constants are left
out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Float compute ops the quantizer can rewrite.
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "LSTM", "GRU", "Gather")
#: Integer ops that stand for a quantized weight-bearing op.
INTEGER_OPS = (
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "QAttention",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "DynamicQuantizeLSTM",
    "QGather",
)
_QDQ = ("QuantizeLinear", "DequantizeLinear")
# onnx TensorProto element types: FLOAT, FLOAT16, DOUBLE, BFLOAT16 / UINT8, INT8, INT16, UINT16, INT32, INT4, UINT4.
_FLOAT_TYPES = {1, 10, 11, 16}
_WEIGHT_INT_TYPES = {2, 3, 4, 5, 6, 21, 22}


@dataclass(frozen=True)
class OrtCoverage:
    """What onnxruntime quantized in one graph.

    Attributes:
        quantized_nodes, quantizable_nodes: compute nodes quantized, and all of them.
        node_fraction: the first over the second (0.0 when there are none).
        params_quantized_fraction: integer weight elements over all weight elements.
        by_op: per op type (the float op's name; integer ops under the op they replace): [quantized, total].
    """

    quantized_nodes: int
    quantizable_nodes: int
    node_fraction: float
    params_quantized_fraction: float
    by_op: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_REPLACES = {
    "ConvInteger": "Conv",
    "QLinearConv": "Conv",
    "MatMulInteger": "MatMul",
    "QLinearMatMul": "MatMul",
    "DynamicQuantizeMatMul": "MatMul",
    "MatMulIntegerToFloat": "MatMul",
    "QGemm": "Gemm",
    "QAttention": "Attention",
    "DynamicQuantizeLSTM": "LSTM",
    "QGather": "Gather",
}


def onnx_coverage(path: str | Path) -> OrtCoverage:
    """Nodes and parameters quantized in the ONNX file at ``path`` (see the module docstring for the rules)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    totals: Counter[str] = Counter()
    done: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type in INTEGER_OPS:
            op = _REPLACES[node.op_type]
            totals[op] += 1
            done[op] += 1
        elif node.op_type in QUANTIZABLE_OPS:
            if node.op_type == "Gather" and not _is_weight(node.input[0], inits, producer):
                continue  # indexing a computed tensor, not a weight table
            totals[node.op_type] += 1
            if _quantized(node, inits, producer):
                done[node.op_type] += 1
    quantizable, quantized = sum(totals.values()), sum(done.values())
    return OrtCoverage(
        quantized_nodes=quantized,
        quantizable_nodes=quantizable,
        node_fraction=quantized / quantizable if quantizable else 0.0,
        params_quantized_fraction=_params_fraction(graph),
        by_op={op: [done[op], totals[op]] for op in sorted(totals)},
    )


def _quantized(node: Any, inits: dict[str, Any], producer: dict[str, Any]) -> bool:
    """A node with a weight is quantized when its weight is (read through a DequantizeLinear, or stored as
    integers): a node kept fp32 by ``nodes_to_exclude`` may still read an activation quantized for a neighbour. A
    MatMul of two activations is quantized when an input comes from a DequantizeLinear."""
    if _int_weight(node, inits):
        return True
    at = 0 if node.op_type == "Gather" else 1
    weight = node.input[at] if len(node.input) > at else ""
    if _is_weight(weight, inits, producer):
        source = producer.get(weight)
        return source is not None and source.op_type == "DequantizeLinear"
    return any((p := producer.get(i)) is not None and p.op_type == "DequantizeLinear" for i in node.input)


def _is_weight(name: str, inits: dict[str, Any], producer: dict[str, Any]) -> bool:
    """``name`` is a weight: an initializer of float or small integer type, or the DequantizeLinear of one."""
    if name in inits:
        return inits[name].data_type in _FLOAT_TYPES | _WEIGHT_INT_TYPES
    node = producer.get(name)
    return node is not None and node.op_type == "DequantizeLinear" and node.input[0] in inits


def _int_weight(node: Any, inits: dict[str, Any]) -> bool:
    """A dynamic graph's Gather reads an int8 table directly (its output is then dequantized)."""
    return any(i in inits and inits[i].data_type in _WEIGHT_INT_TYPES for i in node.input[:1])


def _params_fraction(graph: Any) -> float:
    """Integer weight elements over all weight elements (scales, zero points and shape constants left out)."""
    qparams = {i for node in graph.node if node.op_type in _QDQ for i in node.input[1:]}
    quantized = total = 0
    for t in graph.initializer:
        if t.name in qparams or t.name.endswith(("_scale", "_zero_point")):
            continue
        n = 1
        for d in t.dims:
            n *= d
        if t.data_type in _WEIGHT_INT_TYPES:
            quantized += n
            total += n
        elif t.data_type in _FLOAT_TYPES:
            total += n
    return quantized / total if total else 0.0
