"""OpenVINO on CPU (farm/runtimes/openvino.py): fp32 and NNCF static on farm:digits-cnn with sklearn:digits, fp32
and weight-compressed dynamic on farm:tiny-encoder with tokens:16 (int64 inputs, dict outputs), and the one-line
refusals. Skipped, with the reason, when openvino or nncf is not installed (pip install 'quantfarm[openvino]')."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from farm.errors import QuantizationError
from farm.quant.config import parse_method
from farm.quant.context import QuantContext
from farm.runtimes import openvino as ov_runtime
from farm.zoo.data import calibration_subset, first_batch, iterate, load_dataset
from farm.zoo.models import load_model

HAVE_OV = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
needs_ov = pytest.mark.skipif(not HAVE_OV, reason="openvino / nncf not installed (pip install 'quantfarm[openvino]')")


@functools.cache
def digits() -> tuple[Any, Any]:
    return load_model("farm:digits-cnn").module, load_dataset("sklearn:digits")


@functools.cache
def encoder() -> tuple[Any, Any]:
    return load_model("farm:tiny-encoder").module, load_dataset("tokens:16")


def context(ref: str, splits: Any, calibration_size: int = 0) -> QuantContext:
    calibration = calibration_subset(splits, calibration_size, 0) if calibration_size else None
    return QuantContext(ref, example_input=first_batch(splits.test, 2), calibration=calibration, batch_size=32)


def run_all(outcome: Any, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of ``outcome`` on every sample, as the harness drives it."""
    outs, labels = [], []
    with outcome.active():
        for x, y in iterate(dataset, 64):
            out = outcome.forward(outcome.prepare_input(x))
            outs.append(out if isinstance(out, torch.Tensor) else out["logits"])
            labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def torch_logits(model: Any, dataset: Any) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([(model(**x)["logits"] if isinstance(x, dict) else model(x)) for x, _ in iterate(dataset, 64)])


@needs_ov
def test_fp32_digits_cnn_matches_torch_and_writes_the_ir(tmp_path: Path) -> None:
    import openvino as ov

    model, splits = digits()
    built = ov_runtime.build(model, parse_method("fp32"), context("farm:digits-cnn", splits), tmp_path, threads=1)
    logits, labels = run_all(built.outcome, splits.test)
    reference = torch_logits(model, splits.test)
    assert (logits - reference).abs().max().item() < 1e-3
    assert (logits.argmax(1) == labels).float().mean() == (reference.argmax(1) == labels).float().mean()
    assert [f.name for f in built.files] == ["model.xml", "model.bin"] and all(f.is_file() for f in built.files)
    assert built.size_bytes == sum(f.stat().st_size for f in built.files)
    params = sum(p.numel() for p in model.parameters())
    assert built.size_bytes > 3.5 * params  # fp32 weights kept: not halved to fp16 by save_model's default
    assert built.baseline is None and built.coverage is None
    assert built.info["runtime"] == "openvino" and ov.__version__.startswith(built.info["runtime_version"])
    assert built.outcome.model.get_property("INFERENCE_NUM_THREADS") == 1
    outcome = built.outcome
    assert (outcome.device, outcome.simulated, outcome.engine, outcome.autocast_dtype) == ("cpu", False, None, None)
    assert set(built.timings_s) == {"convert", "compile"}


@needs_ov
def test_forward_binds_its_inputs_once_and_runs_the_request_without_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prepared batch run over and over (the latency harness) is bound to the request once, and the request runs
    with no arguments: ``request.infer(arrays)`` dispatched the inputs on every call, through a path whose cost grew
    with the libraries loaded in the process. Outputs are copies, not the request's buffers a next run overwrites,
    and a batch changed in place is what the request reads."""
    model, splits = digits()
    built = ov_runtime.build(model, parse_method("fp32"), context("farm:digits-cnn", splits), tmp_path, threads=1)
    outcome = built.outcome
    request = outcome.request
    calls: list[str] = []

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(request, name)

        def set_input_tensor(self, *args: Any) -> None:
            calls.append("bind")
            request.set_input_tensor(*args)

        def infer(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(f"infer{len(args) + len(kwargs)}")
            return request.infer(*args, **kwargs)

    monkeypatch.setattr(outcome, "request", Spy())
    batches = [x for x, _ in iterate(splits.test, 8)][:2]
    prepared = [a.copy() for a in outcome.prepare_input(batches[0])]  # changed in place below, not the batch
    first = outcome.forward(prepared)
    again = [outcome.forward(prepared) for _ in range(3)]
    assert calls == ["bind", "infer0", "infer0", "infer0", "infer0"]
    other = outcome.forward(outcome.prepare_input(batches[1]))
    assert calls[-2:] == ["bind", "infer0"]
    with torch.no_grad():
        expected = [model(b) for b in batches]
    assert (first - expected[0]).abs().max().item() < 1e-3  # not overwritten by the runs after it
    assert all(torch.equal(a, first) for a in again)
    assert (other - expected[1]).abs().max().item() < 1e-3
    prepared[0][...] = outcome.prepare_input(batches[1])[0]  # the bound batch changed in place
    assert (outcome.forward(prepared) - expected[1]).abs().max().item() < 1e-3
    calls.clear()
    small = batches[0][:5]  # evaluation's last batch: another shape, bound anew
    assert (outcome.forward(outcome.prepare_input(small)) - model(small).detach()).abs().max().item() < 1e-3
    assert calls == ["bind", "infer0"]
    # An array the request cannot share (here not contiguous) is bound as a copy on every call, so it is always
    # what the request reads.
    strided = [np.asfortranarray(outcome.prepare_input(batches[0])[0])]
    assert not strided[0].flags.c_contiguous
    calls.clear()
    assert (outcome.forward(strided) - expected[0]).abs().max().item() < 1e-3
    strided[0][...] = outcome.prepare_input(batches[1])[0]
    assert (outcome.forward(strided) - expected[1]).abs().max().item() < 1e-3
    assert calls == ["bind", "infer0", "bind", "infer0"]


@needs_ov
def test_static_digits_cnn_is_int8_close_to_torch_and_timed_against_fp32(tmp_path: Path) -> None:
    import openvino as ov

    model, splits = digits()
    ctx = context("farm:digits-cnn", splits, calibration_size=64)
    built = ov_runtime.build(model, parse_method("static", {"calibration_size": 64}), ctx, tmp_path, threads=1)
    logits, labels = run_all(built.outcome, splits.test)
    reference = torch_logits(model, splits.test)
    accuracy, torch_accuracy = ((t.argmax(1) == labels).float().mean().item() for t in (logits, reference))
    assert accuracy > torch_accuracy - 0.03
    coverage = built.coverage
    assert coverage is not None and coverage["by_op"]["Convolution"] == [4, 4]
    assert coverage["layers"] == coverage["layers_total"] == 5 and coverage["params"] > 0.95
    assert built.info["preset"] == "mixed" and built.info["calibration_batches"] == 2
    assert built.info["subset_size"] == 64 and built.info["model_type"] is None
    saved = ov.Core().read_model(str(tmp_path / "model.xml"))
    assert any(op.get_type_name() == "FakeQuantize" for op in saved.get_ordered_ops())
    base_logits, _ = run_all(built.baseline, splits.test)
    assert (base_logits - reference).abs().max().item() < 1e-3  # the baseline is the fp32 model
    assert "quantize" in built.timings_s


@needs_ov
def test_converting_and_calibrating_hold_the_measurement_lock_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NNCF's calibration and the conversion compute: a benchmark of another job on this host must not time
    meanwhile (issue 12's lock pauses every compute phase, OpenVINO's as well as torch's and ORT's)."""
    import fcntl

    from farm.quant import isolation

    lock = isolation.MeasureLock(tmp_path / "locks")
    (tmp_path / "locks").mkdir()
    monkeypatch.setattr(isolation, "_LOCK", lock)
    seen: dict[str, bool] = {}

    def exclusive_free() -> bool:
        fd = os.open(lock.paths[1], os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
        return True

    def watched(name: str, fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            seen[name] = exclusive_free()
            return fn(*args, **kwargs)

        return call

    monkeypatch.setattr(ov_runtime, "convert", watched("convert", ov_runtime.convert))
    monkeypatch.setattr(ov_runtime, "quantize_static", watched("quantize", ov_runtime.quantize_static))
    model, splits = digits()
    ctx = context("farm:digits-cnn", splits, calibration_size=16)
    ov_runtime.build(model, parse_method("static", {"calibration_size": 16}), ctx, tmp_path / "out", threads=1)
    assert seen == {"convert": False, "quantize": False}  # an exclusive timer could not have got in
    assert exclusive_free()  # and it is let go after


@needs_ov
def test_fp32_tiny_encoder_keeps_int64_inputs_and_the_dict_output(tmp_path: Path) -> None:
    model, splits = encoder()
    built = ov_runtime.build(model, parse_method("fp32"), context("farm:tiny-encoder", splits), tmp_path)
    assert [dtype.name for _, dtype in built.outcome.inputs] == ["int64", "int64"]
    assert built.info["input_names"] == ["input_ids", "attention_mask"] and built.info["outputs"] == "dict"
    batch = first_batch(splits.test, 5)
    swapped = {"attention_mask": batch["attention_mask"], "input_ids": batch["input_ids"]}  # matched by key
    out = built.outcome.forward(built.outcome.prepare_input(swapped))
    with torch.no_grad():
        ref = model(**batch)
    assert set(out) == {"embedding", "logits"}
    assert (out["embedding"] - ref["embedding"]).abs().max().item() < 1e-4
    assert (out["logits"] - ref["logits"]).abs().max().item() < 1e-4


def _ir_text(ov_model: Any, path: Path) -> str:
    """The IR's XML with the names OpenVINO numbers per process (Model0, Multiply_3125) made alike."""
    import re

    import openvino

    openvino.save_model(ov_model, path)
    return re.sub(r"(Model|_)\d+", r"\1N", path.read_text())


@needs_ov
@pytest.mark.parametrize("case", ["digits", "encoder"])
def test_conversion_traces_once_without_the_check_and_builds_the_same_ir(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.jit.trace's check traced the model again only to warn (silenced), importing torch.distributed.tensor
    (0.64 s a process): the decoder OpenVINO would build, without the check, converts to the same IR."""
    model, splits = digits() if case == "digits" else encoder()
    example = first_batch(splits.test, 4)
    calls: list[dict[str, Any]] = []
    trace = torch.jit.trace

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return trace(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "trace", recording)
    ours, _ = ov_runtime.convert(model, example)
    assert calls and all(kw.get("check_trace") is False for kw in calls)
    monkeypatch.setattr(ov_runtime, "_decoder", lambda wrapper, tensors: wrapper)  # what convert_model does alone
    calls.clear()
    theirs, _ = ov_runtime.convert(model, example)
    assert calls and all(kw.get("check_trace", True) is True for kw in calls)
    assert _ir_text(ours, tmp_path / "ours.xml") == _ir_text(theirs, tmp_path / "theirs.xml")


@needs_ov
def test_dynamic_compresses_matmul_weights_to_int8(tmp_path: Path) -> None:
    model, splits = encoder()
    built = ov_runtime.build(model, parse_method("dynamic"), context("farm:tiny-encoder", splits), tmp_path)
    assert built.coverage is not None and built.coverage["by_op"]["MatMul"][0] >= 1
    assert built.coverage["params"] > 0.5 and built.info["weight_compression"] == "INT8_SYM"
    assert built.warnings == [ov_runtime.PER_CHANNEL_NOTE]  # dynamic's default granularity is per_tensor
    batch = first_batch(splits.test, 8)
    out = built.outcome.forward(built.outcome.prepare_input(batch))
    with torch.no_grad():
        ref = model(**batch)["embedding"]
    cosine = torch.nn.functional.cosine_similarity(out["embedding"].flatten(), ref.flatten(), dim=0)
    assert cosine.item() > 0.99
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert built.size_bytes < 0.5 * fp32_bytes  # int8 weights in the IR


@needs_ov
def test_refusals_are_one_line(tmp_path: Path) -> None:
    model, splits = digits()
    ctx = context("farm:digits-cnn", splits, calibration_size=32)
    with pytest.raises(QuantizationError, match=r"cannot run method 'qat'; it runs: fp32, dynamic, static"):
        ov_runtime.build(model, parse_method("qat"), ctx, tmp_path)
    with pytest.raises(QuantizationError, match="int8 only; bits must be 8, not 4"):
        ov_runtime.build(model, parse_method("static", {"bits": 4, "calibration_size": 32}), ctx, tmp_path)
    with pytest.raises(QuantizationError, match="needs calibration batches"):
        ov_runtime.build(model, parse_method("static"), context("farm:digits-cnn", splits), tmp_path)
    with pytest.raises(QuantizationError, match="threads must be at least 1"):
        ov_runtime.build(model, parse_method("fp32"), ctx, tmp_path, threads=0)


@needs_ov
def test_dynamic_compresses_convolutions_and_refuses_a_model_without_weights(tmp_path: Path) -> None:
    convs = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3)).eval()
    ctx = QuantContext("convs", example_input=torch.randn(2, 1, 8, 8))
    built = ov_runtime.build(convs, parse_method("dynamic"), ctx, tmp_path / "convs")
    assert built.coverage is not None and built.coverage["by_op"] == {"Convolution": [2, 2]}  # unlike torch's
    with pytest.raises(QuantizationError, match="found no MatMul, Convolution or embedding weight to compress in relu"):
        relu = torch.nn.Sequential(torch.nn.ReLU()).eval()
        ov_runtime.build(relu, parse_method("dynamic"), QuantContext("relu", example_input=ctx.example_input), tmp_path)


def test_a_machine_without_openvino_is_told_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec

    def hide(name: str, *args: Any) -> Any:
        return None if name in ("openvino", "nncf") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", hide)
    with pytest.raises(QuantizationError) as caught:
        ov_runtime.build(torch.nn.Linear(4, 2), parse_method("fp32"), context_for_linear(), tmp_path)
    message = str(caught.value)
    assert "\n" not in message and "pip install 'quantfarm[openvino]'" in message and "openvino" in message


def context_for_linear() -> QuantContext:
    return QuantContext("linear", example_input=torch.randn(2, 4))


@needs_ov
def test_observers_map_to_nncf_range_estimators() -> None:
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    from farm.runtimes.openvino_quantize import check_static

    def estimator(**params: Any) -> Any:
        return check_static(parse_method("static", params))

    assert estimator() == RangeEstimatorParametersSet.MINMAX
    assert estimator(observer="moving_average") == RangeEstimatorParametersSet.MEAN_MINMAX
    assert estimator(observer="histogram") == RangeEstimatorParametersSet.HISTOGRAM
    assert estimator(observer="percentile", percentile=99.99) == RangeEstimatorParametersSet.MEAN_QUANTILE
    wider = estimator(observer="percentile", percentile=99.9)
    assert wider.min.quantile_outlier_prob == pytest.approx(1e-3) == wider.max.quantile_outlier_prob
