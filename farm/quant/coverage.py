"""Coverage: the fraction of a model's parameters and multiply-accumulates that a method really quantized.

Dynamic quantization, for instance, rewrites Linear/LSTM/GRU only: on a CNN it leaves every Conv2d in
fp32 and covers almost nothing. These numbers make that visible next to the speed and accuracy figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_QUANTIZED_PACKAGES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized", "torch.ao.nn.quantized.dynamic")
_RNN_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1, nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1}


@dataclass(frozen=True)
class LayerProfile:
    """Per-layer parameter and multiply-accumulate counts of the fp32 model (for one sample)."""

    params: dict[str, int]
    macs: dict[str, int]
    total_params: int

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
    """

    params: float
    macs: float
    layers: int
    layers_total: int

    def to_dict(self) -> dict[str, float | int]:
        return {"params": self.params, "macs": self.macs, "layers": self.layers, "layers_total": self.layers_total}


def profile_layers(model: nn.Module, example_input: torch.Tensor) -> LayerProfile:
    """Count each weight layer's parameters and its MACs for one sample of ``example_input``."""
    params: dict[str, int] = {}
    macs: dict[str, int] = {}
    hooks = []
    batch = max(1, example_input.shape[0]) if example_input.dim() > 0 else 1

    def hook_for(name: str, module: nn.Module):  # type: ignore[no-untyped-def]
        def hook(mod: nn.Module, inputs: tuple, output: object) -> None:
            macs[name] = macs.get(name, 0) + _macs(mod, inputs, output) // batch

        return hook

    for name, module in model.named_modules():
        if _is_weight_layer(module):
            params[name] = sum(p.numel() for p in module.parameters())
            hooks.append(module.register_forward_hook(hook_for(name, module)))
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return LayerProfile(params, macs, sum(p.numel() for p in model.parameters()))


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
    return Coverage(_clamp(params), _clamp(macs), len(hit), len(layer_names))


def full(profile: LayerProfile, *, params: float = 1.0, macs: float = 1.0) -> Coverage:
    """Coverage of a whole-model transform such as a cast to bf16."""
    n = len(profile.params)
    return Coverage(params, macs, n if params or macs else 0, n)


LOW_COVERAGE = 0.5


def low_coverage_warning(method: str, cov: Coverage) -> str | None:
    """The warning shown beside the numbers when a method reached less than half of the model."""
    if cov.params >= LOW_COVERAGE and cov.macs >= LOW_COVERAGE:
        return None
    text = (
        f"low coverage: {method} quantized {cov.params:.1%} of the parameters and {cov.macs:.1%} of the "
        f"multiply-accumulates ({cov.layers} of {cov.layers_total} weight layers)"
    )
    if method == "dynamic":
        text += "; dynamic quantization only rewrites Linear/LSTM/GRU and leaves Conv2d in fp32: use static or qat"
    else:
        text += "; the rest has no quantized kernel on this backend and stays fp32"
    return text


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
