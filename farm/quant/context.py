"""What a method handler is given and what it returns, and the torch settings it runs under.

Every handler module imports this one; the table of handlers (:mod:`farm.quant.registry`) imports the handler
modules. Nothing here knows which methods exist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import pickle
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from farm.errors import Cancelled, QuantizationError
from farm.quant import inputs
from farm.quant.coverage import Coverage
from farm.quant.inputs import Batch

ProgressFn = Callable[[str, float | None], None]


def _no_progress(step: str, fraction: float | None) -> None:
    return None


def _never() -> bool:
    return False


@dataclass
class QuantContext:
    """What a handler may use besides the model and its config.

    Attributes:
        model_ref: the model's reference, for error messages.
        example_input: one real input batch (CPU; a tensor, tuple or dict of tensors) for tracing.
        device: where the quantized model will be evaluated and benchmarked ("cpu" or "cuda").
        calibration: the calibration subset (already drawn), or None when the method needs none.
        train: the train split (QAT), or None.
        labelled: whether the splits carry real labels.
        teacher: the fp32 model, for distillation when there are no labels.
        seed: the job's seed.
        output: which of the model's outputs metrics and distillation use (:func:`farm.quant.inputs.select_output`).
        graph: the model is a serialized graph that torch.ao cannot rewrite.
        progress: called with (phase, fraction done).
        should_stop: polled in long loops; True cancels the job.
    """

    model_ref: str
    example_input: Batch
    device: str = "cpu"
    calibration: Dataset | None = None
    train: Dataset | None = None
    labelled: bool = True
    teacher: nn.Module | None = None
    seed: int = 0
    graph: bool = False
    output: str | int | None = None
    batch_size: int = 32
    #: A QAT fine-tuning checkpoint from another worker: {"state": state_dict, "timings": {...}}.
    checkpoint: dict[str, Any] | None = None
    progress: ProgressFn = _no_progress
    should_stop: Callable[[], bool] = _never

    def check_stop(self) -> None:
        if self.should_stop():
            raise Cancelled("cancelled")


@dataclass
class QuantOutcome:
    """A model ready to evaluate, and what the method learned about it.

    Attributes:
        model: the model to evaluate.
        device: where it runs.
        input_dtype: dtype its floating-point inputs must be cast to (integer inputs keep theirs).
        autocast_dtype: run under torch.autocast with this dtype, or None.
        engine: torch.backends.quantized.engine to set while it runs (int8 models).
        simulated: figures come from fake quantization, not real low-bit kernels.
        coverage: the fraction of parameters and MACs that ended up quantized or reduced.
        packed_size_bytes: for simulated models, bits x parameters / 8 plus scales and zero points.
        timings_s: wall time of the method's own steps (calibrate, train, convert).
        warnings: things the user must see next to the numbers.
    """

    model: nn.Module
    device: str = "cpu"
    input_dtype: torch.dtype = torch.float32
    autocast_dtype: torch.dtype | None = None
    engine: str | None = None
    simulated: bool = False
    coverage: Coverage | None = None
    packed_size_bytes: int | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def prepare_input(self, x: Batch) -> Batch:
        """Place a CPU batch the way the model expects it (done once, outside timing): floating-point inputs are
        cast to ``input_dtype``, token ids and masks keep their integer dtype."""
        return inputs.place(x, self.device, self.input_dtype)

    def forward(self, x: Batch) -> Any:
        """Run the model on a prepared batch (``model(x)``, ``model(*x)`` or ``model(**x)``), under autocast when
        the method asks for it."""
        if self.autocast_dtype is not None:
            with torch.autocast(device_type=self.device.split(":")[0], dtype=self.autocast_dtype):
                return inputs.call(self.model, x)
        return inputs.call(self.model, x)

    def as_loaded(self) -> QuantOutcome:
        """This outcome with its TorchScript module reloaded from its own bytes, as a user's ``torch.jit.load`` of
        the artifact gives it (what a benchmark times); a module that is not TorchScript comes back as it is.

        TorchScript's profiling executor specialises a module to the shapes of its first calls and later runs
        other shapes on fallback paths: a digits CNN's frozen int8 form that had verified on a batch of 2 and
        evaluated batches of 64 ran batch 8 at 0.20 ms, its saved artifact at 0.125 ms (1 thread, AMD EPYC Zen 5).
        """
        if not isinstance(self.model, torch.jit.ScriptModule):
            return self
        buffer = io.BytesIO()
        try:
            torch.jit.save(self.model, buffer)
            buffer.seek(0)
            loaded = torch.jit.load(buffer, map_location=self.device)
        except (RuntimeError, pickle.PicklingError) as exc:  # a module TorchScript cannot serialize: as it is
            logging.getLogger(__name__).warning("timing the module as it is: it cannot be reloaded (%s)", exc)
            return self
        return dataclasses.replace(self, model=loaded)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Set the quantized engine the model was built for while it runs."""
        with quantized_engine(self.engine):
            yield


@contextlib.contextmanager
def quantized_engine(engine: str | None) -> Iterator[None]:
    """Temporarily set ``torch.backends.quantized.engine``."""
    if engine is None:
        yield
        return
    if engine not in torch.backends.quantized.supported_engines:
        supported = ", ".join(e for e in torch.backends.quantized.supported_engines if e != "none")
        raise QuantizationError(f"quantized engine {engine!r} is not available in this torch build (has: {supported})")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@contextlib.contextmanager
def quiet_torch_ao() -> Iterator[None]:
    """Silence torch.ao's deprecation chatter; our own docs say which APIs we use and why."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=".*must run observer before calling calculate_qparams.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def require_module(ctx: QuantContext, method: str) -> None:
    """Refuse serialized graphs, which torch.ao's module-rewriting flows cannot quantize."""
    if ctx.graph:
        raise QuantizationError(
            f"{method}: {ctx.model_ref} is a serialized graph (TorchScript or torch.export), which torch.ao "
            "quantization cannot rewrite; give the model as an nn.Module instead (torchvision:NAME with weights, "
            "or entrypoint:package.module:function). fp32, bf16 and fp16 work on graph files."
        )
