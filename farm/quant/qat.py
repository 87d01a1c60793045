"""qat: quantization-aware fine-tuning with fake quantization, then convert (8 bits) or keep simulated (< 8).

Split in two so that a farm can fine-tune on a GPU worker and convert + benchmark on a CPU worker:
:func:`train` returns the prepared model whose ``state_dict`` is the checkpoint; :func:`rebuild` turns
that checkpoint back into a prepared model on another machine; :func:`finish` converts it.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from torch import nn

from farm.errors import ConfigError, QuantizationError
from farm.quant import inputs
from farm.quant.config import QATConfig
from farm.quant.context import QuantContext, QuantOutcome, quantized_engine, require_module
from farm.quant.isolation import compute_step
from farm.quant.qconfig import backend_config
from farm.quant.size import packed_size_bytes
from farm.quant.static import calibrate, engine_warnings, prepare_fake_quant
from farm.zoo.data import iterate


def train_device(cfg: QATConfig) -> str:
    """Where fine-tuning runs: cuda when asked or (auto) when present, else cpu.

    Raises:
        ConfigError: cuda asked for on a machine without it.
    """
    available = torch.cuda.is_available()
    if cfg.device == "cuda" and not available:
        raise ConfigError("qat device cuda: this machine has no CUDA device")
    if cfg.device == "cpu" or not available:
        return "cpu"
    return "cuda"


def prepare(model: nn.Module, cfg: QATConfig, ctx: QuantContext) -> Any:
    """Fuse and insert fake quantizers into a copy of ``model`` (CPU, train mode)."""
    require_module(ctx, "qat")
    with quantized_engine(cfg.backend):
        return prepare_fake_quant(copy.deepcopy(model).cpu(), cfg, ctx, "qat")


def train(model: nn.Module, cfg: QATConfig, ctx: QuantContext, timings: dict[str, float]) -> Any:
    """Prepare, initialise the ranges on the calibration set, and fine-tune.

    Returns:
        The prepared model (fake quantizers in place, observers frozen), on the CPU.

    Raises:
        QuantizationError: no train split, or the loss diverged.
        ConfigError: kd asked for without a teacher, cuda asked for without CUDA.
    """
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats
    from torch.ao.quantization import disable_observer

    if ctx.train is None or len(ctx.train) == 0:  # type: ignore[arg-type]
        raise QuantizationError(f"qat: the dataset of {ctx.model_ref} has no train split to fine-tune on")
    loss_kind = cfg.loss if cfg.loss != "auto" else ("ce" if ctx.labelled else "kd")
    if loss_kind == "ce" and not ctx.labelled:
        raise ConfigError("qat loss ce needs labels, and this dataset has none; use loss kd (distil fp32 outputs)")
    device = train_device(cfg)
    prepared = prepare(model, cfg, ctx)

    started = time.perf_counter()
    calibrate(prepared, ctx, "calibrate")  # initial ranges from real samples, not from the first batch
    timings["calibrate"] = time.perf_counter() - started

    teacher = None
    if loss_kind == "kd":
        if ctx.teacher is None:
            raise ConfigError("qat loss kd needs the fp32 model as teacher")
        teacher = copy.deepcopy(ctx.teacher).to(device).eval()

    n = len(ctx.train)  # type: ignore[arg-type]
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.steps if cfg.steps is not None else per_epoch * (cfg.epochs or 1)
    prepared.to(device).train()
    optimizer = _optimizer(prepared, cfg)
    step = 0
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device == "cuda" else []):
        torch.manual_seed(ctx.seed)
        epoch = 0
        while step < total:
            for x, y in iterate(ctx.train, cfg.batch_size, shuffle_seed=ctx.seed * 1000 + epoch):
                ctx.check_stop()
                if cfg.freeze_observers_after is not None and step == cfg.freeze_observers_after:
                    prepared.apply(disable_observer)
                if cfg.freeze_bn_after is not None and step == cfg.freeze_bn_after:
                    prepared.apply(freeze_bn_stats)
                with compute_step(ctx.should_stop):  # pauses while another job on this host times its benchmark
                    loss = _step(prepared, teacher, optimizer, inputs.place(x, device), y, device, ctx.output)
                if not torch.isfinite(loss):
                    raise QuantizationError(
                        f"qat: the loss became {loss.item()} at step {step}; lower lr (now {cfg.lr})"
                    )
                step += 1
                ctx.progress("train", step / total)
                if step >= total:
                    break
            epoch += 1
    timings["train"] = time.perf_counter() - started
    prepared.apply(disable_observer)
    return prepared.cpu().eval()


def rebuild(model: nn.Module, cfg: QATConfig, ctx: QuantContext, state: dict[str, torch.Tensor]) -> Any:
    """A prepared model from a :func:`train` checkpoint (``prepared.state_dict()``) and the fp32 model.

    Raises:
        QuantizationError: the checkpoint does not fit the model and config.
    """
    from torch.ao.quantization import disable_observer

    prepared = prepare(model, cfg, ctx)
    try:
        prepared.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise QuantizationError(
            f"qat: checkpoint does not fit {ctx.model_ref}: {' '.join(str(e).split())[:300]}"
        ) from e
    prepared.apply(disable_observer)
    return prepared.eval()


def finish(prepared: Any, cfg: QATConfig, timings: dict[str, float]) -> QuantOutcome:
    """Convert a fine-tuned model: int8 kernels at 8 bits, the simulated model below."""
    prepared = prepared.cpu().eval()
    if cfg.bits < 8 or _simulated_layers(prepared):
        return QuantOutcome(
            prepared,
            device="cpu",
            simulated=True,
            packed_size_bytes=packed_size_bytes(prepared, cfg.bits, per_layer=bool(cfg.layers)),
            timings_s=timings,
        )
    from torch.ao.quantization.quantize_fx import convert_fx

    started = time.perf_counter()
    with quantized_engine(cfg.backend), compute_step():  # paused while another job on this host times
        converted = convert_fx(prepared, backend_config=backend_config(cfg.backend))
    timings["convert"] = time.perf_counter() - started
    return QuantOutcome(converted, device="cpu", engine=cfg.backend, timings_s=timings, warnings=engine_warnings(cfg))


def _simulated_layers(prepared: nn.Module) -> bool:
    """Whether a rule gave some layer fewer than 8 bits (its weight fake-quantizer's range is narrower than int8's):
    no int8 kernel runs it, so the model stays simulated as a whole."""
    return any(
        int(fq.quant_max) - int(fq.quant_min) < 255
        for m in prepared.modules()
        if (fq := getattr(m, "weight_fake_quant", None)) is not None and hasattr(fq, "quant_max")
    )


def apply_qat(model: nn.Module, cfg: QATConfig, ctx: QuantContext) -> QuantOutcome:
    if ctx.checkpoint is not None:  # fine-tuned elsewhere (a GPU worker): convert what it trained
        trained_for = ctx.checkpoint.get("method")
        if trained_for is not None and trained_for != cfg.to_dict():
            raise QuantizationError(
                f"qat: the checkpoint was fine-tuned for another config ({trained_for}), not this job's "
                f"({cfg.to_dict()}); its fake-quantizer ranges would not fit"
            )
        timings = {k: float(v) for k, v in ctx.checkpoint.get("timings", {}).items()}
        return finish(rebuild(model, cfg, ctx, ctx.checkpoint["state"]), cfg, timings)
    timings = {}
    return finish(train(model, cfg, ctx, timings), cfg, timings)


def _step(
    prepared: Any,
    teacher: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    x: inputs.Batch,
    y: Any,
    device: str,
    output: str | int | None = None,
) -> torch.Tensor:
    """One fine-tuning step: the loss (ce on labels, or kd against the teacher's outputs), and an update unless it
    is not finite. Both are computed on the model's ``output`` (:func:`farm.quant.inputs.select_output`)."""
    out = inputs.select_output(inputs.call(prepared, x), output)
    if teacher is not None:
        with torch.no_grad():
            target = torch.softmax(inputs.select_output(inputs.call(teacher, x), output).float(), dim=-1)
        loss = nn.functional.kl_div(torch.log_softmax(out.float(), dim=-1), target, reduction="batchmean")
    else:
        loss = nn.functional.cross_entropy(out, y.to(device))
    if torch.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss


def _optimizer(model: nn.Module, cfg: QATConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
