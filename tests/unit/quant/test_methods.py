"""Every method on tiny toy models: through run_job (metrics, artifact) and through apply_method (the modules).

The toys take 1x8x8 inputs; the synthetic dataset has no labels, so accuracy is agreement with fp32 and the
thresholds below are about fidelity: a broken method gives agreement near chance (0.1) and SQNR near 0 dB.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from farm.errors import Cancelled, ConfigError, QuantizationError
from farm.jobs.contract import JobSpec
from farm.jobs.steps import run_job
from farm.quant.config import BACKENDS, parse_method
from farm.quant.registry import QuantContext, QuantOutcome, apply_method
from farm.zoo.data import TensorSplit
from tests import toys
from tests.conftest import fast_benchmark

DATASET = toys.SYNTHETIC
MLP = "entrypoint:tests.toys:tiny_mlp"
CNN = "entrypoint:tests.toys:tiny_cnn"
TOYS = {"mlp": MLP, "cnn": CNN}
CAL = {"calibration_size": 32}  # the synthetic split holds 32 calibration samples
QUANTIZED_PACKAGES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")


def quantized_modules(model: nn.Module) -> list[str]:
    return [type(m).__name__ for m in model.modules() if type(m).__module__.startswith(QUANTIZED_PACKAGES)]


def sqnr_db(reference: torch.Tensor, output: torch.Tensor) -> float:
    noise = (reference - output).pow(2).sum()
    return float(10 * torch.log10(reference.pow(2).sum() / noise))


@pytest.fixture(scope="module")
def reference(reference_for: Callable[[str, str], Any]) -> Callable[[str], Any]:
    return lambda model: reference_for(model, DATASET)


@pytest.fixture(scope="module")
def trial(run_trial: Callable[..., Any], reference: Callable[[str], Any]) -> Callable[..., Any]:
    """``trial(model, method, **params)``: run_job against the shared fp32 reference of that toy."""

    def run(model: str, method: str, **params: Any) -> Any:
        result, out = run_trial(model, DATASET, method, reference=reference(model), **params)
        return result, out

    return run


def check_common(result: Any, out: Any, method: str) -> None:
    """What every finished trial must carry, whatever its method."""
    assert result.method == method
    assert result.accuracy_kind == "relative_to_fp32"  # synthetic data: no labels
    assert result.accuracy == result.agreement
    assert result.accuracy_fp32 == 1.0
    assert result.accuracy_drop == pytest.approx(1.0 - result.agreement)
    assert len(result.latency) == 1
    lat = result.latency[0]
    assert lat["batch_size"] == 1
    assert 0 < lat["latency_p50_ms"] <= lat["latency_p90_ms"] <= lat["latency_p99_ms"]
    assert lat["reps"] >= 5
    assert lat["throughput"] == pytest.approx(1000.0 / lat["latency_p50_ms"])
    assert result.artifact["format"] == "torchscript"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == result.config
    assert manifest["artifact"]["sha256"] == result.artifact["sha256"]
    assert (out / "model.pt").stat().st_size == result.artifact["size_bytes"]
    assert any("synthetic inputs" in w for w in result.warnings)


@pytest.mark.parametrize("toy", ["mlp", "cnn"])
def test_fp32_is_its_own_reference(trial: Callable[..., Any], toy: str) -> None:
    result, out = trial(TOYS[toy], "fp32")
    check_common(result, out, "fp32")
    assert (result.agreement, result.sqnr_db, result.cosine) == (1.0, None, pytest.approx(1.0))
    assert result.size_ratio == 1.0
    assert result.latency[0]["speedup"] == 1.0
    assert result.coverage is None


@pytest.mark.parametrize("mode", ["cast", "autocast"])
@pytest.mark.parametrize("toy", ["mlp", "cnn"])
def test_bf16(trial: Callable[..., Any], toy: str, mode: str) -> None:
    result, out = trial(TOYS[toy], "bf16", mode=mode)
    check_common(result, out, "bf16")
    assert result.simulated is False
    assert result.agreement >= 0.9
    assert 30 < result.sqnr_db < 80  # bf16 has an 8-bit mantissa: close to fp32, never identical
    assert result.coverage_macs == 1.0
    if mode == "cast":
        assert result.coverage == 1.0
        assert result.size_ratio < 0.75  # weights stored in 2 bytes instead of 4
    else:
        assert result.coverage == 0.0  # autocast keeps the fp32 weights


def test_dynamic_on_the_mlp_quantizes_everything(trial: Callable[..., Any]) -> None:
    result, out = trial(MLP, "dynamic")
    check_common(result, out, "dynamic")
    assert result.quantized_engine == "x86"
    assert result.simulated is False
    assert result.agreement >= 0.9 and result.sqnr_db > 20
    assert result.coverage == 1.0 and result.coverage_layers == result.coverage_layers_total == 2
    assert not any("low coverage" in w for w in result.warnings)
    assert result.latency[0]["speedup"] > 0


def test_dynamic_on_the_cnn_warns_about_coverage(trial: Callable[..., Any]) -> None:
    result, out = trial(CNN, "dynamic")
    check_common(result, out, "dynamic")
    assert result.coverage < 0.05 and result.coverage_macs < 0.01
    assert (result.coverage_layers, result.coverage_layers_total) == (1, 4)
    (warning,) = [w for w in result.warnings if "low coverage" in w]
    assert "Conv2d" in warning and "static or qat" in warning


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_dynamic_quantizes_recurrent_layers(trial: Callable[..., Any], cell: str, tmp_path: Any) -> None:
    result, out = trial(f"entrypoint:tests.toys:tiny_{cell}", "dynamic")
    check_common(result, out, "dynamic")
    # The LSTM / GRU and the Linear head hold every weight: coverage is full, by parameters and by MACs.
    assert result.coverage > 0.97 and result.coverage_macs > 0.97
    assert (result.coverage_layers, result.coverage_layers_total) == (2, 2)
    assert not any("low coverage" in w for w in result.warnings)
    assert result.agreement >= 0.8 and result.sqnr_db > 15
    assert result.size_ratio < 0.8  # int8 weights; TorchScript's own bytes weigh on a model this small
    from farm.quant.artifact import load_artifact

    module, manifest = load_artifact(out)  # TorchScript: the quantized cells run without the toy's class
    x = torch.randn((4, *toys.SHAPE), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert module(x).shape == (4, 10)
    assert manifest["method"] == result.config


STATIC_VARIANTS = [
    {"observer": "minmax"},
    {"observer": "moving_average"},
    {"observer": "histogram"},
    {"observer": "percentile", "percentile": 99.9},
    {"granularity": "per_tensor"},
    {"granularity": "per_channel"},
    {"activation": "symmetric"},
    {"activation": "affine"},
    {"backend": "x86"},
    {"backend": "fbgemm"},
    {"backend": "qnnpack"},
    {"backend": "onednn"},
    {"backend": "qnnpack", "granularity": "per_tensor", "activation": "symmetric", "reduce_range": True},
]


@pytest.mark.parametrize("variant", STATIC_VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
@pytest.mark.parametrize("toy", ["mlp", "cnn"])
def test_static_int8(trial: Callable[..., Any], toy: str, variant: dict[str, Any]) -> None:
    result, out = trial(TOYS[toy], "static", **CAL, **variant)
    check_common(result, out, "static")
    backend = variant.get("backend", "x86")
    assert result.quantized_engine == backend
    assert result.backend == backend
    assert result.observer == variant.get("observer", "minmax")
    assert result.granularity == variant.get("granularity", "per_channel")
    assert result.simulated is False
    assert result.size_kind == "artifact"
    assert result.size_ratio < 0.8
    assert result.coverage == 1.0 and result.coverage_macs == 1.0
    assert result.agreement >= 0.9
    assert result.sqnr_db > 20
    assert result.latency[0]["speedup"] is not None and result.latency[0]["speedup"] > 0
    assert not any(w.startswith("simulated") for w in result.warnings)
    assert "calibrate" in result.timings_s and "convert" in result.timings_s


@pytest.mark.parametrize("toy", ["mlp", "cnn"])
def test_qat_int8(trial: Callable[..., Any], toy: str) -> None:
    result, out = trial(TOYS[toy], "qat", steps=3, batch_size=16, **CAL)
    check_common(result, out, "qat")
    assert result.simulated is False
    assert result.quantized_engine == "x86"
    assert result.coverage == 1.0
    assert result.agreement >= 0.75 and result.sqnr_db > 10
    assert result.timings_s["train"] > 0


@pytest.mark.parametrize("has_vnni", [False, True])
def test_full_range_activations_on_a_cpu_without_vnni_carry_a_warning(
    trial: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, has_vnni: bool
) -> None:
    monkeypatch.setattr("farm.quant.qconfig.cpu_has_vnni", lambda: has_vnni)
    forced, _ = trial(MLP, "static", backend="onednn", reduce_range=False, **CAL)
    default, _ = trial(MLP, "static", backend="onednn", **CAL)
    saturating = [w for w in forced.warnings if "saturate" in w]
    assert bool(saturating) is not has_vnni
    assert not [w for w in default.warnings if "saturate" in w]  # the default is 7-bit on onednn


def test_qnnpack_full_range_activations_never_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.quant.qconfig import saturation_warning

    monkeypatch.setattr("farm.quant.qconfig.cpu_has_vnni", lambda: False)
    assert saturation_warning(parse_method("static", {"backend": "qnnpack"})) is None
    assert saturation_warning(parse_method("static", {"backend": "x86", "reduce_range": False})) is not None
    assert saturation_warning(parse_method("static", {"backend": "x86", "bits": 6, "reduce_range": False})) is None


@pytest.mark.parametrize("method", ["static", "qat"])
@pytest.mark.parametrize("toy", ["mlp", "cnn"])
def test_four_bits_are_simulated(trial: Callable[..., Any], toy: str, method: str) -> None:
    extra = {"steps": 3, "batch_size": 16} if method == "qat" else {}
    result, out = trial(TOYS[toy], method, bits=4, **CAL, **extra)
    check_common(result, out, method)
    assert result.bits == 4
    assert result.simulated is True
    assert result.size_kind == "packed_estimate"
    assert result.size_ratio < 0.25  # about 4 of 32 bits per weight, plus scales
    assert result.size_bytes != result.artifact["size_bytes"]
    assert result.latency[0]["speedup"] is None
    assert result.quantized_engine is None
    assert result.coverage == 1.0
    assert any(w.startswith("simulated: int4") for w in result.warnings)
    assert result.agreement >= 0.6 and result.sqnr_db > 8 and result.cosine > 0.95


def test_fewer_bits_lose_more_fidelity(trial: Callable[..., Any]) -> None:
    sqnr = {bits: trial(CNN, "static", bits=bits, **CAL)[0].sqnr_db for bits in (2, 4, 6, 8)}
    assert sqnr[2] < sqnr[4] < sqnr[6] < sqnr[8]


def test_eager_mode_on_a_model_with_quant_stubs(trial: Callable[..., Any]) -> None:
    model = "entrypoint:tests.toys:stubbed_cnn"
    result, out = trial(model, "static", mode="eager", **CAL)
    check_common(result, out, "static")
    assert result.quantized_engine == "x86"
    assert result.agreement >= 0.9 and result.sqnr_db > 20
    assert result.coverage == 1.0


# apply_method directly: what the converted model is made of.


def context(model_ref: str = "toy", *, teacher: nn.Module | None = None, **kwargs: Any) -> QuantContext:
    gen = torch.Generator().manual_seed(7)
    calibration = TensorSplit(torch.randn((32, *toys.SHAPE), generator=gen))
    return QuantContext(
        model_ref=model_ref,
        example_input=calibration.x[:1],
        calibration=calibration,
        train=TensorSplit(torch.randn((64, *toys.SHAPE), generator=gen)),
        labelled=False,
        teacher=teacher,
        **kwargs,
    )


def check_close_to(model: nn.Module, outcome: QuantOutcome, min_sqnr_db: float) -> None:
    x = torch.randn((16, *toys.SHAPE), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), outcome.active():
        expected, got = model(x), outcome.forward(outcome.prepare_input(x)).float()
    assert got.shape == expected.shape
    assert sqnr_db(expected, got) > min_sqnr_db


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("granularity", "activation"), [("per_channel", "affine"), ("per_tensor", "symmetric")], ids=["pc-aff", "pt-sym"]
)
def test_static_int8_holds_real_quantized_modules(backend: str, granularity: str, activation: str) -> None:
    model = toys.tiny_cnn()
    cfg = parse_method("static", {"backend": backend, "granularity": granularity, "activation": activation, **CAL})
    outcome = apply_method(model, cfg, context())
    names = quantized_modules(outcome.model)
    assert "Linear" in names and names.count("ConvReLU2d") == 3, names
    assert outcome.engine == backend and outcome.simulated is False
    assert not any(isinstance(m, nn.Conv2d) for m in outcome.model.modules())  # no fp32 conv left
    check_close_to(model, outcome, 20)
    # the model given is left as it was
    assert all(type(m).__module__.startswith(("torch.nn", "tests")) for m in model.modules())


@pytest.mark.parametrize("observer", ["minmax", "moving_average", "histogram", "percentile"])
def test_every_observer_converts_the_mlp_to_int8(observer: str) -> None:
    model = toys.tiny_mlp()
    outcome = apply_method(model, parse_method("static", {"observer": observer, **CAL}), context())
    names = quantized_modules(outcome.model)
    assert names.count("LinearReLU") == 1 and names.count("Linear") == 1, names  # Linear+ReLU fused, then the head
    check_close_to(model, outcome, 20)


def test_qat_int8_holds_real_quantized_modules() -> None:
    model = toys.tiny_cnn()
    cfg = parse_method("qat", {"steps": 3, "batch_size": 16, "device": "cpu", **CAL})
    outcome = apply_method(model, cfg, context(teacher=model))
    names = quantized_modules(outcome.model)
    assert "Linear" in names and names.count("ConvReLU2d") == 3, names
    assert outcome.timings_s["train"] > 0
    check_close_to(model, outcome, 10)


def test_qat_without_labels_or_teacher_is_a_config_error() -> None:
    cfg = parse_method("qat", {"steps": 1, "device": "cpu", **CAL})
    with pytest.raises(ConfigError) as e:
        apply_method(toys.tiny_mlp(), cfg, context(teacher=None))
    assert "teacher" in str(e.value)
    with pytest.raises(ConfigError) as e:
        apply_method(toys.tiny_mlp(), cfg.replace(loss="ce"), context(teacher=toys.tiny_mlp()))
    assert "needs labels" in str(e.value)


def test_simulated_static_keeps_fake_quantizers_not_int8_kernels() -> None:
    outcome = apply_method(toys.tiny_cnn(), parse_method("static", {"bits": 4, **CAL}), context())
    assert outcome.simulated is True
    assert quantized_modules(outcome.model) == []
    assert sum(hasattr(m, "weight_fake_quant") for m in outcome.model.modules()) == 4
    assert outcome.packed_size_bytes is not None and outcome.packed_size_bytes > 0


def test_eager_mode_converts_between_the_stubs() -> None:
    model = toys.stubbed_cnn()
    outcome = apply_method(model, parse_method("static", {"mode": "eager", **CAL}), context())
    names = quantized_modules(outcome.model)
    assert {"Quantize", "DeQuantize", "ConvReLU2d", "Linear"} <= set(names), names  # fuse_model() was used
    check_close_to(model, outcome, 20)


def test_eager_mode_without_quant_stub_names_quant_stub() -> None:
    with pytest.raises(QuantizationError) as e:
        apply_method(toys.tiny_mlp(), parse_method("static", {"mode": "eager", **CAL}), context("my-mlp"))
    text = str(e.value)
    assert "QuantStub" in text and "my-mlp" in text and "mode fx" in text


@pytest.mark.parametrize("method", ["static", "qat"])
def test_untraceable_model_names_the_method_and_what_works_instead(method: str) -> None:
    params = {"steps": 1, "device": "cpu"} if method == "qat" else {}
    cfg = parse_method(method, {**CAL, **params})
    with pytest.raises(QuantizationError) as e:
        apply_method(toys.branchy(), cfg, context("entrypoint:tests.toys:branchy", teacher=toys.branchy()))
    text = str(e.value)
    assert text.startswith(f"{method}: torch.fx cannot trace entrypoint:tests.toys:branchy")
    assert "'dynamic'" in text
    assert "QuantStub/DeQuantStub" in text
    assert "\n" not in text


def test_dynamic_works_on_the_untraceable_model_as_the_error_says() -> None:
    model = toys.branchy()
    outcome = apply_method(model, parse_method("dynamic"), context())
    assert quantized_modules(outcome.model).count("Linear") == 2
    check_close_to(model, outcome, 20)


@pytest.mark.parametrize("method", ["static", "qat", "dynamic"])
def test_serialized_graphs_are_refused_by_module_rewriting_methods(method: str) -> None:
    graph = torch.jit.script(toys.tiny_mlp())
    params = {"device": "cpu", **CAL} if method == "qat" else (CAL if method == "static" else {})
    with pytest.raises(QuantizationError) as e:
        apply_method(graph, parse_method(method, params), context("file:mlp.pt", graph=True))
    assert "serialized graph" in str(e.value) and method in str(e.value)


def test_graph_files_run_fp32_and_bf16(tmp_path: Any, run_trial: Callable[..., Any]) -> None:
    path = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.script(toys.tiny_mlp()), str(path))
    fp32, _ = run_trial(f"file:{path}", DATASET, "fp32")
    assert fp32.agreement == 1.0
    bf16, _ = run_trial(f"file:{path}", DATASET, "bf16")
    assert bf16.agreement >= 0.9 and bf16.coverage is None  # no module structure to measure


def test_fp16_without_cuda_is_a_config_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError) as e:
        apply_method(toys.tiny_mlp(), parse_method("fp16"), context(device="cpu"))
    assert "CUDA" in str(e.value)


def test_unavailable_engine_is_a_quantization_error() -> None:
    from farm.quant.registry import quantized_engine

    with pytest.raises(QuantizationError) as e, quantized_engine("no-such-engine"):
        pass
    assert "no-such-engine" in str(e.value)


def test_should_stop_cancels_a_job(allow_toys: str, tmp_path: Any) -> None:
    spec = JobSpec(MLP, DATASET, parse_method("static", CAL), benchmark=fast_benchmark())
    with pytest.raises(Cancelled):
        run_job(spec, tmp_path / "out", should_stop=lambda: True)


def test_static_traces_without_per_node_stack_traces_and_converts_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.ao's tracer recorded a symbolized stack trace per node (its first use imported torch._inductor and
    torch._dynamo, 0.9 s of each process's first static job): off while farm traces, back after, and the model
    converts to the same int8 modules and outputs as with them recorded."""
    import torch.fx.config as fx_config

    from farm.quant import static

    prepared: list[Any] = []
    real = static.fx_prepare

    def keep(method: str, ctx: Any, build: Callable[[], Any]) -> Any:
        prepared.append(real(method, ctx, build))
        return prepared[-1]

    monkeypatch.setattr(static, "fx_prepare", keep)
    model = toys.tiny_cnn()
    cfg = parse_method("static", CAL)
    ours = apply_method(model, cfg, context())
    assert fx_config.do_not_emit_stack_traces is False  # restored
    assert prepared and not any(n.stack_trace for n in prepared[-1].graph.nodes)
    monkeypatch.setattr(static, "_no_stack_traces", contextlib.nullcontext)  # torch.ao's default: recorded
    theirs = apply_method(model, cfg, context())
    assert any(n.stack_trace for n in prepared[-1].graph.nodes)
    assert quantized_modules(ours.model) == quantized_modules(theirs.model)
    x = torch.randn((8, *toys.SHAPE), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(ours.forward(ours.prepare_input(x)), theirs.forward(theirs.prepare_input(x)))
