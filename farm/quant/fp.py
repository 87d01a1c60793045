"""fp32, fp16 and bf16: the reference and half-precision inference (cast or autocast).

A cast keeps every normalisation layer (LayerNorm, GroupNorm, RMSNorm, BatchNorm, InstanceNorm) in fp32
(:func:`keep_in_fp32`): its input is cast up, its output back to the half dtype. Their scales and shifts then keep
full precision and the statistics are computed in fp32, as autocast does. Embedding tables are cast with the
rest: a row looked up in fp32 and cast to half is bit for bit the row of the half table, so fp32 tables would
cost memory for nothing. Token ids and masks are never cast (``farm.quant.inputs.place`` casts floating-point
inputs only).

Per-layer rules (``layers``) work the same way: a layer a rule keeps in fp32 (``skip``, or ``dtype: fp32``) or
gives another half dtype (``dtype: fp16`` in a bf16 model) holds its weights in that dtype, and hooks cast its
floating-point inputs to it and its outputs back; the modules inside it follow it. Rules need ``mode: cast`` on an
nn.Module (autocast decides per op, not per layer; a serialized graph has no layers to hook).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from farm.errors import ConfigError
from farm.quant.config import Fp32Config, HalfConfig
from farm.quant.context import QuantContext, QuantOutcome
from farm.quant.layer_list import NORM_LAYERS, layer_settings
from farm.quant.layers import LayerSetting

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
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


def _cast_tree(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with every floating-point tensor in it (inside tuples, lists, dicts) cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast_tree(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast_tree(v, dtype) for k, v in value.items()}
    return value


def keep_in(module: nn.Module, dtype: torch.dtype, around: torch.dtype) -> nn.Module:
    """Run ``module`` (its weights already in ``dtype``) inside a model computing in ``around``: forward hooks cast
    every floating-point input, positional or keyword, to ``dtype`` and the outputs back to ``around``."""

    def up(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        return _cast_tree(args, dtype), _cast_tree(kwargs, dtype)

    def down(mod: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        return _cast_tree(output, around)

    module.register_forward_pre_hook(up, with_kwargs=True)
    module.register_forward_hook(down)
    return module


def layer_dtypes(settings: dict[str, LayerSetting], dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The dtype each layer a rule selects computes in: fp32 when skipped (unless the rule names a half dtype),
    else the rule's dtype, else the method's."""
    out = {}
    for name, s in settings.items():
        wanted = s.dtype or ("fp32" if s.skip else None)
        out[name] = torch.float32 if wanted == "fp32" else _DTYPES.get(wanted or "", dtype)
    return out


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


def cast_keeping_norms(
    model: nn.Module,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    layers: dict[str, torch.dtype] | None = None,
) -> nn.Module:
    """A copy of ``model`` on ``device`` with its floating-point tensors in ``dtype``, norms kept in fp32.

    Args:
        model: the fp32 model (left untouched).
        dtype: the half dtype.
        device: where the copy lives.
        layers: qualified name → the dtype that layer (and the modules inside it) computes in instead, from the
            per-layer rules (:func:`layer_dtypes`).

    Returns:
        The copy in eval mode; each normalisation layer kept in fp32 by :func:`keep_in_fp32`, each layer of
        ``layers`` in its dtype by :func:`keep_in`.
    """
    copied = copy.deepcopy(model).to(device).eval()
    layers = layers or {}
    within: dict[str, torch.dtype] = {}  # the dtype each module computes in: its rule's, else its parent's
    for name, module in copied.named_modules():
        around = within.get(name.rpartition(".")[0], dtype) if name else dtype
        own = within[name] = layers.get(name, around)
        if isinstance(module, NORM_LAYERS):
            if around != torch.float32:  # inside a block kept in fp32 a norm needs no casts
                keep_in_fp32(module, around)
            continue
        if own != around:
            keep_in(module, own, around)
        for p in module.parameters(recurse=False):
            if p.is_floating_point():
                p.data = p.data.to(own)
        for buffer_name, b in module.named_buffers(recurse=False):
            if b is not None and b.is_floating_point():
                module._buffers[buffer_name] = b.to(own)
    return copied


def apply_half(model: nn.Module, cfg: HalfConfig, ctx: QuantContext) -> QuantOutcome:
    check_half_device(cfg.method, ctx.device)
    dtype = _DTYPES[cfg.method]
    if cfg.layers and (cfg.mode != "cast" or ctx.graph):
        why = "a serialized graph has no layers to keep apart" if ctx.graph else "autocast picks dtypes per op"
        raise ConfigError(f"{cfg.method}: per-layer rules need mode cast on an nn.Module ({why})")
    if cfg.mode == "cast":
        if ctx.graph:  # a serialized graph's layers can't be swapped: a plain cast
            half = copy.deepcopy(model).to(device=ctx.device, dtype=dtype).eval()
        else:
            kept = layer_dtypes(layer_settings(model, cfg.method, cfg.layers), dtype)
            half = cast_keeping_norms(model, dtype, ctx.device, kept)
        return QuantOutcome(half, device=ctx.device, input_dtype=dtype)
    return QuantOutcome(copy.deepcopy(model).to(ctx.device).eval(), device=ctx.device, autocast_dtype=dtype)
