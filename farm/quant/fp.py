"""fp32, fp16 and bf16: the reference and half-precision inference (cast or autocast).

A cast keeps every normalisation layer (LayerNorm, GroupNorm, RMSNorm, BatchNorm, InstanceNorm) in fp32, wrapped
in :class:`FloatNorm`: its input is cast up, its output back to the half dtype. Their scales and shifts then keep
full precision and the statistics are computed in fp32, as autocast does. Embedding tables are cast with the
rest: a row looked up in fp32 and cast to half is bit for bit the row of the half table, so fp32 tables would
cost memory for nothing. Token ids and masks are never cast (``farm.quant.inputs.place`` casts floating-point
inputs only).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from farm.errors import ConfigError
from farm.quant.config import Fp32Config, HalfConfig
from farm.quant.context import QuantContext, QuantOutcome

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
#: Layers whose statistics and affine parameters stay in fp32 under a half-precision cast.
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm1d/2d/3d
)


class FloatNorm(nn.Module):
    """Runs a normalisation layer in fp32 inside a half-precision model; returns its input's dtype."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.float()).to(x.dtype)


def apply_fp32(model: nn.Module, cfg: Fp32Config, ctx: QuantContext) -> QuantOutcome:
    return QuantOutcome(model.to(ctx.device), device=ctx.device)


def check_half_device(method: str, device: str) -> None:
    """fp16 needs CUDA; bf16 runs on CPU or CUDA.

    Raises:
        ConfigError: fp16 asked for without a CUDA device, or CUDA asked for on a machine without one.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{method} on {device}: this machine has no CUDA device")
    if method == "fp16" and not device.startswith("cuda"):
        if torch.cuda.is_available():
            raise ConfigError("fp16 runs on CUDA only: pass --device cuda (or use bf16 on CPU)")
        raise ConfigError("fp16 needs a CUDA device and this machine has none; use bf16 on CPU")


def cast_keeping_norms(model: nn.Module, dtype: torch.dtype, device: str | torch.device = "cpu") -> nn.Module:
    """A copy of ``model`` on ``device`` with its floating-point tensors in ``dtype``, norms kept in fp32.

    Args:
        model: the fp32 model (left untouched).
        dtype: the half dtype.
        device: where the copy lives.

    Returns:
        The copy in eval mode; each normalisation layer wrapped in a :class:`FloatNorm`.
    """
    copied = copy.deepcopy(model).to(device).eval()
    if isinstance(copied, NORM_LAYERS):
        return FloatNorm(copied).eval()
    wrappers: dict[int, FloatNorm] = {}  # a norm used in two places gets one wrapper
    for parent in list(copied.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, NORM_LAYERS):
                setattr(parent, name, wrappers.setdefault(id(child), FloatNorm(child)))
    kept = {id(m) for wrapper in wrappers.values() for m in wrapper.norm.modules()}
    for module in copied.modules():
        if id(module) in kept:
            continue
        for p in module.parameters(recurse=False):
            if p.is_floating_point():
                p.data = p.data.to(dtype)
        for name, b in module.named_buffers(recurse=False):
            if b is not None and b.is_floating_point():
                module._buffers[name] = b.to(dtype)
    return copied


def apply_half(model: nn.Module, cfg: HalfConfig, ctx: QuantContext) -> QuantOutcome:
    check_half_device(cfg.method, ctx.device)
    dtype = _DTYPES[cfg.method]
    if cfg.mode == "cast":
        if ctx.graph:  # a serialized graph's layers can't be swapped: a plain cast
            half = copy.deepcopy(model).to(device=ctx.device, dtype=dtype).eval()
        else:
            half = cast_keeping_norms(model, dtype, ctx.device)
        return QuantOutcome(half, device=ctx.device, input_dtype=dtype)
    return QuantOutcome(copy.deepcopy(model).to(ctx.device).eval(), device=ctx.device, autocast_dtype=dtype)
