"""Refusing, before anything is loaded, a job this machine cannot run (fp16 without CUDA, a missing runtime)."""

from __future__ import annotations

from farm.errors import ConfigError
from farm.quant.config import MethodConfig
from farm.runtimes.engine import runtime_of


def preflight(cfg: MethodConfig, device: str, *, training: bool = True) -> None:
    """Refuse, before loading anything, a job this machine cannot run.

    Args:
        training: a qat job fine-tunes here (False: it converts a checkpoint fine-tuned elsewhere, e.g. on a
            GPU worker, and needs no training device).

    Raises:
        ConfigError: fp16 without CUDA, a CUDA device asked for on a machine without one, or a runtime that cannot
            serve the job here (:func:`farm.runtimes.engine.check`).
    """
    from farm.quant.fp import check_half_device

    if runtime_of(cfg) != "torch":
        from farm.runtimes.engine import check

        check(cfg, device)  # the runtime's own refusals (fp16 on a CPU provider, a missing package)
        if device.startswith("cuda"):
            check_half_device("fp32", device)  # CUDA asked for on a machine without it
    elif cfg.method in ("fp16", "bf16"):
        check_half_device(cfg.method, device)
    elif device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device {device}: this machine has no CUDA device")
    if cfg.method == "qat" and training:
        from farm.quant.qat import train_device

        train_device(cfg)  # type: ignore[arg-type]
