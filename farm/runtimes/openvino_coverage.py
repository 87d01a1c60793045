"""How much of an OpenVINO model NNCF quantized: compute nodes and their weights, read from the model's graph.

A compute node (MatMul, Convolution and its group / transposed forms, and a Gather from a weight table: an
embedding) is quantized when an input comes from a FakeQuantize (static: NNCF's quantizers, which the CPU plugin
runs as int8 kernels), possibly through layout ops (Convert, Reshape, Transpose, Squeeze, Unsqueeze), or when its
weight is an integer constant behind a decompression chain (Convert, Subtract, Multiply: NNCF's weight
compression, and the form in which NNCF may store a static model's quantized weights); a node with a constant weight
counts only when that weight is quantized (one in NNCF's ignored scope may read a quantized activation). A MatMul of
two activations (attention scores) counts too; it is quantized only when FakeQuantize feeds it. The parameter share
is the weight elements of those nodes stored as integers or behind a FakeQuantize, over the weight elements of all
of them (biases, normalisation and the quantizers' own ranges are left out).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

#: Weight-bearing compute ops (Linear layers convert to MatMul), and Gather for embedding tables.
COMPUTE_OPS = ("MatMul", "Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData")
_LAYOUT_OPS = ("Convert", "Reshape", "Transpose", "Squeeze", "Unsqueeze")
_DECOMPRESS_OPS = (*_LAYOUT_OPS, "Subtract", "Multiply")
_MAX_STEPS = 8


def ov_coverage(ov_model: Any) -> dict[str, Any]:
    """Quantized compute nodes and weight elements of ``ov_model`` (an ``openvino.Model``).

    Returns:
        ``{"params": fraction, "macs": None, "layers": quantized nodes, "layers_total": nodes, "by_op": {op:
        [quantized, total]}}``: the shape :class:`farm.runtimes.build.RuntimeBuild` keeps.
    """
    totals: Counter[str] = Counter()
    done: Counter[str] = Counter()
    weights_total = weights_quantized = 0
    for node in ov_model.get_ordered_ops():
        op = node.get_type_name()
        if op in COMPUTE_OPS:
            weight_at = 1
        elif op == "Gather" and _weight_table(node):
            weight_at = 0
        else:
            continue
        totals[op] += 1
        const, behind_fq = _source(node.input_value(weight_at), _DECOMPRESS_OPS)
        integer = const is not None and not const.get_output_element_type(0).is_real()
        if const is not None:  # a node NNCF ignored may still read an activation quantized for a neighbour
            quantized = integer or behind_fq
        else:
            quantized = any(_fed_by_fake_quantize(node.input_value(i)) for i in range(node.get_input_size()))
        if quantized:
            done[op] += 1
        if const is not None:
            n = _elements(const)
            weights_total += n
            weights_quantized += n if (integer or behind_fq) else 0
    layers, layers_total = sum(done.values()), sum(totals.values())
    return {
        "params": weights_quantized / weights_total if weights_total else 0.0,
        "macs": None,
        "layers": layers,
        "layers_total": layers_total,
        "by_op": {op: [done[op], totals[op]] for op in sorted(totals)},
    }


def _source(output: Any, through: tuple[str, ...]) -> tuple[Any, bool]:
    """(the Constant ``output`` comes from through ``through`` ops and FakeQuantizes, or None; whether a
    FakeQuantize was on the way). Each op is followed by its first input (the data; the others are ranges,
    scales, zero points and shapes)."""
    node, behind_fq = output.get_node(), False
    for _ in range(_MAX_STEPS):
        op = node.get_type_name()
        if op == "Constant":
            return node, behind_fq
        if op == "FakeQuantize":
            behind_fq = True
        elif op not in through:
            return None, behind_fq
        node = node.input_value(0).get_node()
    return None, behind_fq


def _fed_by_fake_quantize(output: Any) -> bool:
    """A FakeQuantize produces ``output``, possibly through layout ops only."""
    node = output.get_node()
    for _ in range(_MAX_STEPS):
        op = node.get_type_name()
        if op == "FakeQuantize":
            return True
        if op not in _LAYOUT_OPS:
            return False
        node = node.input_value(0).get_node()
    return False


def _weight_table(node: Any) -> bool:
    """A Gather reading rows of a 2-d weight constant (an embedding), not indexing a shape or a computed tensor."""
    const, _ = _source(node.input_value(0), _DECOMPRESS_OPS)
    if const is None or len(const.get_output_shape(0)) != 2:
        return False
    kind = const.get_output_element_type(0)
    return bool(kind.is_real() or kind.get_bitwidth() <= 8)


def _elements(const: Any) -> int:
    n = 1
    for d in const.get_output_shape(0):
        n *= int(d)
    return n
