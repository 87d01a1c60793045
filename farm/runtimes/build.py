"""What building a model for a runtime other than torch yields: the deployed model, the same runtime's fp32
baseline it is timed against, the artifact files and what the runtime says about them.

Each runtime module (``farm.runtimes.ort_build``, ``farm.runtimes.openvino``, ``farm.runtimes.tensorrt``) provides
``build(model, cfg, ctx, workdir) -> RuntimeBuild``; :mod:`farm.runtimes.engine` picks one by ``cfg.runtime``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from farm.errors import QuantizationError


@dataclass(kw_only=True)
class DeployedModel:
    """What the measuring code reads of a :class:`farm.quant.context.QuantOutcome`, for a model that a runtime
    other than torch runs (:class:`farm.runtimes.ort.OrtModel`, ``OvModel``, ``TrtModel``): fixed settings, the
    figures a method fills in, an :meth:`active` with nothing to set (the runtime carries its own settings) and an
    :meth:`as_loaded` with nothing to reload.
    Subclasses add the model, ``prepare_input`` and ``forward``.
    """

    device: str = "cpu"
    input_dtype: torch.dtype = torch.float32
    autocast_dtype: torch.dtype | None = None
    engine: str | None = None
    simulated: bool = False
    coverage: Any = None
    packed_size_bytes: int | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Nothing to set: the session, compiled model or engine carries its own settings."""
        yield

    def as_loaded(self) -> DeployedModel:
        """Itself: a session, compiled model or engine does not specialise to the shapes it ran (cf.
        :meth:`farm.quant.context.QuantOutcome.as_loaded`)."""
        return self


@dataclass
class RuntimeBuild:
    """A model built for a deploy runtime.

    Attributes:
        outcome: the model as deployed, driven like :class:`farm.quant.context.QuantOutcome` (``device``,
            ``simulated``, ``engine``, ``autocast_dtype``, ``input_dtype``, ``model``, ``prepare_input(batch)``,
            ``forward(prepared)``, ``active()``), so :func:`farm.quant.measure.evaluate` and the latency harness
            drive it unchanged.
        baseline: the same runtime's fp32 model, same interface: a trial is timed side by side with it. None when
            the job is that fp32 model itself.
        files: the artifact's files, in ``workdir`` (``model.onnx``; ``model.xml`` + ``model.bin``; ``model.plan``).
        size_bytes: what the deployed model weighs (the files' bytes).
        coverage: quantized share: {"params": f, "macs": f or None, "layers": n, "layers_total": n}; None for fp.
        info: what the manifest and the results record: ``runtime``, ``runtime_version``, ``execution_provider``,
            ``opset``, ``exporter`` and the runtime's own recipe details.
        warnings: things the user must see beside the figures.
        timings_s: wall time of the runtime's own steps (export, calibrate, quantize, compile).
    """

    outcome: Any
    baseline: Any
    files: list[Path]
    size_bytes: int
    coverage: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


def calibration_batches(ctx: Any) -> list[Any]:
    """The job's calibration subset in the batches torch calibration reads (``ctx.batch_size``, in order): every
    runtime calibrates on the same samples in the same batches. A list, as a calibrator may read it twice.

    Raises:
        QuantizationError: the job has no calibration subset.
    """
    from farm.zoo.data import iterate

    if ctx.calibration is None or len(ctx.calibration) == 0:
        raise QuantizationError("static quantization needs calibration batches; none were given")
    return [x for x, _ in iterate(ctx.calibration, ctx.batch_size)]
