"""Jobs on ONNX Runtime through run_job: the model exported and built by onnxruntime (fp32, dynamic, static, qat),
evaluated against the torch fp32 reference, timed side by side with ONNX Runtime's own fp32, and shipped as
``model.onnx`` with the runtime in the manifest and the result; the one-line refusals."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'quantfarm[onnx]')")

import onnx  # noqa: E402
import onnxruntime  # noqa: E402

from farm.errors import ArtifactError, ConfigError, QuantizationError  # noqa: E402
from farm.jobs.contract import JobResult, JobSpec  # noqa: E402
from farm.jobs.steps import run_job  # noqa: E402
from farm.quant.artifact import load_artifact  # noqa: E402
from farm.quant.config import parse_method  # noqa: E402
from farm.quant.reference import REFERENCE_FILE, Reference  # noqa: E402
from farm.zoo.data import load_dataset  # noqa: E402
from tests.conftest import fast_benchmark  # noqa: E402

CNN, DIGITS = "farm:digits-cnn", "sklearn:digits"
ENCODER, TOKENS = "farm:tiny-encoder", "tokens:16?n_test=32&n_calibration=32"
HERE = "tests.unit.runtimes.test_jobs"
ORT = {"runtime": "onnxruntime"}


@pytest.fixture(scope="module")
def cnn_reference(reference_for: Callable[[str, str], Any]) -> Reference:
    reference: Reference = reference_for(CNN, DIGITS)
    return reference


def manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return data


def op_types(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def assert_ort_result(result: JobResult, out: Path) -> None:
    """What every onnxruntime job records: the runtime in the result, the manifest and the artifact."""
    assert result.runtime == "onnxruntime" and result.deployed_as == "onnxruntime"
    assert result.runtime_version == onnxruntime.__version__
    assert result.execution_provider == "CPUExecutionProvider"
    assert result.opset is not None and result.opset >= 13
    assert result.health == "ok"
    assert result.artifact is not None and result.artifact["file"] == "model.onnx"
    assert result.artifact["format"] == "onnx"
    assert result.size_bytes == (out / "model.onnx").stat().st_size == result.artifact["size_bytes"]
    assert not (out / "model.pt").exists() and not (out / REFERENCE_FILE).exists()  # a trial, not the reference
    m = manifest(out)
    assert (m["runtime"], m["runtime_version"], m["execution_provider"]) == (
        "onnxruntime",
        onnxruntime.__version__,
        "CPUExecutionProvider",
    )
    assert m["opset"] == result.opset and m["exporter"] == "torchscript"
    assert m["method"]["runtime"] == "onnxruntime"
    assert m["metrics"]["runtime"] == "onnxruntime"
    lat = result.latency[0]
    assert lat["fp32_deployed_as"] == "onnxruntime" and lat["fp32_eager_p50_ms"] is None


def digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    test = load_dataset(DIGITS).test
    return test.x, test.y  # type: ignore[attr-defined]


@pytest.mark.slow  # the first digits-cnn job of a session trains the model (5-10 s)
def test_fp32_on_onnxruntime_is_a_trial_with_torchs_accuracy(
    run_trial: Callable[..., Any], cnn_reference: Reference
) -> None:
    result, out = run_trial(CNN, DIGITS, "fp32", reference=cnn_reference, **ORT)
    assert_ort_result(result, out)
    assert result.accuracy == pytest.approx(cnn_reference.accuracy, abs=0.003)
    assert result.agreement is not None and result.agreement >= 0.997
    assert result.cosine is not None and result.cosine > 0.99999
    assert result.coverage is None  # nothing quantized
    # Timed alone, like the torch fp32 job: its speedup over its own runtime's fp32 is 1.0.
    assert result.latency[0]["speedup"] == 1.0 and "baseline_p50_ms" not in result.latency[0]
    assert result.timings_s["export"] > 0 and result.timings_s["build"] >= result.timings_s["export"]
    model, m = load_artifact(out)
    assert m["artifact"]["format"] == "onnx"
    x, _ = digits_test()
    got = model(x[:20])
    assert got.shape == (20, 10)
    assert (got - cnn_reference.outputs[:20]).abs().max().item() < 1e-3


@pytest.mark.slow  # the first digits-cnn job of a session trains the model (5-10 s)
def test_dynamic_per_channel_is_timed_beside_onnxruntimes_fp32(
    run_trial: Callable[..., Any], cnn_reference: Reference
) -> None:
    result, out = run_trial(CNN, DIGITS, "dynamic", reference=cnn_reference, granularity="per_channel", **ORT)
    assert_ort_result(result, out)
    assert result.accuracy_drop is not None and result.accuracy_drop <= 0.02
    # onnxruntime's dynamic quantizer rewrites the Conv layers torch's dynamic method leaves in fp32.
    assert "ConvInteger" in op_types(out / "model.onnx")
    assert any("ConvInteger" in w for w in result.warnings)
    assert result.coverage is not None and result.coverage > 0.9 and result.coverage_macs is None
    assert result.coverage_layers == result.coverage_layers_total and result.coverage_layers_total >= 3
    lat = result.latency[0]
    assert lat["speedup"] is not None and lat["speedup"] > 0 and lat["baseline_p50_ms"] > 0
    assert lat["speedup_ci_low"] <= lat["speedup"] <= lat["speedup_ci_high"]
    info = manifest(out)["runtime_info"]
    assert info["per_channel"] is True and info["mode"] == "dynamic"
    assert result.size_ratio is not None and result.size_ratio < 0.6
    model, _ = load_artifact(out)
    x, _ = digits_test()
    assert (
        torch.nn.functional.cosine_similarity(model(x[:50]).flatten(), cnn_reference.outputs[:50].flatten(), 0) > 0.99
    )


@pytest.mark.slow  # the first digits-cnn job of a session trains the model (5-10 s)
@pytest.mark.parametrize(("observer", "calibrate_method"), [("minmax", "MinMax"), ("histogram", "Entropy")])
def test_static_calibrates_on_the_jobs_subset_in_torchs_batches(
    run_trial: Callable[..., Any], cnn_reference: Reference, observer: str, calibrate_method: str
) -> None:
    params = {"observer": observer, "calibration_size": 64, **ORT}
    result, out = run_trial(CNN, DIGITS, "static", reference=cnn_reference, **params)
    assert_ort_result(result, out)
    assert result.accuracy_drop is not None and result.accuracy_drop <= 0.02
    assert result.coverage is not None and result.coverage > 0.9
    assert result.coverage_layers == result.coverage_layers_total
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(out / "model.onnx")
    info = manifest(out)["runtime_info"]
    assert info["calibrate_method"] == calibrate_method
    assert info["calibration_batches"] == 2  # 64 samples in torch calibration's batches of 32
    assert info["per_channel"] is True  # the static default granularity
    assert result.latency[0]["speedup"] is not None


@pytest.mark.slow  # the first digits-cnn job of a session trains the model (5-10 s)
def test_qat_fine_tunes_in_torch_and_ships_an_int8_qdq_graph(
    run_trial: Callable[..., Any], cnn_reference: Reference
) -> None:
    params = {"steps": 8, "calibration_size": 32, "batch_size": 32, **ORT}
    result, out = run_trial(CNN, DIGITS, "qat", reference=cnn_reference, **params)
    assert_ort_result(result, out)
    assert result.accuracy_drop is not None and result.accuracy_drop <= 0.03
    types = op_types(out / "model.onnx")
    assert "BatchNormalization" not in types and {"QuantizeLinear", "DequantizeLinear"} <= types
    info = manifest(out)["runtime_info"]
    assert info["folded_batch_norms"] >= 1 and info["int8_weights"] >= info["folded_batch_norms"]
    assert result.coverage is not None and result.coverage > 0.9  # weights stored as int8 initializers
    assert "train" in result.timings_s


@pytest.mark.parametrize("method", ["fp32", "dynamic"])
def test_encoder_token_ids_stay_int64_on_onnxruntime(tmp_path: Path, method: str) -> None:
    spec = JobSpec(ENCODER, TOKENS, parse_method(method, ORT), benchmark=fast_benchmark(2))
    result = run_job(spec, tmp_path / "out")
    assert_ort_result(result, tmp_path / "out")
    assert result.cosine is not None and result.cosine > (0.9999 if method == "fp32" else 0.95)
    assert [i["dtype"] for i in manifest(tmp_path / "out")["inputs"]] == ["int64", "int64"]
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.INT64] * 2
    model, _ = load_artifact(tmp_path / "out")
    batch = load_dataset(TOKENS).test.x  # type: ignore[attr-defined]
    out = model(input_ids=batch["input_ids"][:4], attention_mask=batch["attention_mask"][:4])
    logits = out["logits"] if isinstance(out, dict) else out
    assert logits.shape[0] == 4 and bool(torch.isfinite(logits).all())
    onnx_file = tmp_path / "out" / "model.onnx"
    data = onnx_file.read_bytes()
    onnx_file.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        load_artifact(tmp_path / "out")


def test_fp16_on_a_cpu_provider_is_refused_in_one_line_before_anything_is_written(tmp_path: Path) -> None:
    cpu = dataclasses.replace(fast_benchmark(1), device="cpu")
    spec = JobSpec(CNN, DIGITS, parse_method("fp16", ORT), benchmark=cpu)
    with pytest.raises(ConfigError) as e:
        run_job(spec, tmp_path / "out")
    text = str(e.value)
    assert "\n" not in text and "CUDA execution provider" in text and "CPUExecutionProvider" in text
    assert not (tmp_path / "out").exists()


class Eigen(nn.Module):
    """Runs in torch; torch's ONNX exporter has no linalg_eigvals."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x.reshape(-1, 8, 8)).real


def eigen_model() -> nn.Module:
    return Eigen().eval()


def test_a_model_that_cannot_be_exported_fails_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_ALLOWED_MODULES", HERE)
    data = "synthetic:1x8x8?n_test=8&n_calibration=8"
    spec = JobSpec(f"entrypoint:{HERE}:eigen_model", data, parse_method("dynamic", ORT), benchmark=fast_benchmark(1))
    with pytest.raises(QuantizationError) as e:
        run_job(spec, tmp_path / "out")
    text = str(e.value)
    assert "\n" not in text and "ONNX export failed" in text and "linalg_eigvals" in text
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_a_runtime_missing_here_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.runtimes import engine

    line = "runtime onnxruntime needs onnxruntime, which this machine lacks: pip install 'quantfarm[onnx]'"
    monkeypatch.setattr(engine, "unavailable", lambda runtime: line)
    with pytest.raises(ConfigError) as e:
        engine.check(parse_method("dynamic", ORT), "cpu")
    assert str(e.value) == line
    engine.check(parse_method("dynamic"), "cpu")  # torch needs nothing more


def test_a_torch_results_dict_has_no_runtime_fields_and_a_runtime_one_has_them() -> None:
    blank = {"config": {}, "bits": None, "calibration_size": None, "backend": None, "observer": None}
    torch_result = JobResult("m", "d", "fp32", **blank, granularity=None, device="cpu", seed=0, threads=1)
    assert not {"runtime", "runtime_version", "execution_provider", "opset"} & set(torch_result.to_dict())
    torch_result.runtime, torch_result.opset = "onnxruntime", 17
    assert torch_result.to_dict()["runtime"] == "onnxruntime" and torch_result.to_dict()["opset"] == 17
    assert "execution_provider" not in torch_result.to_dict()
