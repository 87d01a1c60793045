"""An ONNX Runtime session that the engine's measuring harness drives exactly like a ``QuantOutcome``.

:func:`farm.quant.measure.evaluate` and :mod:`farm.quant.latency` call ``prepare_input`` once per batch (outside
timing), then ``forward`` on what it returned, inside ``active()``. Here ``prepare_input`` builds the feed dict
of numpy arrays (each cast to the dtype the graph declares, so token ids stay integer) and ``forward`` runs the
session and returns torch tensors in the structure the torch model returned (one tensor, a tuple or a dict).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from farm.errors import QuantizationError
from farm.quant.inputs import Batch
from farm.runtimes.build import DeployedModel
from farm.runtimes.onnx_export import OUTPUTS_KEY, batch_inputs

#: graph_optimization_level names -> onnxruntime.GraphOptimizationLevel member names.
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
DEFAULT_PROVIDER = "CPUExecutionProvider"

# ONNX tensor type strings (as InferenceSession.get_inputs() reports them) -> numpy dtypes.
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def require_ort() -> Any:
    """The onnxruntime module, or a one-line QuantizationError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise QuantizationError(f"onnxruntime is not installed ({e}); pip install 'quantfarm[onnx]'") from e
    return onnxruntime


def open_session(
    path: str | Path | bytes,
    *,
    threads: int | None = None,
    optimization: str = "all",
    provider: str = DEFAULT_PROVIDER,
) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``path`` (or on a serialized model's bytes).

    Args:
        threads: intra-op threads; None: onnxruntime's default (one per physical core).
        optimization: graph optimization level: disable, basic, extended or all.
        provider: the execution provider.

    Raises:
        QuantizationError: an unknown optimization level, a provider this onnxruntime build lacks (the message
            lists those it has), or a file onnxruntime cannot load.
    """
    ort = require_ort()
    if optimization not in OPTIMIZATION_LEVELS:
        raise QuantizationError(
            f"unknown graph optimization level {optimization!r} (choose from {', '.join(OPTIMIZATION_LEVELS)})"
        )
    available = ort.get_available_providers()
    if provider not in available:
        raise QuantizationError(
            f"execution provider {provider!r} is not available in onnxruntime {ort.__version__} "
            f"(has: {', '.join(available)})"
        )
    if threads is not None and threads < 1:
        raise QuantizationError(f"threads must be at least 1, not {threads}")
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    source = path if isinstance(path, bytes) else str(path)
    try:
        return ort.InferenceSession(source, opts, providers=[provider])
    except Exception as e:
        text = " ".join(str(e).split())[:300]
        what = "the model" if isinstance(path, bytes) else str(path)
        raise QuantizationError(f"onnxruntime cannot load {what}: {type(e).__name__}: {text}") from e


def graph_inputs(session: Any) -> list[tuple[str, Any]]:
    """(name, numpy dtype) of each of the session's inputs, in order."""
    out = []
    for arg in session.get_inputs():
        if arg.type not in _NUMPY_TYPES:
            raise QuantizationError(f"input {arg.name!r} has type {arg.type}, which farm cannot feed")
        out.append((arg.name, _NUMPY_TYPES[arg.type]))
    return out


def make_feeds(batch: Batch, inputs: list[tuple[str, Any]]) -> dict[str, np.ndarray]:
    """The feed dict for a batch: a tensor or tuple fills the inputs in order, a dict by name; each array is
    contiguous, on the CPU and of the dtype the graph declares (integer inputs stay integer).

    Raises:
        QuantizationError: the batch does not match the graph's inputs (count or names).
    """
    names, tensors, by_key = batch_inputs(batch)
    wanted = [name for name, _ in inputs]
    if by_key:
        if sorted(names) != sorted(wanted):
            raise QuantizationError(f"batch has inputs {', '.join(names)}; the graph takes {', '.join(wanted)}")
        tensors = [tensors[names.index(name)] for name in wanted]
    elif len(tensors) != len(wanted):
        have = f"batch has {len(tensors)} input(s)"
        raise QuantizationError(f"{have}; the graph takes {len(wanted)}: {', '.join(wanted)}")
    return {
        name: np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype, copy=False))
        for (name, dtype), t in zip(inputs, tensors, strict=True)
    }


@dataclass(kw_only=True)
class OrtModel(DeployedModel):
    """An onnxruntime session that looks like a ``farm.quant.context.QuantOutcome`` to the measuring code.

    Attributes:
        model: the ``onnxruntime.InferenceSession``.
        inputs: (name, numpy dtype) of each graph input.
        output_names: the graph's outputs, in order.
        outputs: "tensor", "tuple" or "dict": the structure ``forward`` returns (from the file's metadata).
        the rest (device, dtypes, figures, active()): :class:`farm.runtimes.build.DeployedModel`.
    """

    model: Any
    inputs: list[tuple[str, Any]]
    output_names: list[str]
    outputs: str = "tensor"

    @classmethod
    def load(
        cls,
        path: str | Path | bytes,
        *,
        threads: int | None = None,
        optimization: str = "all",
        provider: str = DEFAULT_PROVIDER,
    ) -> OrtModel:
        """Open ``path`` (see :func:`open_session` for the arguments and errors)."""
        session = open_session(path, threads=threads, optimization=optimization, provider=provider)
        names = [o.name for o in session.get_outputs()]
        kind = session.get_modelmeta().custom_metadata_map.get(OUTPUTS_KEY)
        if kind not in ("tensor", "tuple", "dict"):  # a file farm did not export: one output or a tuple
            kind = "tensor" if len(names) == 1 else "tuple"
        return cls(model=session, inputs=graph_inputs(session), output_names=names, outputs=kind)

    def prepare_input(self, batch: Batch) -> dict[str, np.ndarray]:
        """The feed dict of numpy arrays for ``batch`` (done once, outside timing)."""
        return make_feeds(batch, self.inputs)

    def forward(self, feeds: dict[str, np.ndarray]) -> Any:
        """Run the session; the outputs as torch tensors, structured as the torch model returned them."""
        arrays = self.model.run(self.output_names, feeds)
        tensors = [torch.from_numpy(np.asarray(a)) for a in arrays]
        if self.outputs == "dict":
            return dict(zip(self.output_names, tensors, strict=True))
        if self.outputs == "tuple":
            return tuple(tensors)
        return tensors[0]


class OrtCallable:
    """An :class:`OrtModel` called like the torch module it was exported from: ``m(x)``, ``m(a, b)`` or
    ``m(input_ids=..., attention_mask=...)``; it returns torch tensors in the model's output structure (what
    :func:`farm.quant.artifact.load_artifact` returns for an ONNX artifact).

    Attributes:
        session: the :class:`OrtModel`.
    """

    def __init__(self, session: OrtModel) -> None:
        self.session = session

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the model on CPU tensors (or anything ``torch.as_tensor`` takes), positional or by name.

        Raises:
            QuantizationError: positional and keyword inputs mixed, or inputs that do not match the graph.
        """
        if args and kwargs:
            raise QuantizationError("call an ONNX model with positional inputs or keyword inputs, not both")
        if kwargs:
            batch: Batch = {k: torch.as_tensor(v) for k, v in kwargs.items()}
        elif len(args) == 1:
            batch = torch.as_tensor(args[0])
        else:
            batch = tuple(torch.as_tensor(a) for a in args)
        return self.session.forward(self.session.prepare_input(batch))

    def eval(self) -> OrtCallable:
        """Itself (a session has no training mode), so code written for a torch module runs unchanged."""
        return self
