"""The table of method handlers, one per config type, and :func:`apply_method` (torchao's ``quantize_`` shape).

Registration is explicit: :data:`HANDLERS` below names every handler, keyed by the config type it applies.
Nothing registers itself by being imported, and nothing imports this module back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from farm.errors import ConfigError
from farm.quant.config import (
    Bf16Config,
    DynamicConfig,
    Fp16Config,
    Fp32Config,
    MethodConfig,
    NoopConfig,
    QATConfig,
    StaticConfig,
)
from farm.quant.context import (
    ProgressFn,
    QuantContext,
    QuantOutcome,
    quantized_engine,
    quiet_torch_ao,
    require_module,
)
from farm.quant.dynamic import apply_dynamic
from farm.quant.fp import apply_fp32, apply_half
from farm.quant.noop import apply_noop
from farm.quant.qat import apply_qat
from farm.quant.static import apply_static

Handler = Callable[[nn.Module, Any, QuantContext], QuantOutcome]

#: The one place a method is wired to the code that applies it.
HANDLERS: dict[type[MethodConfig], Handler] = {
    Fp32Config: apply_fp32,
    Fp16Config: apply_half,
    Bf16Config: apply_half,
    DynamicConfig: apply_dynamic,
    StaticConfig: apply_static,
    QATConfig: apply_qat,
    NoopConfig: apply_noop,
}


def handler_for(config: MethodConfig) -> Handler:
    """The handler registered for ``config``'s type.

    Raises:
        ConfigError: no handler is registered for that config type.
    """
    handler = HANDLERS.get(type(config))
    if handler is None:
        raise ConfigError(f"no handler for method config {type(config).__name__} (method {config.method!r})")
    return handler


def apply_method(model: nn.Module, config: MethodConfig, ctx: QuantContext) -> QuantOutcome:
    """Apply ``config`` to (a copy of) ``model``.

    Raises:
        QuantizationError: the method cannot be applied to this model.
        ConfigError: the config cannot run on this machine (e.g. fp16 without CUDA), or has no handler.
    """
    handler = handler_for(config)
    with quiet_torch_ao():
        return handler(model, config, ctx)


__all__ = [
    "HANDLERS",
    "Handler",
    "ProgressFn",
    "QuantContext",
    "QuantOutcome",
    "apply_method",
    "handler_for",
    "quantized_engine",
    "quiet_torch_ao",
    "require_module",
]
