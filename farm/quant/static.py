"""static: post-training quantization with calibration (torch.ao FX graph mode, or eager mode).

bits == 8: prepare, calibrate, convert: the model runs real int8 kernels of the chosen engine.
bits < 8: no int8 kernel exists, so the model is simulated: weights and activations pass through fake
quantizers with narrowed ranges (quant_min / quant_max), batch norm folded as it would be on conversion.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from farm.errors import QuantizationError
from farm.quant import inputs
from farm.quant.config import StaticConfig
from farm.quant.context import QuantContext, QuantOutcome, quantized_engine, require_module
from farm.quant.isolation import compute_step
from farm.quant.layer_list import layer_settings
from farm.quant.layers import LayerSetting
from farm.quant.qconfig import backend_config, build_qconfig, lower_bits, qconfig_mapping, saturation_warning
from farm.quant.size import packed_size_bytes
from farm.zoo.data import iterate


def untraceable(method: str, model_ref: str, error: BaseException) -> QuantizationError:
    """The error for a model that torch.fx cannot trace, with what would work instead."""
    detail = " ".join(str(error).split())[:240] or type(error).__name__
    return QuantizationError(
        f"{method}: torch.fx cannot trace {model_ref} ({type(error).__name__}: {detail}). "
        "What works without tracing: method 'dynamic' (Linear/LSTM/GRU only), or static with mode: eager "
        "after wrapping the quantized part of the model in QuantStub/DeQuantStub "
        "(see docs/methods.md, 'Models FX cannot trace')."
    )


def fx_prepare(method: str, ctx: QuantContext, build: Callable[[], Any]) -> Any:
    """Run a torch.ao FX prepare call, turning tracing failures into a useful error.

    ``build`` must do nothing but call prepare_fx / prepare_qat_fx on arguments built beforehand, so
    that any exception it raises comes from tracing the user's model.
    """
    try:
        with compute_step(ctx.should_stop), _no_stack_traces():  # compute: paused while another job times
            return build()
    except QuantizationError:
        raise
    except Exception as e:  # torch.fx raises TraceError, TypeError, NotImplementedError, ... when it can't trace
        raise untraceable(method, ctx.model_ref, e) from e


@contextlib.contextmanager
def _no_stack_traces() -> Iterator[None]:
    """torch.ao's tracer without per-node stack traces (``torch.fx.config.do_not_emit_stack_traces``): recording
    them symbolizes a traceback per node, and its first use imports torch._inductor and torch._dynamo, 0.9 s of each
    process's first static or QAT job. The quantized model is the same; only ``node.meta["stack_trace"]``, which
    nothing here reads, stays unset (an error raised while tracing still carries its own traceback)."""
    import torch.fx.config as fx_config

    before = fx_config.do_not_emit_stack_traces
    fx_config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        fx_config.do_not_emit_stack_traces = before


def example_args(batch: Any, model: nn.Module | None = None) -> tuple[Any, ...]:
    """torch.ao's ``example_inputs``: the positional arguments of one call. A dict's values go in the order of
    ``model.forward``'s parameters (a dataset may list ``attention_mask`` before ``input_ids``), else as listed."""
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if not isinstance(batch, dict):
        return tuple(batch)
    order = list(inspect.signature(model.forward).parameters) if model is not None else []
    names = [n for n in order if n in batch] + [n for n in batch if n not in order]
    return tuple(batch[n] for n in names)


def calibrate(model: nn.Module, ctx: QuantContext, phase: str = "calibrate") -> int:
    """Run the calibration subset through ``model`` (observers on); returns the number of samples seen."""
    if ctx.calibration is None:
        raise QuantizationError("no calibration data was given")
    total = len(ctx.calibration)  # type: ignore[arg-type]
    seen = 0
    model.eval()
    with torch.no_grad():
        for x, _ in iterate(ctx.calibration, ctx.batch_size):
            ctx.check_stop()
            with compute_step(ctx.should_stop):  # pauses while another job on this host times its benchmark
                inputs.call(model, x)
            seen += inputs.batch_len(x)
            ctx.progress(phase, seen / total)
    return seen


def apply_static(model: nn.Module, cfg: StaticConfig, ctx: QuantContext) -> QuantOutcome:
    require_module(ctx, "static")
    timings: dict[str, float] = {}
    example = example_args(ctx.example_input, model)
    with quantized_engine(cfg.backend):
        base = copy.deepcopy(model).cpu().eval()
        settings = layer_settings(base, "static", cfg.layers)
        if cfg.mode == "eager":
            return _eager(base, cfg, ctx, settings)
        if cfg.bits == 8 and not lower_bits(settings):
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

            mapping = qconfig_mapping(cfg, fake_quant=False, settings=settings)
            backend = backend_config(cfg.backend)
            prepared = fx_prepare(
                "static", ctx, lambda: prepare_fx(base, mapping, example_inputs=example, backend_config=backend)
            )
            started = time.perf_counter()
            calibrate(prepared, ctx)
            timings["calibrate"] = time.perf_counter() - started
            started = time.perf_counter()
            with compute_step(ctx.should_stop):
                converted = convert_fx(prepared, backend_config=backend)
            timings["convert"] = time.perf_counter() - started
            return QuantOutcome(
                converted, device="cpu", engine=cfg.backend, timings_s=timings, warnings=engine_warnings(cfg)
            )
        simulated = simulate(base, cfg, ctx, timings)
        return QuantOutcome(
            simulated,
            device="cpu",
            simulated=True,
            packed_size_bytes=packed_size_bytes(simulated, cfg.bits, per_layer=bool(cfg.layers)),
            timings_s=timings,
        )


def prepare_fake_quant(model: nn.Module, cfg: Any, ctx: QuantContext, method: str) -> Any:
    """Insert fake quantizers for ``cfg`` (QAT-style modules: batch norm folded into the weights); the layers
    ``cfg.layers`` keeps in floating point get none, those it overrides their own."""
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    settings = layer_settings(model, method, cfg.layers)
    mapping, backend = qconfig_mapping(cfg, fake_quant=True, settings=settings), backend_config(cfg.backend)
    model.train()  # prepare_qat_fx swaps in QAT modules, which it only does for models in train mode
    example = example_args(ctx.example_input, model)
    return fx_prepare(
        method, ctx, lambda: prepare_qat_fx(model, mapping, example_inputs=example, backend_config=backend)
    )


def simulate(model: nn.Module, cfg: Any, ctx: QuantContext, timings: dict[str, float]) -> Any:
    """Fake-quantize ``model`` at ``cfg.bits`` bits, calibrate its ranges and freeze them."""
    from torch.ao.quantization import disable_observer

    prepared = prepare_fake_quant(model, cfg, ctx, cfg.method)
    started = time.perf_counter()
    calibrate(prepared, ctx)
    timings["calibrate"] = time.perf_counter() - started
    prepared.apply(disable_observer)
    return prepared.eval()


def _eager(model: nn.Module, cfg: StaticConfig, ctx: QuantContext, settings: dict[str, LayerSetting]) -> QuantOutcome:
    from torch.ao.quantization import QuantStub, convert, prepare

    if not any(isinstance(m, QuantStub) for m in model.modules()):
        raise QuantizationError(
            f"static mode eager: {ctx.model_ref} has no QuantStub; eager mode quantizes what lies between "
            "QuantStub and DeQuantStub in the model's forward. Add them, or use mode fx."
        )
    timings: dict[str, float] = {}
    fuse = getattr(model, "fuse_model", None)
    if callable(fuse):
        fuse()
    model.qconfig = build_qconfig(cfg, fake_quant=False)  # type: ignore[assignment]
    modules = dict(model.named_modules())
    for name, setting in settings.items():  # a module's own qconfig wins over its parent's in eager prepare
        qconfig = None if setting.skip else build_qconfig(cfg, fake_quant=False, setting=setting)
        modules[name].qconfig = qconfig  # type: ignore[assignment]
    prepared = prepare(model, inplace=False)
    started = time.perf_counter()
    calibrate(prepared, ctx)
    timings["calibrate"] = time.perf_counter() - started
    started = time.perf_counter()
    converted = convert(prepared, inplace=False)
    timings["convert"] = time.perf_counter() - started
    return QuantOutcome(converted, device="cpu", engine=cfg.backend, timings_s=timings, warnings=engine_warnings(cfg))


def engine_warnings(cfg: Any) -> list[str]:
    """What the user must know about running ``cfg``'s int8 model on this machine's kernels."""
    warning = saturation_warning(cfg)
    return [warning] if warning else []


def is_int8_runnable(model: nn.Module) -> bool:
    """Whether ``model`` holds at least one real quantized module (int8 kernels)."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())
