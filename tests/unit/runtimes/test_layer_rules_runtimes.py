"""Per-layer rules on ONNX Runtime, OpenVINO and TensorRT: torch module names mapped onto graph nodes, skipped
layers left float in the deployed graph (and counted so by coverage), overrides a runtime cannot apply refused
before anything is exported. TensorRT's engine needs a GPU: here its precision pins run on a fake network."""

from __future__ import annotations

import functools
import importlib.util
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from farm.errors import ConfigError, QuantizationError
from farm.quant.config import parse_method
from farm.quant.context import QuantContext
from farm.quant.layers import LayerRule
from farm.zoo.data import calibration_subset, first_batch, iterate, load_dataset
from farm.zoo.models import load_model

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'quantfarm[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'quantfarm[onnx]')")

from farm.runtimes import ort_build  # noqa: E402
from farm.runtimes.layer_nodes import layer_nodes, nodes_for, rule_nodes  # noqa: E402
from farm.runtimes.onnx_export import export_onnx  # noqa: E402

HAVE_OV = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
needs_ov = pytest.mark.skipif(not HAVE_OV, reason="openvino / nncf not installed (pip install 'quantfarm[openvino]')")


@functools.cache
def digits() -> tuple[Any, Any]:
    return load_model("farm:digits-cnn").module, load_dataset("sklearn:digits")


@functools.cache
def encoder() -> tuple[Any, Any]:
    return load_model("farm:tiny-encoder").module, load_dataset("tokens:16")


def context(splits: Any, calibration_size: int = 0) -> QuantContext:
    calibration = calibration_subset(splits, calibration_size, 0) if calibration_size else None
    return QuantContext("m", example_input=first_batch(splits.test, 2), calibration=calibration, batch_size=32)


def logits(outcome: Any, dataset: Any) -> torch.Tensor:
    outs = []
    with outcome.active():
        for x, _ in iterate(dataset, 64):
            out = outcome.forward(outcome.prepare_input(x))
            outs.append(out if isinstance(out, torch.Tensor) else out["logits"])
    return torch.cat(outs)


def torch_logits(model: Any, dataset: Any) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([(model(**x)["logits"] if isinstance(x, dict) else model(x)) for x, _ in iterate(dataset, 64)])


def linear_layers(model: nn.Module) -> dict[str, str]:
    kinds = (nn.Linear, nn.Conv2d)
    return {n: type(m).__name__ for n, m in model.named_modules() if isinstance(m, kinds)}


def graph_of(path: Path) -> Any:
    return onnx.load(str(path)).graph


def weight_is_float(graph: Any, node_name: str) -> bool:
    """The node reads its weight straight from a float initializer (no DequantizeLinear, no integer op)."""
    node = next(n for n in graph.node if n.name == node_name)
    inits = {t.name: t for t in graph.initializer}
    return node.input[1] in inits and inits[node.input[1]].data_type == onnx.TensorProto.FLOAT


# --- mapping module names onto the exported graph ---------------------------------------------------------------


def test_every_layer_of_digits_resnet_and_encoder_maps_to_its_one_node(tmp_path: Path) -> None:
    import torchvision

    cases = [
        (digits()[0], torch.randn(2, 1, 8, 8)),
        (torchvision.models.resnet18().eval(), torch.randn(1, 3, 32, 32)),
        (encoder()[0], first_batch(encoder()[1].test, 2)),
    ]
    for i, (model, example) in enumerate(cases):
        export_onnx(model, example, tmp_path / f"{i}.onnx")
        found = layer_nodes(graph_of(tmp_path / f"{i}.onnx"), linear_layers(model))
        assert found and all(len(nodes) == 1 for nodes in found.values()), found
    proto = onnx.load(str(tmp_path / "1.onnx"))
    assert nodes_for(proto, "layer2.0.downsample.0") == ["/model/layer2/layer2.0/downsample/downsample.0/Conv"]
    assert nodes_for(proto, "fc") == ["/model/fc/Gemm"]
    assert nodes_for(onnx.load(str(tmp_path / "2.onnx")), "layers.1.mlp.2") == ["/model/layers.1/mlp/mlp.2/MatMul"]


class Twice(nn.Module):
    """A layer called twice (its second scope is fc_1) beside a layer called once."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(torch.relu(self.fc(x))))


def test_a_reused_layer_maps_to_both_calls_and_unscoped_nodes_fall_back_to_weight_names(tmp_path: Path) -> None:
    model = Twice().eval()
    export_onnx(model, torch.randn(2, 4), tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert len(nodes_for(proto, "fc", linear_layers(model))) == 2
    for i, node in enumerate(proto.graph.node):  # a graph whose nodes lost their scopes
        node.name = f"node{i}"
    found = layer_nodes(proto.graph, linear_layers(model))
    assert len(found["fc"]) == 2 and len(found["out"]) == 1


def test_skipping_a_whole_block_also_keeps_its_attention_matmuls(tmp_path: Path) -> None:
    model, splits = encoder()
    export_onnx(model, first_batch(splits.test, 2), tmp_path / "e.onnx")
    proto = onnx.load(str(tmp_path / "e.onnx"))
    layers = linear_layers(model)
    exclude, overrides = rule_nodes(proto, (LayerRule(name="layers.0.*", skip=True),), layers)
    assert "/model/layers.0/attention/q/MatMul" in exclude and "/model/layers.0/mlp/mlp.2/MatMul" in exclude
    assert "/model/layers.0/attention/MatMul" in exclude  # the scores, q @ k^T, inside the skipped block
    assert not any("layers.1" in n or "head" in n for n in exclude) and overrides == {}
    exclude, overrides = rule_nodes(proto, (LayerRule(name="layers.0.attention.q", skip=True),), layers)
    assert exclude == ["/model/layers.0/attention/q/MatMul"]  # one layer of the block: the scores stay quantized
    _, overrides = rule_nodes(proto, (LayerRule(type="Linear", granularity="per_tensor"),), layers)
    assert len(overrides) == len(layers) and {s.granularity for s in overrides.values()} == {"per_tensor"}


def test_a_layer_the_export_dropped_needs_nothing_and_a_lost_one_still_fails(tmp_path: Path) -> None:
    """Exported for its embedding, the encoder's graph has no classifier head: a rule skipping it (by name, or every
    Linear) has nothing to keep in floating point there, not a lost layer; a layer whose nodes lost both their
    scope and their weight's name (another weight node is left unowned) still fails, naming it."""
    model, splits = encoder()
    export_onnx(model, first_batch(splits.test, 2), tmp_path / "e.onnx", output="embedding")
    proto = onnx.load(str(tmp_path / "e.onnx"))
    layers = linear_layers(model)
    assert "head" in layers and not layer_nodes(proto.graph, layers)["head"]
    exclude, _ = rule_nodes(proto, (LayerRule(name="head", skip=True),), layers)
    assert exclude == []
    exclude, _ = rule_nodes(proto, (LayerRule(type="Linear", skip=True),), layers)
    assert len(exclude) >= len(layers) - 1 and not any("head" in n for n in exclude)
    q = next(n for n in proto.graph.node if n.name == "/model/layers.0/attention/q/MatMul")
    q.name = "anonymous"  # its scope lost ...
    weight = q.input[1]
    for t in proto.graph.initializer:  # ... and its weight's name too
        if t.name == weight:
            t.name = q.input[1] = "w0"
    with pytest.raises(QuantizationError, match="layers.0.attention.q"):
        rule_nodes(proto, (LayerRule(name="layers.0.attention.q", skip=True),), layers)


# --- ONNX Runtime -------------------------------------------------------------------------------------------------


def test_ort_static_keeps_a_skipped_layer_float_and_coverage_counts_it(tmp_path: Path) -> None:
    model, splits = digits()
    ctx = context(splits, 64)
    cfg = parse_method("static", {"calibration_size": 64})
    full = ort_build.build(model, cfg, ctx, tmp_path / "full", threads=1)
    ruled = ort_build.build(
        model, cfg.replace(layers=(LayerRule(name="classifier", skip=True),)), ctx, tmp_path / "ruled", threads=1
    )
    graph = graph_of(ruled.files[0])
    assert weight_is_float(graph, "/model/classifier/Gemm")
    assert not weight_is_float(graph, "/model/features/features.0/Conv")
    assert full.coverage["layers"] == 5 and ruled.coverage["layers"] == 4
    assert ruled.coverage["params"] < full.coverage["params"] == 1.0
    assert ruled.info["layers_skipped"] == ["classifier"]
    reference = torch_logits(model, splits.test)
    assert (logits(ruled.outcome, splits.test).argmax(1) == reference.argmax(1)).float().mean() > 0.95


def test_ort_static_takes_one_layers_granularity(tmp_path: Path) -> None:
    model, splits = digits()
    cfg = parse_method("static", {"calibration_size": 64}).replace(
        layers=(LayerRule(name="features.0", granularity="per_tensor"),)
    )
    built = ort_build.build(model, cfg, context(splits, 64), tmp_path, threads=1)
    graph = graph_of(built.files[0])
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def weight_scale_size(conv: str) -> int:
        node = next(n for n in graph.node if n.name == conv)
        dq = producer[node.input[1]]
        return int(onnx.numpy_helper.to_array(inits[dq.input[1]]).size)

    assert weight_scale_size("/model/features/features.0/Conv") == 1  # per tensor, as the rule says
    assert weight_scale_size("/model/features/features.3/Conv") == 64  # per channel, as the method says
    assert built.coverage["layers"] == 5


def test_ort_dynamic_skips_a_block_of_the_encoder(tmp_path: Path) -> None:
    model, splits = encoder()
    rules = (LayerRule(name="layers.0.*", skip=True), LayerRule(name="head", skip=True))
    cfg = parse_method("dynamic").replace(layers=rules)
    full = ort_build.build(model, parse_method("dynamic"), context(splits), tmp_path / "full", threads=1)
    ruled = ort_build.build(model, cfg, context(splits), tmp_path / "ruled", threads=1)
    graph = graph_of(ruled.files[0])
    assert weight_is_float(graph, "/model/layers.0/attention/q/MatMul")
    assert weight_is_float(graph, "/model/head/Gemm_MatMul")  # the quantizer splits a Gemm, then leaves it float
    assert not any(n.name == "/model/layers.1/attention/q/MatMul" for n in graph.node)  # rewritten: quantized
    assert ruled.coverage["layers"] == full.coverage["layers"] - 7
    reference = torch_logits(model, splits.test)
    assert torch.nn.functional.cosine_similarity(logits(ruled.outcome, splits.test), reference).mean() > 0.99


def test_ort_fp16_blocks_the_skipped_nodes(tmp_path: Path) -> None:
    model, splits = digits()
    export_onnx(model, first_batch(splits.test, 2), tmp_path / "fp32.onnx")
    ort_build._to_fp16(tmp_path / "fp32.onnx", tmp_path / "half.onnx", ["/model/classifier/Gemm"])
    graph = graph_of(tmp_path / "half.onnx")
    assert weight_is_float(graph, "/model/classifier/Gemm")
    conv = next(n for n in graph.node if n.name == "/model/features/features.0/Conv")
    inits = {t.name: t for t in graph.initializer}
    assert inits[conv.input[1]].data_type == onnx.TensorProto.FLOAT16


def test_refusals_come_before_the_export(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model, splits = digits()

    def no_export(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("exported before the rules were checked")

    monkeypatch.setattr("farm.runtimes.onnx_export.export_onnx", no_export)
    static = parse_method("static", {"calibration_size": 64})
    cases = [
        (static.replace(layers=(LayerRule(name="fc", skip=True),)), r"layers\[0\].*matches no layer.*classifier"),
        (static.replace(layers=(LayerRule(name="classifier", observer="histogram"),)), r"layers\[0\].*one observer"),
        (static.replace(layers=(LayerRule(name="classifier", bits=4),)), r"layers\[0\].*int8 kernels only"),
        (
            parse_method("dynamic", {"granularity": "per_tensor"}).replace(
                layers=(LayerRule(name="classifier", granularity="per_channel"),)
            ),
            r"layers\[0\].*whole graph",
        ),
    ]
    for cfg, message in cases:
        with pytest.raises(ConfigError, match=message):
            ort_build.build(model, cfg, context(splits, 64), tmp_path, threads=1)


# --- OpenVINO ----------------------------------------------------------------------------------------------------


@needs_ov
def test_openvino_static_ignores_a_batchnorm_fused_conv_found_by_its_weight(tmp_path: Path) -> None:
    from farm.runtimes import openvino as ov_runtime

    model, splits = digits()
    cfg = parse_method("static", {"calibration_size": 64}).replace(layers=(LayerRule(name="features.3", skip=True),))
    built = ov_runtime.build(model, cfg, context(splits, 64), tmp_path, threads=1)
    assert built.coverage["by_op"]["Convolution"] == [3, 4] and built.coverage["by_op"]["MatMul"] == [1, 1]
    assert len(built.info["ignored_scope"]) == 1 and built.coverage["params"] < 0.95
    reference = torch_logits(model, splits.test)
    assert (logits(built.outcome, splits.test).argmax(1) == reference.argmax(1)).float().mean() > 0.95


@needs_ov
def test_openvino_dynamic_skips_the_head_by_name(tmp_path: Path) -> None:
    from farm.runtimes import openvino as ov_runtime

    model, splits = encoder()
    cfg = parse_method("dynamic").replace(layers=(LayerRule(name="head", skip=True),))
    full = ov_runtime.build(model, parse_method("dynamic"), context(splits), tmp_path / "full")
    ruled = ov_runtime.build(model, cfg, context(splits), tmp_path / "ruled")
    assert ruled.info["ignored_scope"] == ["__module.model.head/aten::linear/MatMul"]
    assert ruled.coverage["layers"] == full.coverage["layers"] - 1
    reference = torch_logits(model, splits.test)
    assert torch.nn.functional.cosine_similarity(logits(ruled.outcome, splits.test), reference).mean() > 0.99


@needs_ov
def test_openvino_refuses_a_per_layer_granularity(tmp_path: Path) -> None:
    from farm.runtimes import openvino as ov_runtime

    model, splits = digits()
    cfg = parse_method("static", {"calibration_size": 64}).replace(
        layers=(LayerRule(name="classifier", granularity="per_tensor"),)
    )
    with pytest.raises(ConfigError, match=r"layers\[0\].*NNCF sets weight granularity"):
        ov_runtime.build(model, cfg, context(splits, 64), tmp_path)


# --- TensorRT (no GPU: the plan, the Q/DQ graph and the pins on a fake network) -------------------------------


def test_tensorrt_pins_the_skipped_layers_on_a_weakly_typed_fp16_build() -> None:
    from farm.runtimes.tensorrt_graph import pin_fp32, precision_plan, with_fp32_nodes

    plan = with_fp32_nodes(precision_plan("fp16", ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]), ["/model/fc/Gemm"])
    assert plan.flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS") and plan.fp32_nodes == ("/model/fc/Gemm",)
    strongly = with_fp32_nodes(precision_plan("fp16", ["TF32"]), ["/model/fc/Gemm"])
    assert strongly.graph == "fp16" and strongly.flags == ()  # the fp16 graph keeps the node float32 itself

    class Layer:
        def __init__(self, name: str) -> None:
            self.name, self.num_outputs, self.precision, self.outputs = name, 1, None, {}

        def set_output_type(self, i: int, kind: str) -> None:
            self.outputs[i] = kind

    layers = [Layer(n) for n in ("/model/conv/Conv", "/model/fc/Gemm", "/model/fc/Gemm_bias", "/model/fc/Gemm_1")]
    network = types.SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    pinned = pin_fp32(network, plan.fp32_nodes, "float32")
    assert pinned == ["/model/fc/Gemm", "/model/fc/Gemm_bias"]
    assert [x.precision for x in layers] == [None, "float32", "float32", None]
    assert layers[1].outputs == {0: "float32"}


def test_tensorrt_qdq_graph_leaves_the_skipped_node_without_qdq(tmp_path: Path) -> None:
    from farm.runtimes.tensorrt_graph import qdq_graph

    model, splits = digits()
    export_onnx(model, first_batch(splits.test, 2), tmp_path / "fp32.onnx")
    cfg = parse_method("static", {"calibration_size": 64})
    batches = [x for x, _ in iterate(calibration_subset(splits, 64, 0), 32)]
    path, recipe = qdq_graph(
        tmp_path / "fp32.onnx", tmp_path / "q.onnx", cfg, batches, exclude=["/model/features/features.10/Conv"]
    )
    graph = graph_of(path)
    assert weight_is_float(graph, "/model/features/features.10/Conv")
    assert not weight_is_float(graph, "/model/features/features.7/Conv")
    assert recipe["coverage"]["layers"] == 4 and recipe["nodes_to_exclude"] == ["/model/features/features.10/Conv"]
