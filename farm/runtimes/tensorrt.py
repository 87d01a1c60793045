"""TensorRT on a CUDA device: the model exported to ONNX, built into an engine, run with torch CUDA tensors.

fp32, fp16 and static int8; how each is built on TensorRT 10 and 11 (flags, or a graph that carries its precision;
int8 always as explicit Q/DQ) is :mod:`farm.runtimes.tensorrt_graph`. The engine has one optimization profile: the
batch axis from 1 to the largest batch the job runs, every other axis as in the example batch. ``TrtModel`` binds
torch CUDA tensors: ``prepare_input`` puts the batch on the GPU in the engine's dtypes (outside timing),
``forward`` sets the shapes and addresses and enqueues on torch's current stream; the latency harness
synchronises for device "cuda". The artifact: model.plan (the serialized engine) and model.onnx (its graph).

tensorrt is imported only inside functions; without it, or without a CUDA device, ``build`` raises one line.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from farm.errors import QuantizationError
from farm.quant.inputs import Batch
from farm.quant.isolation import compute_step
from farm.runtimes.build import DeployedModel, RuntimeBuild, calibration_batches
from farm.runtimes.layer_nodes import rule_nodes
from farm.runtimes.layer_plan import LayerPlan, layer_plan
from farm.runtimes.onnx_export import ExportInfo, batch_inputs, export_onnx
from farm.runtimes.registry import runtime_problems, unavailable
from farm.runtimes.tensorrt_graph import (
    PrecisionPlan,
    activation_note,
    fp16_graph,
    pin_fp32,
    precision_plan,
    profile_shapes,
    qdq_graph,
    with_fp32_nodes,
)

#: The evaluation batch size (farm.quant.measure.EVAL_BATCH_SIZE): every engine must take it.
EVAL_BATCH_SIZE = 64
#: Builder workspace limit.
WORKSPACE_BYTES = 2 << 30
#: TensorRT DataType member names -> torch dtypes.
TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
}


def require_tensorrt() -> Any:
    """The tensorrt module, or one QuantizationError line naming the ``tensorrt`` extra."""
    reason = unavailable("tensorrt")
    if reason is not None:
        raise QuantizationError(reason)
    try:
        import tensorrt
    except ImportError as e:  # present but broken (CUDA libraries missing)
        raise QuantizationError(f"tensorrt cannot be imported ({e}); pip install 'quantfarm[tensorrt]'") from e
    return tensorrt


def require_cuda() -> None:
    """Refuse a machine without a CUDA device, in one line."""
    if not torch.cuda.is_available():
        raise QuantizationError(
            "runtime tensorrt needs a CUDA device and this machine has none: run it on a GPU worker"
        )


def build_engine(trt: Any, onnx_path: Path, shapes: dict[str, Any], plan: PrecisionPlan) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine with one optimization profile and ``plan``'s flags.

    Raises:
        QuantizationError: the parser's first error, or the builder failing (its first error logged).
    """
    log = _Log(trt)
    builder = trt.Builder(log.logger)
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, log.logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise QuantizationError(f"TensorRT cannot parse {onnx_path.name}: {(errors or log.errors or ['?'])[0]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in shapes:
            raise QuantizationError(f"the ONNX graph has an input {name!r} that the batch does not fill")
        profile.set_shape(name, *shapes[name])
    config.add_optimization_profile(profile)
    if plan.fp32_nodes and plan.graph == "fp32":  # weakly typed: pin the skipped layers (fp16 and qdq carry it)
        pin_fp32(network, plan.fp32_nodes, trt.float32)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if not plan.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise QuantizationError(f"TensorRT could not build an engine: {(log.errors or ['no error logged'])[0]}")
    return bytes(serialized)


class _Log:
    """A TensorRT logger that keeps the errors (for a one-line message) and drops the chatter."""

    def __init__(self, trt: Any) -> None:
        self.errors: list[str] = []
        errors, error_levels = self.errors, (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR)

        class Logger(trt.ILogger):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                if severity in error_levels:
                    errors.append(" ".join(str(msg).split())[:300])

        self.logger = Logger()


@dataclass(kw_only=True)
class TrtModel(DeployedModel):
    """A TensorRT engine that looks like a ``farm.quant.context.QuantOutcome`` to the measuring code.

    Attributes:
        model: the ``ICudaEngine``; ``context`` its execution context.
        inputs, output_specs: (name, torch dtype) of the engine's inputs and outputs, in the graph's order.
        outputs: "tensor", "tuple" or "dict": the structure ``forward`` returns.
        the rest (device, dtypes, figures, active()): :class:`farm.runtimes.build.DeployedModel`.
    """

    model: Any
    context: Any
    inputs: list[tuple[str, torch.dtype]]
    output_specs: list[tuple[str, torch.dtype]]
    outputs: str = "tensor"
    device: str = "cuda"
    #: The runtime and logger the engine was deserialized with: TensorRT needs them alive as long as it.
    keep: tuple[Any, ...] = ()

    @classmethod
    def load(cls, trt: Any, plan: bytes, export: ExportInfo) -> TrtModel:
        """Deserialize ``plan``; the input and output order and the output structure come from ``export``."""
        log = _Log(trt)
        runtime = trt.Runtime(log.logger)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise QuantizationError("TensorRT could not deserialize the engine it built")

        def spec(name: str) -> tuple[str, torch.dtype]:
            kind = engine.get_tensor_dtype(name).name
            if kind not in TORCH_DTYPES:
                raise QuantizationError(f"engine tensor {name!r} has type {kind}, which farm cannot bind")
            return name, TORCH_DTYPES[kind]

        return cls(
            model=engine,
            context=engine.create_execution_context(),
            inputs=[spec(n) for n in export.input_names],
            output_specs=[spec(n) for n in export.output_names],
            outputs=export.outputs,
            keep=(runtime, log),
        )

    def prepare_input(self, batch: Batch) -> list[torch.Tensor]:
        """The batch as contiguous CUDA tensors in the engine's input order and dtypes (a dict matched by key)."""
        names, tensors, by_key = batch_inputs(batch)
        wanted = [name for name, _ in self.inputs]
        if by_key:
            if sorted(names) != sorted(wanted):
                raise QuantizationError(f"batch has inputs {', '.join(names)}; the engine takes {', '.join(wanted)}")
            tensors = [tensors[names.index(name)] for name in wanted]
        elif len(tensors) != len(wanted):
            raise QuantizationError(f"batch has {len(tensors)} input(s); the engine takes {len(wanted)}")
        return [t.to("cuda", dtype).contiguous() for t, (_, dtype) in zip(tensors, self.inputs, strict=True)]

    def forward(self, tensors: list[torch.Tensor]) -> Any:
        """Enqueue the engine on torch's current stream; the outputs as torch CUDA tensors in the model's
        structure (not synchronised: the harness does that for device "cuda")."""
        context = self.context
        for (name, _), t in zip(self.inputs, tensors, strict=True):
            if not context.set_input_shape(name, tuple(t.shape)):
                raise QuantizationError(f"input {name!r} of shape {tuple(t.shape)} is outside the engine's profile")
            context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name, dtype in self.output_specs:
            out = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device=tensors[0].device)
            context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise QuantizationError("TensorRT failed to enqueue the engine")
        if self.outputs == "dict":
            return dict(zip((n for n, _ in self.output_specs), outs, strict=True))
        return tuple(outs) if self.outputs == "tuple" else outs[0]


def build(
    model: nn.Module, cfg: Any, ctx: Any, workdir: str | Path, *, batch_sizes: Sequence[int] = ()
) -> RuntimeBuild:
    """Build ``model`` into a TensorRT engine as ``cfg`` asks (fp32, fp16 or static int8).

    Args:
        model: the fp32 torch model.
        cfg: the method config (static: bits, observer, percentile, granularity, activation).
        ctx: the job's :class:`farm.quant.context.QuantContext` (example_input, calibration, batch_size).
        workdir: where model.plan and model.onnx are written.
        batch_sizes: the batch sizes the job benchmarks (the first is the profile's optimum); the evaluation
            batch and the calibration batch are always added.

    Raises:
        QuantizationError: one line: a method TensorRT cannot run, tensorrt missing (naming the extra), no CUDA
            device, an export, quantization, parse or build failure.
    """
    problems = runtime_problems("tensorrt", cfg.method)
    if problems:
        raise QuantizationError(problems[0].message)
    rules = layer_plan(model, cfg, "tensorrt")  # a rule that matches nothing is refused before the export
    trt = require_tensorrt()
    require_cuda()
    plan = precision_plan(cfg.method, list(trt.BuilderFlag.__members__))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    shapes = profile_shapes(ctx.example_input, [*batch_sizes, EVAL_BATCH_SIZE, ctx.batch_size])
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="farm-trt-") as tmp:
        # Each step computes on this host's CPU: it holds the measurement lock shared (waits while another job
        # on this host times exclusively; farm.quant.isolation).
        began = time.perf_counter()
        fp32_path = workdir / "model.onnx" if cfg.method == "fp32" else Path(tmp) / "fp32.onnx"
        with compute_step(ctx.should_stop):
            export = export_onnx(model, ctx.example_input, fp32_path)
        timings["export"] = time.perf_counter() - began
        exclude, overrides = _rule_nodes(fp32_path, rules)
        plan = with_fp32_nodes(plan, exclude)
        with compute_step(ctx.should_stop):
            graph, recipe = _graph(fp32_path, workdir / "model.onnx", cfg, ctx, plan, timings, overrides)
        began = time.perf_counter()
        with compute_step(ctx.should_stop):
            serialized = build_engine(trt, graph, shapes, plan)
        timings["build"] = time.perf_counter() - began
        baseline = None
        if cfg.method != "fp32":
            with compute_step(ctx.should_stop):
                fp32_engine = build_engine(trt, fp32_path, shapes, PrecisionPlan("fp32", ()))
            baseline = TrtModel.load(trt, fp32_engine, export)
    (workdir / "model.plan").write_bytes(serialized)
    outcome = TrtModel.load(trt, serialized, export)
    outcome.timings_s = dict(timings)
    files = [workdir / "model.plan", workdir / "model.onnx"]
    info = {
        "runtime": "tensorrt",
        "runtime_version": str(trt.__version__),
        "execution_provider": torch.cuda.get_device_name(),
        "opset": export.opset,
        "exporter": export.exporter,
        "graph": plan.graph,
        "builder_flags": list(plan.flags),
        "tf32": plan.tf32,
        "profile": {name: [list(s) for s in shape] for name, shape in shapes.items()},
        **recipe,
        **({**rules.details(), "fp32_nodes": list(plan.fp32_nodes)} if rules.rules else {}),
    }
    coverage = info.pop("coverage", None)
    notes = activation_note(cfg) if cfg.method == "static" else []
    return RuntimeBuild(
        outcome, baseline, files, (workdir / "model.plan").stat().st_size, coverage, info, notes, timings
    )


def _rule_nodes(path: Path, rules: LayerPlan) -> tuple[list[str], dict[str, Any]]:
    """The exported graph's nodes the rules keep fp32, and node -> setting for those they quantize differently."""
    if not rules.settings:
        return [], {}
    import onnx

    return rule_nodes(onnx.load(str(path), load_external_data=False), rules.rules, rules.layers)


def _graph(
    fp32: Path,
    dst: Path,
    cfg: Any,
    ctx: Any,
    plan: PrecisionPlan,
    timings: dict[str, float],
    overrides: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The graph ``plan`` builds from: the export itself, its fp16 conversion, or its Q/DQ quantization (the
    rules' fp32 nodes left float, their granularity ``overrides`` applied)."""
    began = time.perf_counter()
    if plan.graph == "qdq":
        granularity = {
            n: s.granularity for n, s in (overrides or {}).items() if s.granularity not in (None, cfg.granularity)
        }
        batches = calibration_batches(ctx)
        path, recipe = qdq_graph(fp32, dst, cfg, batches, exclude=plan.fp32_nodes, granularity=granularity)
        timings["quantize"] = time.perf_counter() - began
        return path, recipe
    if plan.graph == "fp16":
        path = fp16_graph(fp32, dst, plan.fp32_nodes)
        timings["convert_fp16"] = time.perf_counter() - began
        return path, {}
    if fp32 != dst:  # fp16 with the FP16 flag: the engine's graph is the fp32 export
        dst.write_bytes(fp32.read_bytes())
    return dst, {}
