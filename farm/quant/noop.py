"""noop: returns the model untouched. Measures the bookkeeping around a job (bench/), never user-facing."""

from __future__ import annotations

from torch import nn

from farm.quant.config import NoopConfig
from farm.quant.context import QuantContext, QuantOutcome


def apply_noop(model: nn.Module, cfg: NoopConfig, ctx: QuantContext) -> QuantOutcome:
    return QuantOutcome(model, device=ctx.device)
