"""Map torch module names (what a per-layer rule names) onto the nodes of the ONNX graph exported from that model.

:func:`farm.runtimes.onnx_export.export_onnx` uses the TorchScript exporter, which names each node after the
modules whose ``forward`` it ran in: ``/model/layer1/layer1.0/conv1/Conv``. The first segment is the export wrapper's
attribute (``model``); each later segment is a module's qualified name cut after its last non-numeric atom
(``layer1.0`` for ``layer1.0``, ``conv1`` for ``layer1.0.conv1``: torch's ``_unqualified_variable_name``); a
container never called (a ``ModuleList`` iterated in Python) has no segment of its own (``/model/layers.0/...``),
and a module called twice gets ``_1`` on its second scope (``relu_1``). :func:`scope_module` rebuilds the qualified
name from those segments against the model's known module names, so none of these cases is guessed.

Where a node carries no scope (a graph exported from a TorchScript archive), the weight initializer's name, which is
the parameter's path (``model.classifier.weight``), names the module instead. Node names survive onnxruntime's
``quant_pre_process`` (checked on farm:digits-cnn, torchvision resnet18 and farm:tiny-encoder).

onnx is only read here (graph protos), never imported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from farm.errors import QuantizationError
from farm.quant.layers import LayerSetting, Rules, resolve

#: Weight-carrying ops a layer exports to (Linear -> Gemm or MatMul, ConvNd -> Conv, recurrent layers) and the
#: ops a layer's own scope may hold that quantizers rewrite (an attention block's activation MatMul).
WEIGHT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN")
#: The export wrapper's attribute, the first scope segment of every node (``farm.runtimes.onnx_export._Flat``).
ROOT = "model"
_REUSED = re.compile(r"^(.*)_\d+$")


def _tail(name: str) -> str:
    """The last non-numeric atom of a qualified name and the numeric atoms after it (``layer1.0`` -> ``layer1.0``,
    ``layer1.0.conv1`` -> ``conv1``): the segment the TorchScript exporter writes for that module."""
    atoms = name.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return name


def known_modules(layers: Iterable[str]) -> set[str]:
    """The layers' names and every ancestor's (``layers.0.attention.q`` -> ``layers``, ``layers.0``, ...)."""
    known: set[str] = set()
    for name in layers:
        atoms = name.split(".")
        known.update(".".join(atoms[: i + 1]) for i in range(len(atoms)))
    return known


def scope_module(node_name: str, known: set[str], root: str = ROOT) -> str | None:
    """The qualified name of the deepest known module whose scope ``node_name`` is in ("" for the model itself);
    None when the name carries no scope of the export wrapper."""
    parts = node_name.split("/")
    if len(parts) < 3 or parts[0] != "" or parts[1] != root:
        return None
    current = ""
    for segment in parts[2:-1]:
        step = _descend(current, segment, known)
        if step is None:
            reused = _REUSED.match(segment)  # the same module's second call: relu_1, fc_1
            step = _descend(current, reused.group(1), known) if reused else None
        if step is None:
            return current  # a scope below every known module (a layer's own helper op)
        current = step
    return current


def _descend(current: str, segment: str, known: set[str]) -> str | None:
    """The child of ``current`` whose exporter segment is ``segment``, when it is a known module."""
    candidates = [f"{current}.{segment}" if current else segment]
    parent_tail = _tail(current) if current else ""
    if parent_tail and segment.startswith(parent_tail + "."):  # an index of a container: features -> features.0
        candidates.insert(0, current + segment[len(parent_tail) :])
    return next((c for c in candidates if c in known), None)


def _weight_input(node: Any, inits: Mapping[str, Any]) -> str | None:
    """The initializer a weight op reads as its weight (Conv/Gemm/MatMul: input 1, LSTM/GRU/RNN: W), else None."""
    if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
        return None
    name = node.input[1]
    return name if name in inits else None


def layer_nodes(graph: Any, layers: Mapping[str, str], *, root: str = ROOT) -> dict[str, list[str]]:
    """The weight-carrying nodes of each layer of ``layers`` in the ONNX ``graph`` (a ``GraphProto``).

    Args:
        graph: the exported graph (before or after onnxruntime's pre-processing).
        layers: the model's quantizable layers, qualified name -> class name.
        root: the export wrapper's attribute, the first scope segment.

    Returns:
        Layer name -> node names, in graph order; a layer with no node maps to an empty list.
    """
    inits = {t.name: t for t in graph.initializer}
    known = known_modules(layers)
    found: dict[str, list[str]] = {name: [] for name in layers}
    for node in graph.node:
        weight = _weight_input(node, inits)
        if weight is None:
            continue
        owner = scope_module(node.name, known, root)
        if owner not in found:  # no scope: the weight's own name is the parameter's path
            owner = _owner_of_weight(weight, found, root)
        if owner is not None:
            found[owner].append(node.name)
    return found


def _owner_of_weight(weight: str, layers: Mapping[str, Any], root: str) -> str | None:
    for prefix in (f"{root}.", ""):
        if weight.startswith(prefix) and weight.endswith(".weight"):
            name = weight[len(prefix) : -len(".weight")]
            if name in layers:
                return name
    return None


def nodes_for(onnx_model: Any, module_name: str, layers: Mapping[str, str] | None = None) -> list[str]:
    """The weight-carrying nodes (Conv, MatMul, Gemm, ...) of the torch module ``module_name`` in ``onnx_model``.

    Args:
        onnx_model: a ``ModelProto`` exported by :func:`farm.runtimes.onnx_export.export_onnx`.
        module_name: the module's qualified name (``layer1.0.conv1``).
        layers: the model's layers (name -> class); None: ``module_name`` alone.
    """
    known = dict(layers or {})
    known.setdefault(module_name, "")
    return layer_nodes(onnx_model.graph, known)[module_name]


def block_nodes(graph: Any, layers: Mapping[str, str], skipped: Iterable[str], *, root: str = ROOT) -> list[str]:
    """The activation MatMuls (attention scores) in the scope of a module every layer of which is skipped: a block
    kept in floating point keeps those too, as the torch method (which quantizes modules only) does."""
    skipped = set(skipped)
    known = known_modules(layers)
    whole = {m for m in known if all(n in skipped for n in layers if n == m or n.startswith(m + "."))}
    whole.discard("")
    inits = {t.name for t in graph.initializer}
    out = []
    for node in graph.node:
        if node.op_type != "MatMul" or any(i in inits for i in node.input):
            continue
        owner = scope_module(node.name, known, root)
        if owner and any(owner == m or owner.startswith(m + ".") for m in whole):
            out.append(node.name)
    return out


def rule_nodes(
    onnx_model: Any, rules: Rules, layers: Mapping[str, str], *, root: str = ROOT
) -> tuple[list[str], dict[str, LayerSetting]]:
    """What the rules say about the graph's nodes.

    Args:
        onnx_model: the exported ``ModelProto``.
        rules: the method's ``layers`` rules.
        layers: the model's quantizable layers, qualified name -> class name (the rules are checked against these
            by :func:`farm.quant.layers.unmatched` before anything is exported).

    Returns:
        (nodes to keep in floating point: the skipped layers' nodes and the activation MatMuls of wholly skipped
        blocks; node -> setting for each node of a layer quantized with overrides).

    A selected layer with no node is not in the graph when every weight-carrying node of the graph belongs to
    another layer: the export dropped it, since it does not feed the output exported (an encoder's classifier head
    beside the embedding compared), and there is nothing to keep in floating point or to set for it.

    Raises:
        QuantizationError: a layer a rule selects has no node in the graph (its scope was lost).
    """
    settings = resolve(rules, layers)
    if not settings:
        return [], {}
    by_layer = layer_nodes(onnx_model.graph, layers, root=root)
    lost = [name for name in settings if not by_layer.get(name)]
    inits = {t.name: t for t in onnx_model.graph.initializer}
    weights = sum(1 for node in onnx_model.graph.node if _weight_input(node, inits) is not None)
    if lost and weights == sum(len(nodes) for nodes in by_layer.values()):  # every weight node is another layer's
        settings = {name: s for name, s in settings.items() if name not in lost}
    elif lost:
        raise QuantizationError(
            f"per-layer rules: no node of layer(s) {', '.join(lost[:6])} found in the exported ONNX graph "
            "(neither a module scope nor a weight name leads to them)"
        )
    exclude: list[str] = []
    overrides: dict[str, LayerSetting] = {}
    for name, setting in settings.items():
        if setting.skip:
            exclude.extend(by_layer[name])
        else:
            overrides.update({node: setting for node in by_layer[name]})
    skipped = [n for n, s in settings.items() if s.skip]
    exclude.extend(n for n in block_nodes(onnx_model.graph, layers, skipped, root=root) if n not in exclude)
    return exclude, overrides


def weight_axis(node: Any) -> int:
    """The output-channel axis of a weight op's weight, as onnxruntime's QDQ quantizer uses it per channel: Conv 0,
    ConvTranspose 1, Gemm 0 with transB else 1, MatMul 1 (the weight is (in, out))."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return 1
