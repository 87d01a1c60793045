"""fp32, fp16 and bf16: the reference and half-precision inference (cast or autocast).

A cast keeps every normalisation layer (LayerNorm, GroupNorm, RMSNorm, BatchNorm, InstanceNorm) in fp32
(:func:`keep_in_fp32`): its input is cast up, its output back to the half dtype. Their scales and shifts then keep
full precision and the statistics are computed in fp32, as autocast does. Embedding tables are cast with the
rest: a row looked up in fp32 and cast to half is bit for bit the row of the half table, so fp32 tables would
cost memory for nothing. Token ids and masks are never cast (``farm.quant.inputs.place`` casts floating-point
inputs only).
"""

from __future__ import annotations

import copy
from typing import Any

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


#: Set on a norm layer that :func:`cast_keeping_norms` keeps in fp32.
FLOAT_NORM = "farm_float_norm"


def _up(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].float(), *args[1:])


def _down(dtype: torch.dtype) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output.to(dtype)

    return hook


def keep_in_fp32(norm: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Run ``norm`` in fp32 inside a ``dtype`` model: forward hooks cast its input up and its output back. Hooks,
    not a wrapper module: the parameter names (``bn.weight``) stay those of the user's class."""
    if not getattr(norm, FLOAT_NORM, False):
        norm.register_forward_pre_hook(_up)
        norm.register_forward_hook(_down(dtype))
        setattr(norm, FLOAT_NORM, True)
    return norm


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
        The copy in eval mode; each normalisation layer kept in fp32 by :func:`keep_in_fp32`.
    """
    copied = copy.deepcopy(model).to(device).eval()
    kept = {id(m) for m in copied.modules() if isinstance(m, NORM_LAYERS)}
    for module in copied.modules():
        if id(module) in kept:
            keep_in_fp32(module, dtype)
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
