"""Map torch module names (what a per-layer rule names) onto the nodes of the OpenVINO model converted from that
model, for NNCF's ``IgnoredScope(names=[...])``.

``ov.convert_model`` traces the model (wrapped as ``model``) and names each op after its module's qualified name:
``__module.model.classifier/aten::linear/MatMul``. Conversion fuses a BatchNorm into the convolution before it and the
fused node takes the BatchNorm Multiply's name (``Multiply_3095``: checked on farm:digits-cnn), so a node whose name
leads to no layer is matched by its weight instead: the constant equals the layer's weight up to one factor per
output channel (the folded BatchNorm's scale), in the same shape.

openvino is never imported here: the functions read the ``openvino.Model`` they are given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from torch import nn

from farm.errors import QuantizationError
from farm.quant.layers import LayerSetting
from farm.runtimes.layer_nodes import known_modules
from farm.runtimes.openvino_coverage import _DECOMPRESS_OPS, COMPUTE_OPS, _source

#: The prefix of every op name the converter gives inside the wrapped model.
PREFIX = "__module.model"


def op_module(name: str) -> str | None:
    """The qualified module name an op's friendly name carries ("" for the model itself), or None."""
    scope = name.split("/", 1)[0]
    if scope == PREFIX:
        return ""
    if scope.startswith(PREFIX + "."):
        return scope[len(PREFIX) + 1 :]
    return None


def ov_layer_nodes(ov_model: Any, model: nn.Module, layers: Mapping[str, str]) -> dict[str, list[str]]:
    """The compute nodes (MatMul, Convolution, ...) of each layer of ``layers`` in ``ov_model``, by friendly name.

    Args:
        ov_model: the converted ``openvino.Model``.
        model: the torch model it was converted from (its weights match the nodes whose names were lost).
        layers: the layers to find, qualified name -> class name.

    Returns:
        Layer name -> friendly names (empty when none was found).
    """
    found: dict[str, list[str]] = {name: [] for name in layers}
    unnamed = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() not in COMPUTE_OPS:
            continue
        owner = op_module(op.get_friendly_name())
        if owner in found:
            found[owner].append(op.get_friendly_name())
        else:
            unnamed.append(op)
    modules = dict(model.named_modules())
    for name in [n for n, nodes in found.items() if not nodes]:
        weight = getattr(modules.get(name), "weight", None)
        if weight is None:
            continue
        target = weight.detach().cpu().float().numpy()
        for op in unnamed:
            if _same_weight(_constant(op), target):
                found[name].append(op.get_friendly_name())
    return found


def ignored_names(
    ov_model: Any, model: nn.Module, layers: Mapping[str, str], settings: Mapping[str, LayerSetting]
) -> list[str]:
    """The friendly names NNCF must leave alone: the skipped layers' nodes, and the activation MatMuls (attention
    scores) in the scope of a module whose layers are all skipped.

    Raises:
        QuantizationError: a skipped layer has no node in the converted model.
    """
    skipped = [name for name, s in settings.items() if s.skip]
    if not skipped:
        return []
    by_layer = ov_layer_nodes(ov_model, model, {n: layers[n] for n in skipped})
    lost = [name for name, nodes in by_layer.items() if not nodes]
    if lost:
        raise QuantizationError(
            f"per-layer rules: no node of layer(s) {', '.join(lost[:6])} found in the OpenVINO model (neither its "
            "name nor its weight leads to one)"
        )
    names = [node for nodes in by_layer.values() for node in nodes]
    names += [n for n in _block_matmuls(ov_model, layers, skipped) if n not in names]
    return names


def _block_matmuls(ov_model: Any, layers: Mapping[str, str], skipped: Iterable[str]) -> list[str]:
    skipped = set(skipped)
    known = known_modules(layers)
    whole = {m for m in known if m and all(n in skipped for n in layers if n == m or n.startswith(m + "."))}
    out = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() != "MatMul" or _constant(op) is not None:
            continue
        owner = op_module(op.get_friendly_name())
        if owner and any(owner == m or owner.startswith(m + ".") for m in whole):
            out.append(op.get_friendly_name())
    return out


def _constant(op: Any) -> np.ndarray | None:
    """The op's weight (input 1) as a float array, when a constant (possibly behind a decompression chain)."""
    if op.get_input_size() < 2:
        return None
    const, _ = _source(op.input_value(1), _DECOMPRESS_OPS)
    if const is None:
        return None
    return np.asarray(const.get_data(), dtype=np.float32)


def _same_weight(found: np.ndarray | None, weight: np.ndarray) -> bool:
    """``found`` is ``weight`` up to one factor per output channel (axis 0): a folded BatchNorm's scale."""
    if found is None or found.shape != weight.shape or weight.ndim < 2:
        return False
    a, b = found.reshape(len(found), -1).astype(np.float64), weight.reshape(len(weight), -1).astype(np.float64)
    norm = (b * b).sum(axis=1)
    scale = np.where(norm > 0, (a * b).sum(axis=1) / np.where(norm > 0, norm, 1.0), 0.0)
    tolerance = 1e-4 * max(float(np.abs(a).max()), 1e-12)
    return bool(np.allclose(a, scale[:, None] * b, rtol=1e-3, atol=tolerance))
