"""dynamic: int8 weights for Linear / LSTM / GRU, activations quantized on the fly (torch.ao eager API).

Convolutions are left in fp32: on a CNN this quantizes almost nothing, which the coverage figures and a
warning make plain.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from farm.quant.config import DynamicConfig
from farm.quant.context import QuantContext, QuantOutcome, quantized_engine, require_module
from farm.quant.isolation import compute_step

DYNAMIC_LAYERS = {nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell}


def apply_dynamic(model: nn.Module, cfg: DynamicConfig, ctx: QuantContext) -> QuantOutcome:
    from torch.ao.quantization import quantize_dynamic

    require_module(ctx, "dynamic")
    started = time.perf_counter()
    with quantized_engine(cfg.backend), compute_step(ctx.should_stop):  # paused while another job here times
        quantized = quantize_dynamic(copy.deepcopy(model).cpu().eval(), DYNAMIC_LAYERS, dtype=torch.qint8)
    return QuantOutcome(
        quantized, device="cpu", engine=cfg.backend, timings_s={"convert": time.perf_counter() - started}
    )
