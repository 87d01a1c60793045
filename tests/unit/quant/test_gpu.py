"""CUDA paths: fp16 inference, QAT fine-tuning on the GPU, and latency timed with synchronisation.

Every test here carries the ``gpu`` marker; the conftest skips them when torch.cuda.is_available() is False.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from farm.jobs.contract import JobSpec
from farm.jobs.steps import run_job
from farm.quant.bench_config import BenchmarkConfig
from farm.quant.config import parse_method
from farm.quant.latency import LatencySettings, measure_latency
from farm.quant.registry import QuantContext, apply_method
from farm.zoo.data import TensorSplit
from tests import toys

pytestmark = pytest.mark.gpu

CUDA_BENCH = BenchmarkConfig(batch_sizes=(1, 8), device="cuda", warmup_s=0.0, max_time_s=0.2, min_reps=5)


def test_fp16_on_cuda_matches_fp32_on_digits(tmp_path: Path) -> None:
    spec = JobSpec("farm:digits-cnn", "sklearn:digits", parse_method("fp16"), benchmark=CUDA_BENCH)
    result = run_job(spec, tmp_path / "fp16")
    assert result.device == "cuda"
    assert result.accuracy_fp32 >= 0.97
    assert abs(result.accuracy - result.accuracy_fp32) <= 0.01
    assert result.agreement >= 0.99 and result.sqnr_db > 30
    assert result.peak_gpu_memory_bytes is not None and result.peak_gpu_memory_bytes > 0
    assert [lat["batch_size"] for lat in result.latency] == [1, 8]
    assert all(lat["latency_p50_ms"] > 0 and lat["speedup"] > 0 for lat in result.latency)
    assert result.fingerprint["gpu"] is not None and result.hardware == result.fingerprint["gpu"]["name"]


@pytest.mark.parametrize("mode", ["cast", "autocast"])
def test_bf16_on_cuda(tmp_path: Path, mode: str) -> None:
    spec = JobSpec(
        "entrypoint:tests.toys:tiny_cnn", toys.SYNTHETIC, parse_method("bf16", {"mode": mode}), benchmark=CUDA_BENCH
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FARM_ALLOWED_MODULES", "tests.toys")
        result = run_job(spec, tmp_path / "bf16")
    assert result.device == "cuda"
    assert result.agreement >= 0.9 and result.sqnr_db > 30


def test_qat_fine_tunes_on_cuda_and_converts_to_int8() -> None:
    model = toys.tiny_cnn()
    gen = torch.Generator().manual_seed(0)
    calibration = TensorSplit(torch.randn((32, *toys.SHAPE), generator=gen))
    train = TensorSplit(torch.randn((64, *toys.SHAPE), generator=gen))
    ctx = QuantContext(
        "toy", example_input=calibration.x[:1], calibration=calibration, train=train, labelled=False, teacher=model
    )
    cfg = parse_method("qat", {"device": "cuda", "steps": 3, "batch_size": 16, "calibration_size": 32})
    outcome = apply_method(model, cfg, ctx)
    assert outcome.timings_s["train"] > 0
    assert outcome.device == "cpu"  # int8 kernels are CPU kernels: converted after training on the GPU
    names = [type(m).__module__ for m in outcome.model.modules()]
    assert any(n.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")) for n in names)
    assert all(p.device.type == "cpu" for p in outcome.model.parameters())
    x = torch.randn((8, *toys.SHAPE), generator=gen)
    with torch.no_grad(), outcome.active():
        out = outcome.forward(x)
    assert out.shape == (8, 10) and bool(torch.isfinite(out).all())


def test_qat_trial_with_cuda_training(run_trial: Callable[..., Any]) -> None:
    result, _ = run_trial(
        "entrypoint:tests.toys:tiny_mlp",
        toys.SYNTHETIC,
        "qat",
        device="cuda",
        steps=3,
        batch_size=16,
        calibration_size=32,
    )
    assert result.device == "cpu" and result.quantized_engine == "x86"
    assert result.config["device"] == "cuda"
    assert result.agreement >= 0.75


def test_cuda_latency_is_measured_with_synchronisation() -> None:
    x = torch.randn(64, 256, device="cuda")
    w = torch.randn(256, 256, device="cuda")
    settings = LatencySettings(warmup_s=0.0, warmup_reps=2, min_reps=10, max_time_s=0.5, block=5)
    lat = measure_latency(lambda: x @ w, 64, device="cuda", settings=settings)
    assert lat.reps >= 10
    assert 0 < lat.latency_min_ms <= lat.latency_p50_ms <= lat.latency_p99_ms
    assert lat.throughput == pytest.approx(64 / (lat.latency_p50_ms / 1000))
