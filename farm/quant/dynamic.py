"""dynamic: int8 weights for Linear / LSTM / GRU, activations quantized on the fly (torch.ao eager API).

Convolutions are left in fp32: on a CNN this quantizes almost nothing, which the coverage figures and a
warning make plain. Per-layer rules (``layers``) keep a layer in floating point (it is left out of the spec
``quantize_dynamic`` is given) or give it its own weight granularity.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from farm.quant.config import DynamicConfig
from farm.quant.context import QuantContext, QuantOutcome, quantized_engine, require_module
from farm.quant.isolation import compute_step
from farm.quant.layer_list import DYNAMIC_TYPES, layer_settings
from farm.quant.layers import LayerSetting

DYNAMIC_LAYERS = set(DYNAMIC_TYPES)


def _qconfig(layer: type[nn.Module], granularity: str) -> Any:
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    # The recurrent layers have no per-channel dynamic kernels in torch.ao: they keep one scale per tensor.
    return (
        per_channel_dynamic_qconfig if granularity == "per_channel" and layer is nn.Linear else default_dynamic_qconfig
    )


def dynamic_qconfigs(cfg: DynamicConfig) -> dict[type[nn.Module], Any]:
    """The qconfig of each layer type ``quantize_dynamic`` swaps.

    ``per_channel`` gives Linear one weight scale per output channel; the recurrent layers have no per-channel
    dynamic kernels in torch.ao and keep one scale per tensor.
    """
    return {layer: _qconfig(layer, cfg.granularity) for layer in DYNAMIC_LAYERS}


def dynamic_spec(
    model: nn.Module, cfg: DynamicConfig, settings: dict[str, LayerSetting]
) -> dict[type[nn.Module] | str, Any]:
    """``quantize_dynamic``'s qconfig_spec: the method's qconfig per layer type, and per module name a layer's own
    (None for a layer the rules keep in floating point: a name entry wins over its type's in torch.ao)."""
    modules = dict(model.named_modules())
    spec: dict[type[nn.Module] | str, Any] = {layer: _qconfig(layer, cfg.granularity) for layer in DYNAMIC_LAYERS}
    for name, setting in settings.items():
        if setting.skip:
            spec[name] = None
        elif setting.granularity is not None:
            spec[name] = _qconfig(type(modules[name]), setting.granularity)
    return spec


def apply_dynamic(model: nn.Module, cfg: DynamicConfig, ctx: QuantContext) -> QuantOutcome:
    from torch.ao.quantization import quantize_dynamic

    require_module(ctx, "dynamic")
    started = time.perf_counter()
    base = copy.deepcopy(model).cpu().eval()
    spec = dynamic_spec(base, cfg, layer_settings(base, "dynamic", cfg.layers))
    with quantized_engine(cfg.backend), compute_step(ctx.should_stop):  # paused while another job here times
        quantized = quantize_dynamic(base, spec, dtype=torch.qint8)
    return QuantOutcome(
        quantized, device="cpu", engine=cfg.backend, timings_s={"convert": time.perf_counter() - started}
    )
