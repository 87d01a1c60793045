"""The qat chain across workers, on the CPU only: fine-tune and checkpoint (the "train" stage a GPU worker runs),
then rebuild, convert and benchmark from that checkpoint (the "finish" stage a CPU worker runs).

Split in two, a qat job must give the model it gives in one go with the same seed; a checkpoint that does not
fit the model fails as a QuantizationError. Both stages run here on the CPU, on the tiny toys.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from farm.errors import ConfigError, FarmError, QuantizationError
from farm.jobs.contract import JobResult, JobSpec
from farm.jobs.steps import run_job
from farm.jobs.train import train_job
from farm.quant import qat
from farm.quant.checkpoint import CHECKPOINT_FILE, read_checkpoint
from farm.quant.config import QATConfig, parse_method
from farm.quant.reference import Reference
from farm.quant.registry import QuantContext, apply_method, quiet_torch_ao
from farm.zoo.data import TensorSplit
from tests import toys
from tests.conftest import TOYS_MODULE, fast_benchmark

DATASET = toys.SYNTHETIC
CNN = "entrypoint:tests.toys:tiny_cnn"
MLP = "entrypoint:tests.toys:tiny_mlp"
PARAMS = {"steps": 3, "batch_size": 16, "calibration_size": 32, "lr": 0.01}
QUANTIZED_PACKAGES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")


def qat_config(**changes: Any) -> QATConfig:
    cfg = parse_method("qat", {**PARAMS, "device": "cpu", **changes})
    assert isinstance(cfg, QATConfig)
    return cfg


def job(model: str = CNN, seed: int = 0, **changes: Any) -> JobSpec:
    return JobSpec(model, DATASET, qat_config(**changes), seed=seed, benchmark=fast_benchmark())


def outputs(artifact_dir: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.jit.load(str(artifact_dir / "model.pt"))(x)


def probe() -> torch.Tensor:
    return torch.randn((16, *toys.SHAPE), generator=torch.Generator().manual_seed(11))


@dataclass
class Chain:
    one_go: JobResult
    one_go_dir: Path
    checkpoint: Path
    split: JobResult
    split_dir: Path


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, reference_for: Callable[[str, str], Reference]) -> Chain:
    """One qat job on the tiny CNN run in one go, and the same job trained, checkpointed and finished apart."""
    reference = reference_for(CNN, DATASET)
    root = tmp_path_factory.mktemp("qat-chain")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FARM_ALLOWED_MODULES", TOYS_MODULE)
        one_go = run_job(job(), root / "one-go", reference=reference)
        checkpoint = train_job(job(), root / "train")
        split = run_job(job(), root / "finish", reference=reference, checkpoint=checkpoint)
    return Chain(one_go, root / "one-go", checkpoint, split, root / "finish")


# --- through farm.jobs: train_job, then run_job(checkpoint=...) -------------------------------------------


def test_the_train_stage_writes_a_checkpoint_of_the_fine_tuned_fake_quantized_model(chain: Chain) -> None:
    assert chain.checkpoint.name == CHECKPOINT_FILE and chain.checkpoint.is_file()
    data = read_checkpoint(chain.checkpoint)
    state = data["state"]
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert any(k.endswith("weight_fake_quant.scale") for k in state), sorted(state)[:10]
    assert any(k.endswith("activation_post_process.min_val") for k in state)  # the ranges learnt in training
    assert data["timings"]["train"] > 0 and data["timings"]["calibrate"] > 0


def test_the_finished_checkpoint_is_a_real_int8_model(chain: Chain) -> None:
    result = chain.split
    assert result.method == "qat" and result.device == "cpu"
    assert result.simulated is False and result.quantized_engine == "x86"
    assert result.coverage == 1.0  # every Conv2d and the Linear head run int8 kernels
    assert result.size_ratio is not None and result.size_ratio < 0.5
    assert result.agreement is not None and result.agreement >= 0.8
    assert result.artifact is not None and result.artifact["format"] == "torchscript"
    scripted = torch.jit.load(str(chain.split_dir / "model.pt"))
    graph = str(scripted.inlined_graph)
    assert "quantized::conv2d" in graph and "quantized::linear" in graph


def test_split_in_two_a_qat_job_gives_the_model_it_gives_in_one_go(chain: Chain) -> None:
    x = probe()
    assert torch.equal(outputs(chain.split_dir, x), outputs(chain.one_go_dir, x))
    one, two = chain.one_go, chain.split
    assert (two.agreement, two.sqnr_db, two.cosine) == (one.agreement, one.sqnr_db, one.cosine)
    assert (two.coverage, two.quantized_engine) == (one.coverage, one.quantized_engine)
    # The same weights, but not byte for byte the same archive: TorchScript names each scripted class with a
    # per-process counter (___torch_mangle_99 vs ___torch_mangle_100), so the sizes may differ by a few bytes.
    assert one.size_bytes is not None and two.size_bytes is not None
    assert abs(two.size_bytes - one.size_bytes) <= 256


def test_the_finish_stage_reports_the_fine_tuning_time_of_the_train_stage(chain: Chain) -> None:
    trained = read_checkpoint(chain.checkpoint)["timings"]
    assert chain.split.timings_s["train"] == pytest.approx(trained["train"], abs=1e-6)
    assert chain.split.timings_s["convert"] > 0


def test_another_seed_trains_another_model(chain: Chain, tmp_path: Path, allow_toys: str) -> None:
    checkpoint = train_job(job(seed=1), tmp_path / "train")
    other = read_checkpoint(checkpoint)["state"]
    same = read_checkpoint(chain.checkpoint)["state"]
    assert other.keys() == same.keys()
    assert any(not torch.equal(other[k], same[k]) for k in same)  # the seed drives the fine-tuning


def test_a_checkpoint_of_another_model_fails_cleanly(chain: Chain, tmp_path: Path, allow_toys: str) -> None:
    with pytest.raises(QuantizationError) as e:
        run_job(job(MLP), tmp_path / "out", checkpoint=chain.checkpoint)
    assert "checkpoint does not fit entrypoint:tests.toys:tiny_mlp" in str(e.value)
    assert not (tmp_path / "out" / "model.pt").exists()


@pytest.mark.parametrize("change", [{"granularity": "per_tensor"}, {"bits": 4}, {"observer": "histogram"}])
def test_a_checkpoint_of_another_config_fails_cleanly(
    chain: Chain, tmp_path: Path, allow_toys: str, change: dict[str, Any]
) -> None:
    # bits and observer leave the state dict's shapes as they were: only the recorded config tells them apart.
    with pytest.raises(QuantizationError) as e:
        run_job(job(**change), tmp_path / "out", checkpoint=chain.checkpoint)
    assert "the checkpoint was fine-tuned for another config" in str(e.value)
    assert not (tmp_path / "out" / "model.pt").exists()


def test_train_job_refuses_a_method_that_is_not_qat(tmp_path: Path, allow_toys: str) -> None:
    spec = JobSpec(CNN, DATASET, parse_method("static", {"calibration_size": 32}), benchmark=fast_benchmark())
    with pytest.raises(ConfigError, match="only qat jobs"):
        train_job(spec, tmp_path)


def test_the_finish_stage_of_a_cuda_fine_tuned_job_runs_on_a_cpu_worker(
    tmp_path: Path, allow_toys: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = job(device="cuda")  # routed: train on the gpu queue, finish on the cpu queue
    with monkeypatch.context() as gpu_worker:  # stands in for the GPU worker's fine-tuning
        gpu_worker.setattr(qat, "train_device", lambda cfg: "cpu")
        checkpoint = train_job(spec, tmp_path / "train")
    assert not torch.cuda.is_available()  # this is the CPU worker, as CUDA_VISIBLE_DEVICES="" makes it
    result = run_job(spec, tmp_path / "finish", checkpoint=checkpoint)
    assert result.quantized_engine == "x86" and result.simulated is False


@pytest.mark.parametrize("content", ["junk", "other dict"])
def test_a_file_that_is_not_a_checkpoint_fails_cleanly(tmp_path: Path, content: str) -> None:
    path = tmp_path / CHECKPOINT_FILE
    if content == "junk":
        path.write_bytes(b"not a checkpoint at all")
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(FarmError):  # QuantizationError or ArtifactError: one line on the job, not a traceback
        read_checkpoint(path)


# --- through farm.quant.qat: train -> state_dict -> rebuild -> finish -------------------------------------


def context(teacher: nn.Module, seed: int = 0) -> QuantContext:
    gen = torch.Generator().manual_seed(7)
    calibration = TensorSplit(torch.randn((32, *toys.SHAPE), generator=gen))
    return QuantContext(
        model_ref="toy",
        example_input=calibration.x[:1],
        calibration=calibration,
        train=TensorSplit(torch.randn((64, *toys.SHAPE), generator=gen)),
        labelled=False,
        teacher=teacher,
        seed=seed,
    )


def quantized_modules(model: nn.Module) -> list[str]:
    return [type(m).__name__ for m in model.modules() if type(m).__module__.startswith(QUANTIZED_PACKAGES)]


def through_bytes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint as another machine gets it: saved, sent, loaded weights-only."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, QATConfig, dict[str, torch.Tensor]]:
    """The tiny CNN, its qat config, and the state dict of its fine-tuned prepared model (the checkpoint)."""
    model, cfg = toys.tiny_cnn(), qat_config()
    with quiet_torch_ao():
        prepared = qat.train(model, cfg, context(model), {})
    return model, cfg, through_bytes(prepared.state_dict())


def test_rebuilt_and_finished_apart_the_engine_matches_apply_qat_in_one_go(
    trained: tuple[nn.Module, QATConfig, dict[str, torch.Tensor]],
) -> None:
    model, cfg, state = trained
    with quiet_torch_ao():
        timings: dict[str, float] = {}
        apart = qat.finish(qat.rebuild(model, cfg, context(model), state), cfg, timings)
        whole = apply_method(model, cfg, context(model))
    assert quantized_modules(apart.model).count("ConvReLU2d") == 3 and "Linear" in quantized_modules(apart.model)
    assert quantized_modules(apart.model) == quantized_modules(whole.model)
    assert (apart.engine, apart.simulated) == ("x86", False)
    assert timings["convert"] > 0
    x = probe()
    with torch.no_grad():
        assert torch.equal(apart.model(x), whole.model(x))


def test_apply_qat_with_a_checkpoint_in_its_context_converts_it_without_training(
    trained: tuple[nn.Module, QATConfig, dict[str, torch.Tensor]],
) -> None:
    model, cfg, state = trained
    ctx = context(model)
    ctx.train = None  # a CPU worker finishing a job never fine-tunes: no train split needed
    ctx.checkpoint = {"state": state, "timings": {"train": 1.5}}
    with quiet_torch_ao():
        outcome = apply_method(model, cfg, ctx)
        whole = apply_method(model, cfg, context(model))
    assert outcome.timings_s["train"] == 1.5 and "convert" in outcome.timings_s
    x = probe()
    with torch.no_grad():
        assert torch.equal(outcome.model(x), whole.model(x))


def test_rebuild_refuses_a_checkpoint_of_another_model(
    trained: tuple[nn.Module, QATConfig, dict[str, torch.Tensor]],
) -> None:
    _, cfg, state = trained
    mlp = toys.tiny_mlp()
    with quiet_torch_ao(), pytest.raises(QuantizationError, match="checkpoint does not fit toy"):
        qat.rebuild(mlp, cfg, context(mlp), state)


@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_rebuild_refuses_a_damaged_checkpoint(
    trained: tuple[nn.Module, QATConfig, dict[str, torch.Tensor]], damage: str
) -> None:
    model, cfg, state = trained
    state = dict(state)
    weight = next(k for k in state if k.endswith(".weight") and state[k].dim() == 4)
    if damage == "missing":
        del state[weight]
    elif damage == "extra":
        state["not.a.parameter"] = torch.zeros(1)
    else:
        state[weight] = torch.zeros(*state[weight].shape[:-1], state[weight].shape[-1] + 1)
    with quiet_torch_ao(), pytest.raises(QuantizationError) as e:
        qat.rebuild(model, cfg, context(model), state)
    assert "checkpoint does not fit toy" in str(e.value)
    assert isinstance(e.value.__cause__, RuntimeError)
