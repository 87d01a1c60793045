"""run_job on the built-in digits models: the figures the engine promises on real data, and job bookkeeping."""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from farm.errors import ConfigError, QuantizationError
from farm.jobs.contract import JobResult, JobSpec, jsonable
from farm.jobs.steps import run_job
from farm.quant.bench_config import BenchmarkConfig
from farm.quant.config import parse_method
from farm.quant.measure import evaluate
from farm.quant.reference import REFERENCE_FILE, Reference
from farm.quant.registry import QuantOutcome
from farm.zoo.data import TensorSplit
from tests import toys
from tests.conftest import fast_benchmark

CNN, MLP, DIGITS = "farm:digits-cnn", "farm:digits-mlp", "sklearn:digits"

# The first use of each digits model in a session trains it (5-10 s with its fp32 reference): those tests
# are marked slow, whichever of them runs first pays.


@pytest.fixture(scope="module")
def cnn_reference(reference_for: Callable[[str, str], Any]) -> Any:
    return reference_for(CNN, DIGITS)


@pytest.fixture(scope="module")
def mlp_reference(reference_for: Callable[[str, str], Any]) -> Any:
    return reference_for(MLP, DIGITS)


@pytest.mark.slow
def test_fp32_digits_cnn_is_accurate(run_trial: Callable[..., Any], cnn_reference: Reference) -> None:
    result, out = run_trial(CNN, DIGITS, "fp32", reference=cnn_reference)
    assert result.accuracy >= 0.97
    assert result.accuracy == cnn_reference.accuracy == result.accuracy_fp32
    assert result.accuracy_drop == 0.0 and result.accuracy_kind == "labels"
    assert result.top5 is not None and result.top5 >= result.accuracy
    assert len(cnn_reference.outputs) == len(cnn_reference.labels) == 360
    if platform.libc_ver()[0] == "glibc":  # every job fixes the allocator before timing, and says so
        assert result.fingerprint["allocator"].startswith("glibc steady")


@pytest.mark.slow
def test_fp32_digits_mlp_is_accurate(mlp_reference: Reference) -> None:
    assert mlp_reference.accuracy is not None and mlp_reference.accuracy >= 0.95


@pytest.mark.slow
def test_static_int8_on_digits_cnn_meets_the_targets(run_trial: Callable[..., Any], cnn_reference: Reference) -> None:
    result, out = run_trial(CNN, DIGITS, "static", reference=cnn_reference)
    assert result.simulated is False and result.quantized_engine == "x86"
    assert result.accuracy_drop <= 0.01
    assert result.size_ratio <= 0.30
    assert result.size_kind == "artifact"
    assert result.coverage == 1.0 and result.coverage_macs == 1.0
    assert result.latency[0]["speedup"] is not None
    assert not any("low coverage" in w for w in result.warnings)


def _test_cross_entropy(artifact_dir: Path) -> float:
    """Mean cross-entropy of the saved artifact on the digits test split (what QAT's fine-tuning minimises)."""
    from farm.quant.artifact import load_artifact
    from farm.zoo.data import iterate, load_dataset

    model, _ = load_artifact(artifact_dir)
    total, count = 0.0, 0
    with torch.inference_mode():
        for x, y in iterate(load_dataset(DIGITS).test, 120):
            total += float(torch.nn.functional.cross_entropy(model(x), y, reduction="sum"))
            count += len(y)
    return total / count


@pytest.mark.slow
def test_two_bit_qat_recovers_what_two_bit_static_ptq_loses(
    run_trial: Callable[..., Any], cnn_reference: Reference
) -> None:
    # Both runs use the same quantizer settings (per_channel weights, minmax observers, affine activations,
    # the same 256 calibration samples, seed 0), so the only difference is QAT's fine-tuning, with the usual
    # recipe: batch-norm statistics frozen from the start, ranges frozen half way. At 4 bits the two are too close
    # to call on one seed: which wins on top-1 and which on cross-entropy differs between machines (an AVX-512
    # Xeon: QAT lower loss, equal top-1; an AVX2 EPYC Zen 3: QAT better top-1 359 vs 358/360 but higher loss,
    # 0.0146 vs 0.0117), because fp32 training lands on slightly different weights. At 2 bits PTQ loses a quarter
    # of the digits and QAT wins it back (EPYC Zen 3: top-1 0.756 -> 0.956, loss 0.946 -> 0.202), a margin no
    # machine's rounding closes. Every step is seeded and run_job uses one thread.
    common = {"bits": 2, "granularity": "per_channel", "observer": "minmax", "activation": "affine", "seed": 0}
    recipe = {"steps": 136, "freeze_bn_after": 0, "freeze_observers_after": 68, "device": "cpu"}
    ptq, ptq_dir = run_trial(CNN, DIGITS, "static", reference=cnn_reference, **common)
    qat, qat_dir = run_trial(CNN, DIGITS, "qat", reference=cnn_reference, **recipe, **common)
    assert ptq.simulated and qat.simulated
    assert qat.accuracy >= ptq.accuracy + 0.1, (ptq.accuracy, qat.accuracy)
    assert qat.accuracy_drop <= 0.1
    ptq_loss, qat_loss = _test_cross_entropy(ptq_dir), _test_cross_entropy(qat_dir)
    assert qat_loss < 0.5 * ptq_loss, (ptq_loss, qat_loss)


@pytest.mark.slow
def test_dynamic_barely_touches_the_cnn(run_trial: Callable[..., Any], cnn_reference: Reference) -> None:
    result, _ = run_trial(CNN, DIGITS, "dynamic", reference=cnn_reference)
    assert result.coverage < 0.05
    assert result.coverage_macs < 0.05
    (warning,) = [w for w in result.warnings if w.startswith("low coverage")]
    assert "dynamic" in warning and "Conv2d" in warning


@pytest.mark.slow
def test_dynamic_covers_the_mlp(run_trial: Callable[..., Any], mlp_reference: Reference) -> None:
    result, _ = run_trial(MLP, DIGITS, "dynamic", reference=mlp_reference)
    assert result.coverage > 0.95 and result.coverage_macs > 0.95
    assert not any(w.startswith("low coverage") for w in result.warnings)
    assert result.accuracy_drop <= 0.01


@pytest.mark.slow
def test_calibration_size_larger_than_the_split_names_its_size(tmp_path: Path) -> None:
    spec = JobSpec(CNN, DIGITS, parse_method("static", {"calibration_size": 361}), benchmark=fast_benchmark())
    with pytest.raises(ConfigError) as e:
        run_job(spec, tmp_path / "out")
    assert "361" in str(e.value) and "(360 samples)" in str(e.value)


def test_reference_file_round_trips(cnn_reference: Reference, tmp_path: Path) -> None:
    path = tmp_path / REFERENCE_FILE
    cnn_reference.save(path)
    back = Reference.load(path)
    assert torch.equal(back.outputs, cnn_reference.outputs) and torch.equal(back.labels, cnn_reference.labels)
    assert back.accuracy == cnn_reference.accuracy
    assert back.latency.keys() == cnn_reference.latency.keys()
    assert back.latency[1]["latency_p50_ms"] == cnn_reference.latency[1]["latency_p50_ms"]
    assert (back.size_bytes, back.device, back.hardware_id) == (
        cnn_reference.size_bytes,
        cnn_reference.device,
        cnn_reference.hardware_id,
    )


def test_job_spec_round_trips() -> None:
    spec = JobSpec(
        CNN,
        DIGITS,
        parse_method("qat", {"bits": 4, "steps": 5}),
        weights="/w.pt",
        seed=3,
        benchmark=BenchmarkConfig(batch_sizes=(1, 4), threads=2),
    )
    assert JobSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_noop_returns_without_loading_anything(tmp_path: Path) -> None:
    spec = JobSpec("farm:digits-cnn", "sklearn:digits", parse_method("noop"))
    result = run_job(spec, tmp_path / "never")
    assert isinstance(result, JobResult) and result.method == "noop"
    assert result.accuracy is None and result.latency == []
    assert not (tmp_path / "never").exists()


def test_jsonable_replaces_non_finite_floats() -> None:
    data = {"a": math.inf, "b": [math.nan, 1.5], "c": {"d": -math.inf}, 2: "x"}
    assert jsonable(data) == {"a": None, "b": [None, 1.5], "c": {"d": None}, "2": "x"}


def test_a_method_that_produces_nan_is_a_quantization_error() -> None:
    split = TensorSplit(torch.randn(4, *toys.SHAPE))
    with pytest.raises(QuantizationError, match="NaN/Inf"):
        evaluate(QuantOutcome(toys.nan_model()), split, lambda *_: None, lambda: False, label="static int8")
    outputs = evaluate(QuantOutcome(toys.tiny_mlp()), split, lambda *_: None, lambda: False, label="static int8")
    assert outputs.shape == (4, 10)


@pytest.mark.slow
def test_a_validation_split_trial_carries_the_test_reference_to_its_split(
    cnn_reference: Reference, tmp_path: Path
) -> None:
    """farm tune's sensitivity jobs compare with the one fp32 reference job (test split): the fp32 outputs on their
    own split are computed in their process, as a reference job on that split computes them, and every figure the
    trial reports is the one it gets beside such a job's reference."""
    from farm.jobs import fp32_reference

    assert cnn_reference.split == "test"
    fp32 = JobSpec(CNN, DIGITS, parse_method("fp32", {}), benchmark=fast_benchmark(), split="validation")
    run_job(fp32, tmp_path / "ref")
    own = Reference.load(tmp_path / "ref" / REFERENCE_FILE)  # what a validation-split reference job records
    assert own.split == "validation" and len(own.outputs) != len(cnn_reference.outputs)
    trial = JobSpec(CNN, DIGITS, parse_method("static", {}), benchmark=fast_benchmark(), split="validation")
    fp32_reference._ON_SPLIT.clear()
    carried = run_job(trial, tmp_path / "carried", reference=cnn_reference)
    assert len(fp32_reference._ON_SPLIT) == 1  # computed once: the next job of this process on the split reuses it
    (here,) = fp32_reference._ON_SPLIT.values()
    assert torch.equal(here.outputs, own.outputs) and torch.equal(here.labels, own.labels)
    beside_own = run_job(trial, tmp_path / "own", reference=own)
    for name in ("accuracy", "accuracy_fp32", "accuracy_drop", "agreement", "sqnr_db", "cosine", "health"):
        assert getattr(carried, name) == getattr(beside_own, name), name
    assert carried.size_fp32_bytes == cnn_reference.size_bytes  # the model's own, whatever the split
    assert "reference" in carried.timings_s
