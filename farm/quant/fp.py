"""fp32, fp16 and bf16: the reference and half-precision inference (cast or autocast)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from farm.errors import ConfigError
from farm.quant.config import Fp32Config, HalfConfig
from farm.quant.context import QuantContext, QuantOutcome

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


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


def apply_half(model: nn.Module, cfg: HalfConfig, ctx: QuantContext) -> QuantOutcome:
    check_half_device(cfg.method, ctx.device)
    dtype = _DTYPES[cfg.method]
    if cfg.mode == "cast":
        half = copy.deepcopy(model).to(device=ctx.device, dtype=dtype).eval()
        return QuantOutcome(half, device=ctx.device, input_dtype=dtype)
    return QuantOutcome(copy.deepcopy(model).to(ctx.device).eval(), device=ctx.device, autocast_dtype=dtype)
