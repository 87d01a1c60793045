"""The ONNX Runtime engine pieces (farm/runtimes): export, the session the harness drives, dynamic and static
quantization, coverage, and the one-line refusals. Tiny models only (digits-sized 1x8x8 CNN, a small MLP, a
two-input token model with int64 ids and mask)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'quantfarm[onnx]')")

import onnx  # noqa: E402

from farm.errors import QuantizationError  # noqa: E402
from farm.runtimes.onnx_export import export_onnx  # noqa: E402
from farm.runtimes.ort import OrtModel  # noqa: E402
from farm.runtimes.ort_calibration import OBSERVER_METHODS, calibration_recipe  # noqa: E402
from farm.runtimes.ort_quantize import quantize_dynamic_onnx, quantize_static_onnx  # noqa: E402


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


def mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)).eval()


class TokenModel(nn.Module):
    """Token ids and a mask (both int64) in; a dict of a pooled embedding and logits out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.emb = nn.Embedding(100, 32)
        self.proj = nn.Linear(32, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = attention_mask.unsqueeze(-1).float()
        h = torch.relu(self.proj(self.emb(input_ids))) * mask
        pooled = h.sum(1) / mask.sum(1).clamp(min=1.0)
        return {"embedding": pooled, "logits": self.head(pooled)}


def digits(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def tokens(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, 12), generator=g)
    lengths = torch.randint(4, 13, (n, 1), generator=g)
    mask = (torch.arange(12)[None, :] < lengths).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.detach().flatten().double(), b.detach().flatten().double(), dim=0))


def op_types(path: str | Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("build", [cnn, mlp], ids=["cnn", "mlp"])
def test_fp32_session_matches_torch_at_another_batch_size(tmp_path: Path, build: object) -> None:
    model = build()  # type: ignore[operator]
    info = export_onnx(model, digits(2), tmp_path / "m.onnx")
    assert info.exporter == "torchscript" and info.opset >= 13
    assert info.input_names == ("input",) and info.output_names == ("output",) and info.outputs == "tensor"
    assert info.size_bytes == (tmp_path / "m.onnx").stat().st_size
    session = OrtModel.load(info.path, threads=1)
    x = digits(7, seed=3)  # the batch axis is dynamic: 7, not the example's 2
    out = session.forward(session.prepare_input(x))
    assert isinstance(out, torch.Tensor) and out.shape == (7, 10)
    assert (out - model(x)).abs().max().item() < 1e-4


def test_int64_inputs_keep_their_dtype_through_export_feeds_and_dynamic_quantization(tmp_path: Path) -> None:
    model = TokenModel().eval()
    info = export_onnx(model, tokens(2), tmp_path / "tok.onnx")
    assert info.input_names == ("input_ids", "attention_mask") and info.input_dtypes == ("int64", "int64")
    graph = onnx.load(info.path).graph
    assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.INT64] * 2
    assert info.outputs == "dict" and info.output_names == ("embedding", "logits")
    session = OrtModel.load(info.path)
    batch = tokens(9, seed=5)
    feeds = session.prepare_input({"attention_mask": batch["attention_mask"].int(), "input_ids": batch["input_ids"]})
    assert {k: v.dtype.name for k, v in feeds.items()} == {"input_ids": "int64", "attention_mask": "int64"}
    out = session.forward(feeds)
    ref = model(**batch)
    assert set(out) == {"embedding", "logits"}
    assert (out["logits"] - ref["logits"]).abs().max().item() < 1e-4

    dyn = quantize_dynamic_onnx(info.path, tmp_path / "tok.dyn.onnx", per_channel=True)
    assert dyn.coverage.by_op["Gather"] == [1, 1] and dyn.coverage.by_op["MatMul"][0] >= 1
    assert dyn.size_bytes < info.size_bytes
    quantized = OrtModel.load(dyn.path)
    assert quantized.outputs == "dict"  # the output structure survives pre-processing and quantization
    q = quantized.forward(quantized.prepare_input(batch))
    assert cosine(q["logits"], ref["logits"]) > 0.99


def test_a_tuple_batch_feeds_inputs_in_order_and_a_chosen_output_is_exported_alone(tmp_path: Path) -> None:
    model = TokenModel().eval()
    batch = tokens(3)
    pair = (batch["input_ids"], batch["attention_mask"])
    info = export_onnx(model, pair, tmp_path / "t.onnx", output="embedding")
    assert info.input_names == ("input_0", "input_1") and info.output_names == ("embedding",)
    session = OrtModel.load(info.path)
    out = session.forward(session.prepare_input(pair))
    assert out.shape == (3, 32) and (out - model(*pair)["embedding"]).abs().max().item() < 1e-4
    with pytest.raises(QuantizationError, match="graph takes 2"):
        session.prepare_input(batch["input_ids"])


def test_dynamic_quantization_writes_integer_ops_and_a_smaller_file(tmp_path: Path) -> None:
    model = cnn()
    info = export_onnx(model, digits(2), tmp_path / "cnn.onnx")
    dyn = quantize_dynamic_onnx(info.path, tmp_path / "cnn.dyn.onnx")
    assert "ConvInteger" in op_types(dyn.path) and "Conv" not in op_types(dyn.path)
    assert dyn.mode == "dynamic" and dyn.preprocessed and dyn.preprocess_error is None
    assert dyn.coverage.quantized_nodes == dyn.coverage.quantizable_nodes == 3
    assert dyn.coverage.params_quantized_fraction > 0.9
    assert dyn.size_ratio < 0.6


def test_static_per_channel_cnn_is_qdq_and_keeps_cosine(tmp_path: Path) -> None:
    model = cnn()
    info = export_onnx(model, digits(2), tmp_path / "cnn.onnx")
    calibration = list(digits(64, seed=1).split(16))
    st = quantize_static_onnx(info.path, tmp_path / "cnn.st.onnx", calibration, per_channel=True)
    types = op_types(st.path)
    assert {"QuantizeLinear", "DequantizeLinear"} <= types
    assert st.calibrate_method == "MinMax" and st.calibration_batches == 4 and st.preprocessed
    assert st.coverage.node_fraction == 1.0 and st.coverage.params_quantized_fraction > 0.95
    assert st.size_bytes < info.size_bytes
    graph = onnx.load(st.path).graph
    inits = {t.name: t for t in graph.initializer}
    conv_weight_dq = [
        n
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(inits[n.input[0]].dims) == 4
    ]
    assert conv_weight_dq and all(list(inits[n.input[1]].dims) == [inits[n.input[0]].dims[0]] for n in conv_weight_dq)
    session = OrtModel.load(st.path, threads=1)
    x = digits(32, seed=9)
    assert cosine(session.forward(session.prepare_input(x)), model(x)) > 0.99


@pytest.mark.parametrize("observer", sorted(OBSERVER_METHODS))
def test_every_observer_calibrates(tmp_path: Path, observer: str) -> None:
    model = cnn()
    info = export_onnx(model, digits(2), tmp_path / "cnn.onnx")
    st = quantize_static_onnx(info.path, tmp_path / "q.onnx", list(digits(48, seed=1).split(16)), observer=observer)
    assert st.calibrate_method == OBSERVER_METHODS[observer]
    session = OrtModel.load(st.path)
    x = digits(16, seed=4)
    assert cosine(session.forward(session.prepare_input(x)), model(x)) > 0.98


def test_observer_mapping_and_its_options() -> None:
    assert calibration_recipe("minmax")[0] == "MinMax"
    method, extra = calibration_recipe("moving_average", averaging_constant=0.05)
    assert method == "MinMax" and extra["CalibMovingAverage"] is True and extra["CalibMovingAverageConstant"] == 0.05
    method, extra = calibration_recipe("percentile", percentile=99.9)
    assert method == "Percentile" and extra["CalibPercentile"] == 99.9
    assert calibration_recipe("histogram")[0] == "Entropy"
    _, extra = calibration_recipe("minmax", symmetric_activations=True, symmetric_weights=False)
    assert extra["ActivationSymmetric"] and extra["CalibTensorRangeSymmetric"] and not extra["WeightSymmetric"]
    with pytest.raises(QuantizationError) as e:
        calibration_recipe("kl")
    assert "\n" not in str(e.value) and "minmax, moving_average, histogram, percentile" in str(e.value)


def test_static_without_calibration_batches_is_refused(tmp_path: Path) -> None:
    info = export_onnx(mlp(), digits(2), tmp_path / "m.onnx")
    with pytest.raises(QuantizationError, match="needs calibration batches"):
        quantize_static_onnx(info.path, tmp_path / "q.onnx", [])


def test_session_options_and_refusals(tmp_path: Path) -> None:
    import onnxruntime

    info = export_onnx(mlp(), digits(2), tmp_path / "m.onnx")
    session = OrtModel.load(info.path, threads=2, optimization="basic")
    opts = session.model.get_session_options()
    assert opts.intra_op_num_threads == 2
    assert opts.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert (session.device, session.simulated, session.engine, session.autocast_dtype) == ("cpu", False, None, None)
    with pytest.raises(QuantizationError) as e:
        OrtModel.load(info.path, provider="TensorrtExecutionProvider")
    text = str(e.value)
    assert "\n" not in text and "TensorrtExecutionProvider" in text and "CPUExecutionProvider" in text
    with pytest.raises(QuantizationError, match="optimization level"):
        OrtModel.load(info.path, optimization="max")


class Eigen(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x).real


def test_export_failures_are_one_line_naming_op_and_opset(tmp_path: Path) -> None:
    with pytest.raises(QuantizationError) as e:
        export_onnx(Eigen(), torch.randn(2, 3, 3), tmp_path / "e.onnx", opset=17)
    assert "\n" not in str(e.value) and "aten::linalg_eigvals" in str(e.value) and "opset 17" in str(e.value)
    with pytest.raises(QuantizationError) as e:
        export_onnx(mlp(), digits(2), tmp_path / "m.onnx", opset=99)
    assert "\n" not in str(e.value) and "99" in str(e.value)
    with pytest.raises(QuantizationError, match="embedding, logits"):
        export_onnx(TokenModel(), tokens(2), tmp_path / "t.onnx", output="pooled")


def test_the_measuring_harness_drives_an_ort_model(tmp_path: Path) -> None:
    from farm.quant.latency import LatencySettings, measure_latency
    from farm.quant.measure import evaluate
    from farm.zoo.data import TensorSplit

    model = TokenModel().eval()
    info = export_onnx(model, tokens(2), tmp_path / "tok.onnx")
    session = OrtModel.load(info.path, threads=1)
    data = tokens(70, seed=7)
    outputs = evaluate(session, TensorSplit(data), lambda *_: None, lambda: False, label="ort", output="logits")
    assert outputs.shape == (70, 4) and (outputs - model(**data)["logits"]).abs().max().item() < 1e-4
    fast = LatencySettings(warmup_s=0.0, warmup_reps=1, min_reps=5, max_reps=10, max_time_s=0.2)
    lat = measure_latency(functools.partial(session.forward, session.prepare_input(data)), 70, settings=fast)
    assert 5 <= lat.reps <= 10 and lat.latency_p50_ms > 0
