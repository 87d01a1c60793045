"""OpenVINO on CPU: a torch model converted to an OpenVINO model, quantized with NNCF, compiled for the CPU plugin.

fp32: ``ov.convert_model`` traced on the job's example batch, compiled with fp32 precision and the job's threads.
static: ``nncf.quantize`` (FakeQuantize nodes the CPU plugin runs as int8 kernels) calibrated on the batches the
torch methods calibrate on. dynamic: OpenVINO has no ONNX-Runtime-style dynamic quantization; what runs is NNCF's
int8 weight compression (MatMul and embedding weights; NNCF 3.x compresses Convolution weights too).
The artifact is the IR (model.xml + model.bin). docs/runtimes.md ("OpenVINO") says why each setting is what it is.
openvino and nncf are imported only inside functions (:func:`require_openvino` first: without them a build fails in
one line naming the extra, and their usage telemetry is declined before either can send an event).
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from farm.errors import QuantizationError
from farm.quant.inputs import Batch
from farm.quant.isolation import compute_step
from farm.runtimes.build import DeployedModel, RuntimeBuild, calibration_batches
from farm.runtimes.layer_plan import layer_plan
from farm.runtimes.onnx_export import batch_inputs
from farm.runtimes.openvino_layers import ignored_names
from farm.runtimes.openvino_quantize import check_static, compress_weights, quantize_static
from farm.runtimes.ort import make_feeds
from farm.runtimes.registry import runtime_problems, unavailable
from farm.runtimes.vendor_telemetry import decline as decline_telemetry

#: The OpenVINO device every model is compiled for.
DEVICE = "CPU"


def preload() -> Iterator[None]:
    """What a process's first OpenVINO job imports and initialises, a step per ``yield`` (a timing waiting for the
    host goes first between two): OpenVINO (its telemetry declined) with its PyTorch frontend and CPU core, NNCF's
    OpenVINO quantization path, and ONNX (NNCF imports it to tell backends apart). Measured on digits-cnn: the first
    static build 1.73 s without it, 0.61 s after it (later ones 0.4-0.5 s)."""
    ov = require_openvino(nncf=True)
    yield
    import nncf.openvino.quantization.quantize_model  # noqa: F401

    yield
    import onnx  # noqa: F401

    yield
    import openvino.frontend.pytorch  # noqa: F401

    ov.Core()


def require_openvino(*, nncf: bool = False) -> Any:
    """The openvino module (nncf too must be there, when asked), or one QuantizationError line naming the extra;
    OpenVINO's and NNCF's usage telemetry declined in this process first (farm.runtimes.vendor_telemetry)."""
    decline_telemetry()
    reason = unavailable("openvino")
    if reason is not None and (nncf or importlib.util.find_spec("openvino") is None):
        raise QuantizationError(reason)
    try:
        import openvino
    except ImportError as e:  # present but broken (a missing shared library)
        raise QuantizationError(f"openvino cannot be imported ({e}); pip install 'quantfarm[openvino]'") from e
    return openvino


@dataclass(frozen=True)
class Signature:
    """How the converted model is called: input names in order (a dict batch's keys), whether the batch is a dict,
    the output structure ("tensor", "tuple" or "dict") and the output names."""

    input_names: tuple[str, ...]
    by_key: bool
    outputs: str
    output_names: tuple[str, ...]


class _Positional(nn.Module):
    """The model called with its inputs as positional tensors (by keyword for a dict batch), returning one tensor
    or a flat tuple: the form ``ov.convert_model`` traces."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...] | None) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tensors: torch.Tensor) -> Any:
        out = self.model(*tensors) if self.keys is None else self.model(**dict(zip(self.keys, tensors, strict=True)))
        return tuple(out.values()) if isinstance(out, Mapping) else out


def _structure(out: Any) -> tuple[str, tuple[str, ...]]:
    if isinstance(out, torch.Tensor):
        return "tensor", ("output",)
    if isinstance(out, Mapping) and out and all(isinstance(v, torch.Tensor) for v in out.values()):
        return "dict", tuple(str(k) for k in out)
    if isinstance(out, (tuple, list)) and out and all(isinstance(v, torch.Tensor) for v in out):
        return "tuple", tuple(f"output_{i}" for i in range(len(out)))
    raise QuantizationError(f"OpenVINO cannot take outputs of type {type(out).__name__} (nested or not tensors)")


def convert(model: nn.Module, example: Batch, *, model_ref: str = "the model") -> tuple[Any, Signature]:
    """``ov.convert_model`` of ``model`` traced on ``example`` (a tensor, tuple or dict batch).

    Raises:
        QuantizationError: openvino missing, a batch or output structure it cannot take, or the converter failing
            (its first line).
    """
    ov = require_openvino()
    names, tensors, by_key = batch_inputs(example)
    model = model.eval()
    with torch.no_grad():
        returned = model(**dict(zip(names, tensors, strict=True))) if by_key else model(*tensors)
    kind, out_names = _structure(returned)
    wrapper = _Positional(model, tuple(names) if by_key else None).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer chatter
            converted = ov.convert_model(_decoder(wrapper, tuple(tensors)), example_input=tuple(tensors))
    except Exception as e:
        raise QuantizationError(f"OpenVINO cannot convert {model_ref}: {_one_line(e)}") from e
    return converted, Signature(tuple(names), by_key, kind, out_names)


def _decoder(wrapper: nn.Module, tensors: tuple[torch.Tensor, ...]) -> Any:
    """What ``ov.convert_model`` is given: OpenVINO's TorchScript decoder of ``wrapper``, traced on ``tensors``
    without ``torch.jit.trace``'s check (``check_trace=False``), or ``wrapper`` itself where this OpenVINO has no
    such decoder (it then traces the same way, checking).

    The check traces the model a second time and runs both traces to compare them, only to warn (the warnings are
    silenced here), and its comparison imports torch.distributed.tensor: 0.64 s of each process's first OpenVINO
    job. The decoder is the one ``ov.convert_model`` builds itself for a module (same example input, weights
    shared): the IR is the same (tested)."""
    try:
        from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder
    except ImportError:
        return wrapper
    return TorchScriptPythonDecoder(wrapper, example_input=tensors, trace_kwargs={"check_trace": False})


def compile_config(threads: int | None) -> dict[str, Any]:
    """The CPU plugin's properties: fp32 precision (no silent bf16), latency mode, and the threads when given."""
    if threads is not None and threads < 1:
        raise QuantizationError(f"threads must be at least 1, not {threads}")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


@dataclass(kw_only=True)
class OvModel(DeployedModel):
    """A compiled OpenVINO model that looks like a ``farm.quant.context.QuantOutcome`` to the measuring code.

    Attributes:
        model: the ``openvino.CompiledModel``.
        request: the infer request ``forward`` runs (one, reused: no per-call allocation).
        inputs: (name, numpy dtype) of each model input, in order.
        bound: the arrays the request's input tensors share memory with (``forward``'s last inputs, or copies of
            those it could not share).
        signature: input and output names and the output structure ``forward`` returns.
        the rest (device, dtypes, figures, active()): :class:`farm.runtimes.build.DeployedModel`.
    """

    model: Any
    request: Any
    inputs: list[tuple[str, Any]]
    signature: Signature
    bound: list[np.ndarray] = field(default_factory=list, repr=False)

    @classmethod
    def compile(cls, ov_model: Any, signature: Signature, *, threads: int | None = None) -> OvModel:
        """Compile ``ov_model`` for the CPU plugin (see :func:`compile_config`).

        Raises:
            QuantizationError: bad threads, or the plugin refusing the model (one line).
        """
        ov = require_openvino()
        config = compile_config(threads)
        try:
            compiled = ov.Core().compile_model(ov_model, DEVICE, config)
        except Exception as e:
            raise QuantizationError(f"OpenVINO cannot compile the model for {DEVICE}: {_one_line(e)}") from e
        dtypes = [_dtype(port) for port in compiled.inputs]
        if len(dtypes) != len(signature.input_names):
            raise QuantizationError(
                f"the converted model takes {len(dtypes)} input(s); the batch has {len(signature.input_names)}"
            )
        inputs = list(zip(signature.input_names, dtypes, strict=True))
        return cls(model=compiled, request=compiled.create_infer_request(), inputs=inputs, signature=signature)

    def prepare_input(self, batch: Batch) -> list[np.ndarray]:
        """The batch as contiguous numpy arrays in the model's input order, each of the dtype the model declares
        (token ids stay integer; a dict batch is matched by key). Done once, outside timing."""
        return list(make_feeds(batch, self.inputs).values())

    def forward(self, arrays: list[np.ndarray]) -> Any:
        """Run the model; the outputs as torch tensors, structured as the torch model returned them.

        The request's input tensors share memory with ``arrays``, bound when they change (:meth:`_bind`), and it
        runs with no arguments, as OpenVINO's benchmark_app runs a request: ``request.infer(arrays)`` dispatches its
        inputs in Python and pybind11 on every call, on a path that throws and catches C++ exceptions whose
        unwinding costs more with every shared library in the process. On digits-cnn's per-channel int8 IR, batch
        8, one thread (a Xeon with AMX; ``python bench/openvino_call.py``): 0.097 ms a call bound; 1.40x that
        through ``infer(arrays)`` with torch and OpenVINO loaded, 2.12x once onnxruntime was imported too, as in a
        worker that had run an ONNX Runtime job — a job's figure moved with the jobs its worker ran before.
        """
        self._bind(arrays)
        self.request.infer()
        # The output tensors are the request's own buffers, overwritten by its next run: copied out
        tensors = [
            torch.from_numpy(self.request.get_output_tensor(i).data.copy())
            for i in range(len(self.signature.output_names))
        ]
        if self.signature.outputs == "dict":
            return dict(zip(self.signature.output_names, tensors, strict=True))
        if self.signature.outputs == "tuple":
            return tuple(tensors)
        return tensors[0]

    def _bind(self, arrays: list[np.ndarray]) -> None:
        """Share the request's input tensors with ``arrays`` unless they are the arrays already bound (the
        latency harness runs one prepared batch over and over; evaluation binds each batch once), so that changes
        made to them in place are what the request reads. An array the request cannot share (not contiguous, not
        of the dtype the model declares, read-only: never one :meth:`prepare_input` made) is bound as a copy, again
        on every call. What is bound is kept alive here for as long as the request reads it."""
        if len(arrays) == len(self.bound) and all(a is b for a, b in zip(arrays, self.bound, strict=True)):
            return  # a copy is never the caller's array: it is bound again
        ov = require_openvino()
        self.bound = []  # nothing is reused while the request holds a mix of old and new inputs
        bound = [_shareable(array, dtype) for array, (_, dtype) in zip(arrays, self.inputs, strict=True)]
        for i, shared in enumerate(bound):
            self.request.set_input_tensor(i, ov.Tensor(shared, shared_memory=True))
        self.bound = bound


def _shareable(array: np.ndarray, dtype: Any) -> np.ndarray:
    """``array`` itself where an OpenVINO tensor can share its memory (contiguous, of ``dtype``, writable), else a
    copy that can."""
    out = np.ascontiguousarray(array, dtype=dtype)
    return out if out.flags.writeable else out.copy()


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def build(model: nn.Module, cfg: Any, ctx: Any, workdir: str | Path, *, threads: int | None = None) -> RuntimeBuild:
    """Build ``model`` for OpenVINO on CPU as ``cfg`` asks (fp32, static or dynamic; see the module docstring).

    Args:
        model: the fp32 torch model.
        cfg: the method config (``cfg.method``; static's bits, observer, granularity, activation, calibration_size).
        ctx: the job's :class:`farm.quant.context.QuantContext` (example_input, calibration, batch_size, model_ref).
        workdir: where model.xml and model.bin are written.
        threads: the CPU plugin's INFERENCE_NUM_THREADS (the job's benchmark threads); None: the plugin's default.

    Returns:
        The compiled model, the compiled fp32 model it is timed against (None for fp32), the IR files, the
        coverage (None for fp32) and what the manifest records.

    Raises:
        QuantizationError: one line: openvino / nncf missing (naming the extra), a method OpenVINO cannot run, a
            conversion, quantization or compilation failure, dynamic finding no weight to compress.
    """
    problems = runtime_problems("openvino", cfg.method)
    if problems:
        raise QuantizationError(problems[0].message)
    ov = require_openvino(nncf=cfg.method != "fp32")
    compile_config(threads)  # what can be refused is refused before the model is converted
    plan = layer_plan(model, cfg, "openvino")
    batches: list[Batch] = []
    if cfg.method == "static":
        check_static(cfg)
        batches = calibration_batches(ctx)
    timings: dict[str, float] = {}
    # Converting (a trace), NNCF's calibration and compiling compute: each holds the host's measurement lock
    # shared, so it waits while another job on this host times exclusively (farm.quant.isolation).
    began = time.perf_counter()
    with compute_step(ctx.should_stop):
        fp32, signature = convert(model, ctx.example_input, model_ref=ctx.model_ref)
    timings["convert"] = time.perf_counter() - began
    ctx.check_stop()
    deployed, coverage, baseline = fp32, None, None
    recipe: dict[str, Any] = {}
    if cfg.method != "fp32":
        began = time.perf_counter()
        with compute_step(ctx.should_stop):
            ignored = ignored_names(fp32, model, plan.layers, plan.settings) if plan.settings else []
            deployed, recipe, coverage = _quantize(fp32, signature, cfg, batches, ctx, ignored)
        recipe.update({**plan.details(), "ignored_scope": ignored} if plan.rules else {})
        timings["quantize"] = time.perf_counter() - began
        with compute_step(ctx.should_stop):
            baseline = OvModel.compile(fp32, signature, threads=threads)
        recipe["nncf_version"] = _version("nncf")
    began = time.perf_counter()
    with compute_step(ctx.should_stop):
        outcome = OvModel.compile(deployed, signature, threads=threads)
    timings["compile"] = time.perf_counter() - began
    outcome.timings_s = dict(timings)
    files = save_ir(ov, deployed, Path(workdir) / "model.xml")
    info = {
        "runtime": "openvino",
        "runtime_version": _version("openvino"),
        "execution_provider": DEVICE,
        "opset": None,
        "exporter": "openvino.convert_model",
        "outputs": signature.outputs,
        "input_names": list(signature.input_names),
        "output_names": list(signature.output_names),
        "compile_config": compile_config(threads),
        **recipe,
    }
    dynamic_per_tensor = cfg.method == "dynamic" and getattr(cfg, "granularity", "") == "per_tensor"
    notes = [PER_CHANNEL_NOTE] if dynamic_per_tensor else []
    size = sum(f.stat().st_size for f in files)
    return RuntimeBuild(outcome, baseline, files, size, coverage, info, notes, timings)


#: Why a dynamic job's granularity per_tensor is not what OpenVINO ran.
PER_CHANNEL_NOTE = "OpenVINO's int8 weight compression scales weights per output channel: granularity per_tensor n/a"


def _quantize(
    fp32: Any, signature: Signature, cfg: Any, batches: list[Batch], ctx: Any, ignored: list[str]
) -> tuple[Any, dict, dict]:
    """The static or dynamic model (the ``ignored`` nodes left fp32), its recipe and its coverage."""
    from farm.runtimes.openvino_coverage import ov_coverage

    if cfg.method == "static":
        inputs = [(name, _dtype(port)) for name, port in zip(signature.input_names, fp32.inputs, strict=True)]
        deployed, recipe = quantize_static(fp32, cfg, batches, inputs, ignored, ctx.should_stop)
    else:
        deployed, recipe = compress_weights(fp32, ignored)
    coverage = ov_coverage(deployed)
    if cfg.method == "dynamic" and coverage["layers"] == 0:
        raise QuantizationError(
            f"OpenVINO dynamic (int8 weight compression) found no MatMul, Convolution or embedding weight to "
            f"compress in {ctx.model_ref}"
        )
    return deployed, recipe, coverage


def save_ir(ov: Any, ov_model: Any, path: Path) -> list[Path]:
    """``ov.save_model`` with fp32 weights kept (the default halves them to fp16): [model.xml, model.bin]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    return [path, path.with_suffix(".bin")]


def _dtype(port: Any) -> Any:
    """The numpy dtype of a model input (an ``openvino`` port)."""
    return np.dtype(port.get_element_type().to_dtype())


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
