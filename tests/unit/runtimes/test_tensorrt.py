"""TensorRT (farm/runtimes/tensorrt.py, tensorrt_graph.py). Without a GPU and tensorrt this machine tests what the
engine is built from: the precision plan on TensorRT 10 and 11, the optimization profile, the Q/DQ graph TensorRT
consumes (symmetric int8, run here by onnxruntime), the fp16 graph, and the one-line refusals. The engine itself is
tested by the ``gpu`` test, which runs where CUDA and tensorrt are."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from farm.errors import QuantizationError
from farm.quant.config import parse_method
from farm.quant.context import QuantContext
from farm.runtimes import tensorrt as trt_runtime
from farm.runtimes.tensorrt_graph import PrecisionPlan, activation_note, precision_plan, profile_shapes

TRT10_FLAGS = ["FP16", "BF16", "INT8", "TF32", "FP8", "OBEY_PRECISION_CONSTRAINTS"]
TRT11_FLAGS = ["TF32", "DEBUG", "REFIT", "STRIP_PLAN"]


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()  # fmt: skip


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_precision_plans_on_tensorrt_10_and_11() -> None:
    assert precision_plan("fp32", TRT10_FLAGS) == PrecisionPlan("fp32", ()) == precision_plan("fp32", TRT11_FLAGS)
    assert precision_plan("fp16", TRT10_FLAGS) == PrecisionPlan("fp32", ("FP16",))  # weakly typed: the flag
    assert precision_plan("fp16", TRT11_FLAGS) == PrecisionPlan("fp16", ())  # strongly typed: an fp16 graph
    assert precision_plan("static", TRT10_FLAGS) == PrecisionPlan("qdq", ("INT8",))
    assert precision_plan("static", TRT11_FLAGS) == PrecisionPlan("qdq", ())
    assert not any(p.tf32 for p in (precision_plan(m, TRT10_FLAGS) for m in ("fp32", "fp16", "static")))
    with pytest.raises(QuantizationError, match="cannot run method 'dynamic'"):
        precision_plan("dynamic", TRT10_FLAGS)


def test_profile_spans_batch_one_to_the_largest_and_fixes_other_axes() -> None:
    tokens = {
        "input_ids": torch.zeros(2, 16, dtype=torch.int64),
        "attention_mask": torch.ones(2, 16, dtype=torch.int64),
    }
    shapes = profile_shapes(tokens, [8, 64, 32])
    assert shapes == {
        "input_ids": ((1, 16), (8, 16), (64, 16)),
        "attention_mask": ((1, 16), (8, 16), (64, 16)),
    }
    assert profile_shapes((images(2), images(2)), [4])["input_1"] == ((1, 1, 8, 8), (4, 1, 8, 8), (4, 1, 8, 8))
    with pytest.raises(QuantizationError, match="at least 1"):
        profile_shapes(images(2), [0])


def test_qdq_graph_is_symmetric_int8_and_keeps_accuracy(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'quantfarm[tensorrt]')")
    import onnx
    from onnx import numpy_helper

    from farm.runtimes.onnx_export import export_onnx
    from farm.runtimes.ort import OrtModel
    from farm.runtimes.tensorrt_graph import qdq_graph

    model = cnn()
    export_onnx(model, images(2), tmp_path / "fp32.onnx")
    cfg = parse_method("static", {"observer": "histogram", "calibration_size": 64})
    path, recipe = qdq_graph(tmp_path / "fp32.onnx", tmp_path / "model.onnx", cfg, list(images(64, 1).split(16)))
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert zero_points and all(z.data_type == onnx.TensorProto.INT8 for z in zero_points)
    assert all(not numpy_helper.to_array(z).any() for z in zero_points)  # TensorRT needs zero point 0
    assert not any(t.data_type == onnx.TensorProto.INT32 for t in graph.initializer)  # biases stay float
    assert recipe["calibrate_method"] == "Entropy" and recipe["calibration_batches"] == 4
    assert recipe["coverage"]["layers"] == recipe["coverage"]["layers_total"] == 3
    x = images(32, 2)
    session = OrtModel.load(path)
    out = session.forward(session.prepare_input(x))
    with torch.no_grad():
        ref = model(x)
    assert nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item() > 0.99
    with pytest.raises(QuantizationError, match="bits must be 8"):
        qdq_graph(tmp_path / "fp32.onnx", tmp_path / "q4.onnx", cfg.replace(bits=4), [images(4)])


def test_fp16_graph_halves_weights_and_keeps_fp32_io(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'quantfarm[tensorrt]')")
    import onnx

    from farm.runtimes.onnx_export import OUTPUTS_KEY, export_onnx
    from farm.runtimes.tensorrt_graph import fp16_graph

    export_onnx(cnn(), images(2), tmp_path / "fp32.onnx")
    proto = onnx.load(str(fp16_graph(tmp_path / "fp32.onnx", tmp_path / "model.onnx")))
    float_inits = [
        t for t in proto.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    ]
    assert float_inits and all(t.data_type == onnx.TensorProto.FLOAT16 for t in float_inits)
    io = [*proto.graph.input, *proto.graph.output]
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in io)
    assert {p.key: p.value for p in proto.metadata_props}[OUTPUTS_KEY] == "tensor"


def test_affine_activations_are_flagged() -> None:
    assert activation_note(parse_method("static", {"activation": "symmetric"})) == []
    assert "symmetric" in activation_note(parse_method("static"))[0]


def ctx() -> QuantContext:
    return QuantContext("cnn", example_input=images(2))


def test_a_machine_without_tensorrt_is_told_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorrt" else real(name, *a))
    with pytest.raises(QuantizationError) as caught:
        trt_runtime.build(cnn(), parse_method("fp16"), ctx(), tmp_path)
    message = str(caught.value)
    assert "\n" not in message and "tensorrt" in message and "pip install 'quantfarm[tensorrt]'" in message
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_machine_without_cuda_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = types.SimpleNamespace(BuilderFlag=types.SimpleNamespace(__members__={"FP16": 0}))
    monkeypatch.setattr(trt_runtime, "require_tensorrt", lambda: fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(QuantizationError, match="needs a CUDA device and this machine has none"):
        trt_runtime.build(cnn(), parse_method("fp32"), ctx(), tmp_path)
    with pytest.raises(QuantizationError, match=r"cannot run method 'bf16'; it runs: fp32, fp16, static"):
        trt_runtime.build(cnn(), parse_method("bf16"), ctx(), tmp_path)


@pytest.mark.gpu
def test_engines_run_close_to_torch_on_cuda(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="tensorrt is not installed (pip install 'quantfarm[tensorrt]')")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = cnn()
    calibration = torch.utils.data.TensorDataset(images(64, 1), torch.zeros(64, dtype=torch.int64))
    x = images(48, 3)
    with torch.no_grad():
        ref = model(x)
    results: dict[str, Any] = {}
    for method, params in (("fp32", {}), ("fp16", {}), ("static", {"calibration_size": 64})):
        context = QuantContext("cnn", example_input=images(2), calibration=calibration, batch_size=16)
        built = trt_runtime.build(model, parse_method(method, params), context, tmp_path / method, batch_sizes=[48])
        out = built.outcome.forward(built.outcome.prepare_input(x))
        torch.cuda.synchronize()
        assert out.device.type == "cuda" and out.shape == (48, 10)
        results[method] = nn.functional.cosine_similarity(out.float().cpu().flatten(), ref.flatten(), dim=0).item()
        assert [f.name for f in built.files] == ["model.plan", "model.onnx"] and all(f.is_file() for f in built.files)
        assert (built.baseline is None) == (method == "fp32")
    assert results["fp32"] > 0.9999 and results["fp16"] > 0.999 and results["static"] > 0.99
