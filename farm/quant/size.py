"""Packed size of a simulated low-bit model: what it would take on disk with real low-bit storage."""

from __future__ import annotations

import math

from torch import nn

SCALE_BYTES = 4  # fp32 scale
ZERO_POINT_BYTES = 4  # int32 zero point


def packed_size_bytes(model: nn.Module, bits: int, *, per_layer: bool = False) -> int:
    """bits x weights / 8, plus a scale and zero point per quantization group, plus everything else at its dtype.

    Each layer carrying a weight fake-quantizer stores its weight packed at ``bits`` bits, one
    (scale, zero point) pair per channel or tensor, and an fp32 bias per output channel (batch norm
    folded in). Every other parameter and buffer (unfolded norms, embeddings) counts at its own dtype;
    observer statistics are calibration state, not model, and are left out. Activation quantizers add
    one (scale, zero point) pair each. ``per_layer`` counts each layer at the bit-width of its own weight quantizer
    (per-layer rules), not at ``bits``.
    """
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase
    from torch.ao.quantization.observer import ObserverBase

    counted: set[int] = set()
    weight_quantizers: set[int] = set()
    total = 0
    for module in model.modules():
        wfq = getattr(module, "weight_fake_quant", None)
        weight = getattr(module, "weight", None)
        if wfq is None or not isinstance(weight, nn.Parameter):
            continue
        weight_quantizers.add(id(wfq))
        scale = getattr(wfq, "scale", None)
        groups = int(scale.numel()) if scale is not None else 1
        out_channels = weight.shape[0]
        # per_layer: per-layer rules gave layers their own bit-widths, read from each weight quantizer's range
        layer_bits = (_bits_of(wfq) if per_layer else None) or bits
        total += math.ceil(weight.numel() * layer_bits / 8) + groups * (SCALE_BYTES + ZERO_POINT_BYTES)
        total += out_channels * 4
        counted.update(id(t) for t in module.parameters())
        counted.update(id(t) for t in module.buffers())
    for module in model.modules():
        if isinstance(module, FakeQuantizeBase) and id(module) not in weight_quantizers:
            total += SCALE_BYTES + ZERO_POINT_BYTES  # an activation quantizer's qparams
        if isinstance(module, (FakeQuantizeBase, ObserverBase)):
            counted.update(id(t) for t in module.buffers())
    for p in model.parameters():
        if id(p) not in counted:
            total += p.numel() * p.element_size()
            counted.add(id(p))
    for b in model.buffers():
        if id(b) not in counted and b.dtype.is_floating_point:
            total += b.numel() * b.element_size()
            counted.add(id(b))
    return total


def _bits_of(fake_quant: nn.Module) -> int | None:
    """The bit-width of a fake quantizer's integer range, or None where it has none."""
    low, high = getattr(fake_quant, "quant_min", None), getattr(fake_quant, "quant_max", None)
    if low is None or high is None:
        return None
    return max(1, math.ceil(math.log2(int(high) - int(low) + 1)))
