"""dynamic: int8 weights for Linear / LSTM / GRU, activations quantized on the fly (torch.ao eager API).

Convolutions are left in fp32: on a CNN this quantizes almost nothing, which the coverage figures and a
warning make plain.
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

DYNAMIC_LAYERS = {nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell}


def dynamic_qconfigs(cfg: DynamicConfig) -> dict[type[nn.Module], Any]:
    """The qconfig of each layer type ``quantize_dynamic`` swaps.

    ``per_channel`` gives Linear one weight scale per output channel; the recurrent layers have no per-channel
    dynamic kernels in torch.ao and keep one scale per tensor.
    """
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    linear = per_channel_dynamic_qconfig if cfg.granularity == "per_channel" else default_dynamic_qconfig
    return {layer: linear if layer is nn.Linear else default_dynamic_qconfig for layer in DYNAMIC_LAYERS}


def apply_dynamic(model: nn.Module, cfg: DynamicConfig, ctx: QuantContext) -> QuantOutcome:
    from torch.ao.quantization import quantize_dynamic

    require_module(ctx, "dynamic")
    started = time.perf_counter()
    with quantized_engine(cfg.backend), compute_step(ctx.should_stop):  # paused while another job here times
        quantized = quantize_dynamic(copy.deepcopy(model).cpu().eval(), dynamic_qconfigs(cfg), dtype=torch.qint8)
    return QuantOutcome(
        quantized, device="cpu", engine=cfg.backend, timings_s={"convert": time.perf_counter() - started}
    )
