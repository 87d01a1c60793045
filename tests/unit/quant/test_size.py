"""Packed size of simulated low-bit models: bits x weights / 8 plus a little for scales and biases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from farm.quant.config import parse_method
from farm.quant.registry import QuantContext, apply_method
from farm.quant.size import SCALE_BYTES, ZERO_POINT_BYTES, packed_size_bytes
from farm.zoo.data import TensorSplit
from tests import toys


def simulated(model: nn.Module, bits: int, granularity: str) -> nn.Module:
    calibration = TensorSplit(torch.randn((16, *toys.SHAPE), generator=torch.Generator().manual_seed(0)))
    ctx = QuantContext("toy", example_input=calibration.x[:1], calibration=calibration, labelled=False)
    cfg = parse_method("static", {"bits": bits, "granularity": granularity, "calibration_size": 16})
    outcome = apply_method(model, cfg, ctx)
    assert outcome.simulated and outcome.packed_size_bytes == packed_size_bytes(outcome.model, bits)
    return outcome.model


def weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "weight", None), nn.Parameter)]


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_four_bit_mlp_is_about_half_a_byte_per_weight(granularity: str) -> None:
    model = toys.tiny_mlp()
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    weights = [m.weight.numel() for m in weight_layers(model)]  # 64*32 and 32*10
    packed_weights = sum(math.ceil(n * 4 / 8) for n in weights)
    assert packed_weights == (2048 + 320) // 2

    size = packed_size_bytes(simulated(model, 4, granularity), 4)
    out_channels = 32 + 10
    groups = out_channels if granularity == "per_channel" else 2
    # biases at 4 bytes per output channel, one (scale, zero point) per group, a few activation quantizers
    overhead_bound = out_channels * 4 + groups * (SCALE_BYTES + ZERO_POINT_BYTES) + 8 * (SCALE_BYTES + ZERO_POINT_BYTES)
    assert packed_weights + out_channels * 4 <= size <= packed_weights + overhead_bound
    assert size < fp32_bytes / 5


def test_packed_size_grows_by_exactly_the_weight_bits() -> None:
    model = simulated(toys.tiny_cnn(), 4, "per_channel")
    weights = [m.weight.numel() for m in model.modules() if hasattr(m, "weight_fake_quant")]
    assert len(weights) == 4  # three convolutions (batch norm folded in) and the head
    for low, high in [(2, 4), (4, 8), (3, 7)]:
        delta = packed_size_bytes(model, high) - packed_size_bytes(model, low)
        assert delta == sum(math.ceil(n * high / 8) - math.ceil(n * low / 8) for n in weights)


def test_a_model_without_fake_quantizers_counts_at_its_dtype() -> None:
    model = toys.tiny_mlp()
    assert packed_size_bytes(model, 4) == sum(p.numel() * 4 for p in model.parameters())
    assert packed_size_bytes(model.to(torch.bfloat16), 4) == sum(p.numel() * 2 for p in model.parameters())
