"""Coverage: the fraction of a model's parameters and multiply-accumulates that a method really quantized.

Dynamic quantization, for instance, rewrites Linear/LSTM/GRU only: on a CNN it leaves every Conv2d in
fp32 and covers almost nothing. These numbers make that visible next to the speed and accuracy figures.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from farm.quant import inputs
from farm.quant.inputs import Batch

_QUANTIZED_PACKAGES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized", "torch.ao.nn.quantized.dynamic")
_RNN_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1, nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1}


@dataclass(frozen=True)
class LayerProfile:
    """Per-layer parameter and multiply-accumulate counts of the fp32 model (for one sample)."""

    params: dict[str, int]
    macs: dict[str, int]
    total_params: int
    #: Each weight layer's class name (``Conv2d``), for naming what a method left in floating point.
    types: dict[str, str] = field(default_factory=dict)

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())


@dataclass(frozen=True)
class Coverage:
    """What fraction of the model a method reached.

    Attributes:
        params: fraction of the fp32 model's parameters now stored quantized (or in reduced precision).
        macs: fraction of multiply-accumulates (conv, linear, recurrent layers) now run quantized.
        layers: number of weight layers quantized.
        layers_total: number of weight layers.
        left_fp: the module types still in floating point, as (type, share of parameters, share of MACs),
            biggest first; only types holding at least 1 % of either.
    """

    params: float
    macs: float
    layers: int
    layers_total: int
    left_fp: tuple[tuple[str, float, float], ...] = ()

    def to_dict(self) -> dict[str, float | int]:
        return {"params": self.params, "macs": self.macs, "layers": self.layers, "layers_total": self.layers_total}


def profile_layers(model: nn.Module, example_input: Batch) -> LayerProfile:
    """Count each weight layer's parameters and its MACs for one sample of ``example_input`` (a tensor, or a tuple
    or dict of tensors)."""
    params: dict[str, int] = {}
    macs: dict[str, int] = {}
    hooks = []
    batch = max(1, inputs.batch_len(example_input))

    def hook_for(name: str, module: nn.Module):  # type: ignore[no-untyped-def]
        def hook(mod: nn.Module, inputs: tuple, output: object) -> None:
            macs[name] = macs.get(name, 0) + _macs(mod, inputs, output) // batch

        return hook

    types: dict[str, str] = {}
    for name, module in model.named_modules():
        if _is_weight_layer(module):
            params[name] = sum(p.numel() for p in module.parameters())
            types[name] = type(module).__name__
            hooks.append(module.register_forward_hook(hook_for(name, module)))
    try:
        with torch.no_grad():
            inputs.call(model, example_input)
    finally:
        for h in hooks:
            h.remove()
    return LayerProfile(params, macs, sum(p.numel() for p in model.parameters()), types)


def measure(profile: LayerProfile, quantized: nn.Module, *, simulated: bool) -> Coverage:
    """Coverage of ``quantized`` relative to the fp32 ``profile``.

    Real int8 models hold their quantized weights as packed buffers, so whatever is still an fp32
    ``nn.Parameter`` was left unquantized. Simulated (fake-quant) models keep fp32 parameters; there a
    layer counts as quantized when it carries a weight fake-quantizer.
    """
    total = max(profile.total_params, 1)
    if simulated:
        names = {name for name, m in quantized.named_modules() if hasattr(m, "weight_fake_quant")}
        covered = sum(sum(p.numel() for p in m.parameters()) for name, m in quantized.named_modules() if name in names)
        params = covered / total
    else:
        names = {name for name, m in quantized.named_modules() if _is_quantized_module(m)}
        remaining = sum(p.numel() for p in quantized.parameters() if p.dtype.is_floating_point)
        params = 1.0 - remaining / total
    layer_names = set(profile.params)
    hit = layer_names & names
    total_macs = profile.total_macs
    macs = sum(profile.macs.get(n, 0) for n in hit) / total_macs if total_macs else 0.0
    left = _left_fp(profile, quantized, names)
    return Coverage(_clamp(params), _clamp(macs), len(hit), len(layer_names), left)


def _left_fp(
    profile: LayerProfile, quantized: nn.Module, quantized_names: set[str]
) -> tuple[tuple[str, float, float], ...]:
    """The module types whose parameters (or MACs) stayed in floating point, by share, biggest first.

    Parameters are read from ``quantized`` itself (what a module still holds as a floating-point Parameter:
    an Embedding has no MACs but may be most of a transformer); MACs from the fp32 profile's unreached layers.
    """
    total_params = max(profile.total_params, 1)
    total_macs = profile.total_macs
    param_share: dict[str, float] = defaultdict(float)
    mac_share: dict[str, float] = defaultdict(float)
    for name, module in quantized.named_modules():
        if name in quantized_names or _is_quantized_module(module):
            continue
        fp = sum(p.numel() for p in module.parameters(recurse=False) if p.dtype.is_floating_point)
        if fp:
            param_share[type(module).__name__] += fp / total_params
    if total_macs:
        for name, kind in profile.types.items():
            if name not in quantized_names:
                mac_share[kind] += profile.macs.get(name, 0) / total_macs
    kinds = set(param_share) | set(mac_share)
    rows = [(k, round(param_share.get(k, 0.0), 4), round(mac_share.get(k, 0.0), 4)) for k in kinds]
    rows = [r for r in rows if max(r[1], r[2]) >= 0.01]
    return tuple(sorted(rows, key=lambda r: (-max(r[1], r[2]), r[0])))


def full(
    profile: LayerProfile,
    *,
    params: float = 1.0,
    macs: float = 1.0,
    kept: Mapping[str, str] | Sequence[str] = (),
    model: Any = None,
) -> Coverage:
    """Coverage of a whole-model transform such as a cast to bf16.

    Args:
        profile: the fp32 model's profile.
        params, macs: the shares the transform reaches on the whole model (autocast stores no parameter in half).
        kept: the layers per-layer rules keep in fp32: they and the modules inside them count as not reached.
        model: the fp32 model, to count the parameters of ``kept`` (needed when ``kept`` is given).
    """
    n = len(profile.params)
    if not kept:
        return Coverage(params, macs, n if params or macs else 0, n)
    inside = [name for name in profile.params if _within(name, kept)]
    total_macs = profile.total_macs
    kept_macs = sum(profile.macs.get(name, 0) for name in inside) / total_macs if total_macs else 0.0
    modules = dict(model.named_modules()) if model is not None else {}
    params_kept = {id(p): p.numel() for name in kept if name in modules for p in modules[name].parameters()}
    kept_params = sum(params_kept.values())
    reached = n - len(inside)
    return Coverage(
        _clamp(params - kept_params / max(profile.total_params, 1) if params else 0.0),
        _clamp(macs - kept_macs if macs else 0.0),
        reached if params or macs else 0,
        n,
    )


def _within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") or p == "" for p in prefixes)


LOW_COVERAGE = 0.5


def low_coverage_warning(method: str, cov: Coverage, kept: Mapping[str, str] | None = None) -> str | None:
    """The warning shown beside the numbers when a method reached less than half of the model.

    Args:
        method: the method's name.
        cov: what it reached.
        kept: the layers per-layer rules kept in floating point, name → class name
            (:func:`farm.quant.layer_list.kept_by_rules`): named as the cause.
    """
    kept = kept or {}
    if cov.params >= LOW_COVERAGE and cov.macs >= LOW_COVERAGE:
        return None
    text = (
        f"low coverage: {method} quantized {cov.params:.1%} of the parameters and {cov.macs:.1%} of the "
        f"multiply-accumulates ({cov.layers} of {cov.layers_total} weight layers)"
    )
    if kept:
        names = list(kept)
        named = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        text += f"; per-layer rules keep {named} in floating point"
    if not cov.left_fp:
        return text + "; the rest has no quantized kernel on this backend and stays fp32"
    kept_types = set(kept.values())
    return text + "; " + "; ".join(_left_fp_text(method, *row, kept_types) for row in cov.left_fp[:3])


def _left_fp_text(method: str, kind: str, params: float, macs: float, kept_types: set[str] | None = None) -> str:
    """``Conv2d (94 % of MACs) stays fp32: static or qat quantize it``: one type left in floating point."""
    shares = [f"{macs:.0%} of MACs"] if macs >= 0.01 else []
    shares += [f"{params:.0%} of parameters"] if params >= 0.01 else []
    head = f"{kind} ({', '.join(shares)}) stays fp32"
    if kind in _EMBEDDING:
        return f"{head}: static and qat do not apply to it (no int8 kernel here for an embedding table)"
    cures = _CURES.get(kind)
    if cures is None:
        return f"{head}: no method here quantizes it"
    others = [m for m in cures if m != method]
    if method in cures and kind in (kept_types or set()):
        return f"{head}: kept by the rules"
    if method in cures:
        return f"{head}: {method} has no quantized kernel for it on this backend" + (
            f" (try {' or '.join(others)})" if others else ""
        )
    return f"{head}: {' or '.join(others)} quantize{'s' if len(others) == 1 else ''} it"


_EMBEDDING = {"Embedding", "EmbeddingBag"}
# Which integer methods rewrite each layer type (dynamic: Linear and the recurrent layers; static and qat: the
# convolutions and Linear).
_CURES: dict[str, tuple[str, ...]] = {
    **{k: ("static", "qat") for k in ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d")},
    "Linear": ("dynamic", "static", "qat"),
    # Folded into the convolution before it by static and qat (fusion), not quantized on its own.
    **{k: ("static", "qat") for k in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")},
    **{k: ("dynamic",) for k in ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell")},
}


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, round(x, 6)))


def _is_weight_layer(m: nn.Module) -> bool:
    return isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, *_RNN_GATES)) and not _is_quantized_module(m)


def _is_quantized_module(m: nn.Module) -> bool:
    module = type(m).__module__
    if not module.startswith(_QUANTIZED_PACKAGES):
        return False
    return hasattr(m, "_packed_params") or hasattr(m, "_all_weight_values") or callable(getattr(m, "weight", None))


def _macs(m: nn.Module, inputs: tuple, output: object) -> int:
    out = output[0] if isinstance(output, tuple) else output
    if isinstance(m, nn.modules.conv._ConvNd) and isinstance(out, torch.Tensor):
        per_output = (m.in_channels // m.groups) * math.prod(m.kernel_size)
        return out.numel() * per_output
    if isinstance(m, nn.Linear) and isinstance(out, torch.Tensor):
        return out.numel() * m.in_features
    gates = next((g for cls, g in _RNN_GATES.items() if isinstance(m, cls)), None)
    if gates is not None and inputs and isinstance(inputs[0], torch.Tensor):
        x = inputs[0]
        rnn: Any = m  # the recurrent classes share these attributes but no typed base
        hidden, in_size = int(rnn.hidden_size), int(rnn.input_size)
        if isinstance(m, (nn.LSTMCell, nn.GRUCell, nn.RNNCell)):
            steps_batch = x.shape[0] if x.dim() > 1 else 1
            return steps_batch * gates * hidden * (in_size + hidden)
        steps_batch = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
        dirs = 2 if getattr(rnn, "bidirectional", False) else 1
        layers = int(getattr(rnn, "num_layers", 1))
        first = gates * hidden * (in_size + hidden)
        later = gates * hidden * (hidden * dirs + hidden)
        return int(steps_batch * dirs * (first + later * (layers - 1)))
    return 0
