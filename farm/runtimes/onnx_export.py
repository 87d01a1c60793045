"""Export a torch model to an ONNX file: a tensor, tuple or dict batch in, every output (or one) out.

The TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) is used: the dynamo exporter needs the
``onnxscript`` package, which the ``onnx`` extra does not install, and it fails on models the tracer handles.
Every input and output gets a dynamic batch axis (dim 0); integer inputs (token ids, masks) stay integer in the
graph. The output structure (one tensor, a tuple, or a dict) is recorded in the file's metadata under
:data:`OUTPUTS_KEY` so that :class:`farm.runtimes.ort.OrtModel` hands back the same structure the torch model
returns, and ``select_output`` picks the same tensor from both.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from farm.errors import QuantizationError
from farm.quant.inputs import Batch, select_output

#: Metadata key holding how the outputs are structured: "tensor", "tuple" or "dict".
OUTPUTS_KEY = "farm.outputs"
#: The exporter this module uses.
EXPORTER = "torchscript"


@dataclass(frozen=True)
class ExportInfo:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the .onnx file.
        opset: the default-domain opset of the graph.
        input_names, output_names: the graph's inputs and outputs, in order.
        input_dtypes: each input's torch dtype name ("float32", "int64", ...).
        outputs: "tensor", "tuple" or "dict": how the model's outputs are structured.
        exporter: "torchscript" (``dynamo=False``).
        torch_version, onnx_version: the packages that wrote the file.
        size_bytes: the file's size.
    """

    path: str
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_dtypes: tuple[str, ...]
    outputs: str
    exporter: str
    torch_version: str
    onnx_version: str
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def batch_inputs(batch: Batch) -> tuple[list[str], list[torch.Tensor], bool]:
    """A batch as (input names, tensors, is a dict): "input" for one tensor, "input_0".. for a tuple, keys for a dict.

    Raises:
        QuantizationError: the batch is not a tensor, a tuple/list of tensors or a dict of tensors.
    """
    if isinstance(batch, torch.Tensor):
        return ["input"], [batch], False
    if isinstance(batch, Mapping):
        items = list(batch.items())
        if items and all(isinstance(v, torch.Tensor) for _, v in items):
            return [str(k) for k, _ in items], [v for _, v in items], True
    elif isinstance(batch, Sequence) and batch and all(isinstance(v, torch.Tensor) for v in batch):
        return [f"input_{i}" for i in range(len(batch))], list(batch), False
    raise QuantizationError(
        f"a batch must be a tensor, a tuple of tensors or a dict of tensors, not {type(batch).__name__}"
    )


def _output_structure(out: Any) -> tuple[str, list[str]]:
    """("tensor" | "tuple" | "dict", output names) of a model's return value."""
    if isinstance(out, torch.Tensor):
        return "tensor", ["output"]
    if isinstance(out, Mapping) and all(isinstance(v, torch.Tensor) for v in out.values()):
        return "dict", [str(k) for k in out]
    if isinstance(out, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in out):
        return "tuple", [f"output_{i}" for i in range(len(out))]
    raise QuantizationError(
        f"cannot export outputs of type {type(out).__name__} (nested or not tensors); pick one tensor with output="
    )


def _call(model: nn.Module, keys: list[str] | None, tensors: Sequence[torch.Tensor]) -> Any:
    return model(*tensors) if keys is None else model(**dict(zip(keys, tensors, strict=True)))


class _Flat(nn.Module):
    """The model called the way its batch asks (positional or by keyword), returning a flat tuple of tensors."""

    def __init__(self, model: nn.Module, keys: list[str] | None, output: str | int | None) -> None:
        super().__init__()
        self.model, self.keys, self.output = model, keys, output

    def forward(self, *tensors: torch.Tensor) -> Any:
        out = _call(self.model, self.keys, tensors)
        if self.output is not None:
            return select_output(out, self.output)
        return tuple(out.values()) if isinstance(out, Mapping) else out


def export_onnx(
    model: nn.Module,
    example: Batch,
    path: str | Path,
    *,
    opset: int | None = None,
    output: str | int | None = None,
) -> ExportInfo:
    """Export ``model`` (in eval mode, on CPU) to ``path`` with a dynamic batch axis on every input and output.

    Args:
        model: the fp32 model.
        example: one batch it takes (a tensor, a tuple of tensors or a dict of tensors); traced once.
        path: where the .onnx file goes.
        opset: the ONNX opset; None: the exporter's default.
        output: export only this output (a dict key / attribute, or a tuple index), as
            :func:`farm.quant.inputs.select_output` picks it; None: every output.

    Returns:
        The opset used, the input and output names, versions and the file's size.

    Raises:
        QuantizationError: in one line, the exporter's complaint (the op and opset where it names them), a batch
            or output that cannot be exported, or onnx not installed.
    """
    onnx = _require_onnx()
    names, tensors, by_key = batch_inputs(example)
    model = model.eval()
    with torch.no_grad():
        returned = _call(model, names if by_key else None, tensors)
    if output is not None:
        select_output(returned, output)  # an unknown output fails here, in one line, not inside the tracer
    kind, out_names = ("tensor", [str(output)]) if output is not None else _output_structure(returned)
    axes = {name: {0: "batch"} for name in [*names, *out_names]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer chatter
            torch.onnx.export(
                _Flat(model, names if by_key else None, output).eval(),  # a new module is in training mode
                tuple(tensors),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=names,
                output_names=out_names,
                dynamic_axes=axes,
            )
    except QuantizationError:
        raise
    except Exception as e:
        raise QuantizationError(_export_error(e, opset)) from e
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {OUTPUTS_KEY: kind})
    onnx.save(proto, str(path))
    used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset or 0)
    return ExportInfo(
        path=str(path),
        opset=int(used),
        input_names=tuple(names),
        output_names=tuple(out_names),
        input_dtypes=tuple(str(t.dtype).removeprefix("torch.") for t in tensors),
        outputs=kind,
        exporter=EXPORTER,
        torch_version=torch.__version__,
        onnx_version=onnx.__version__,
        size_bytes=path.stat().st_size,
    )


def _export_error(e: Exception, opset: int | None) -> str:
    """The exporter's complaint in one line, naming the op and opset where it says them."""
    text = str(e)
    found = re.search(r"operator '([^']+)' to ONNX opset version (\d+)", text)
    if found:
        return f"ONNX export failed: {found.group(1)} has no ONNX export at opset {found.group(2)} ({type(e).__name__})"
    first = " ".join(text.strip().splitlines()[0].split())[:300] if text.strip() else type(e).__name__
    at = f"opset {opset}" if opset is not None else "the exporter's default opset"
    return f"ONNX export failed at {at}: {type(e).__name__}: {first}"


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError as e:
        raise QuantizationError(f"the onnx package is not installed ({e}); pip install 'quantfarm[onnx]'") from e
    return onnx
