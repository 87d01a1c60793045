"""Artifacts: a trial's frozen TorchScript loads in a fresh process and gives the same outputs; tampering is caught."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from farm.errors import ArtifactError
from farm.quant.artifact import MANIFEST_FILE, MODEL_FILE, load_artifact, read_manifest, sha256_file
from tests import toys

CNN = "entrypoint:tests.toys:tiny_cnn"

LOAD_AND_PRINT = """
import json, sys
import torch
from farm.quant.artifact import load_artifact

module, manifest = load_artifact(sys.argv[1])
x = torch.load(sys.argv[2])
with torch.no_grad():
    y = module(x)
print(json.dumps({
    "engine": torch.backends.quantized.engine,
    "toys_imported": "tests.toys" in sys.modules,
    "dtype": str(y.dtype),
    "outputs": y.tolist(),
}))
"""


@pytest.fixture(autouse=True)
def keep_quantized_engine() -> Iterator[None]:
    """load_artifact sets the process's quantized engine; put it back after each test."""
    engine = torch.backends.quantized.engine
    yield
    torch.backends.quantized.engine = engine


@pytest.fixture(scope="module")
def static_artifact(run_trial: Callable[..., Any], reference_for: Callable[[str, str], Any]) -> tuple[Any, Path]:
    reference = reference_for(CNN, toys.SYNTHETIC)
    return run_trial(CNN, toys.SYNTHETIC, "static", reference=reference, calibration_size=32, backend="fbgemm")


def fixed_inputs() -> torch.Tensor:
    return torch.randn((8, *toys.SHAPE), generator=torch.Generator().manual_seed(11))


def test_artifact_files_match_the_result(static_artifact: tuple[Any, Path]) -> None:
    result, directory = static_artifact
    assert sorted(p.name for p in directory.iterdir()) == [MANIFEST_FILE, MODEL_FILE]  # no temp files left
    manifest = read_manifest(directory)
    assert manifest["artifact"]["sha256"] == sha256_file(directory / MODEL_FILE) == result.artifact["sha256"]
    assert manifest["quantized_engine"] == "fbgemm"
    assert manifest["input"] == {"shape": list(toys.SHAPE), "dtype": "float32"}
    assert manifest["metrics"]["sqnr_db"] == pytest.approx(result.sqnr_db)
    assert manifest["method"]["backend"] == "fbgemm"


def test_artifact_runs_int8_kernels(static_artifact: tuple[Any, Path]) -> None:
    module, _ = load_artifact(static_artifact[1])
    kinds = {node.kind() for node in module.graph.nodes()}
    assert any(kind.startswith("quantized::conv2d") for kind in kinds), kinds
    assert "quantized::linear" in kinds
    assert torch.backends.quantized.engine == "fbgemm"


@pytest.mark.slow  # a fresh interpreter imports torch (a few seconds)
def test_artifact_gives_the_same_outputs_in_a_fresh_process(
    static_artifact: tuple[Any, Path], subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    directory = static_artifact[1]
    x = fixed_inputs()
    inputs = tmp_path / "inputs.pt"
    torch.save(x, inputs)
    env = {k: v for k, v in subprocess_env.items() if k not in ("PYTHONPATH", "FARM_ALLOWED_MODULES")}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PRINT, str(directory), str(inputs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # the toy's class is nowhere on the path: the artifact must not need it
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed["engine"] == "fbgemm"
    assert printed["toys_imported"] is False
    assert printed["dtype"] == "torch.float32"
    fresh = torch.tensor(printed["outputs"], dtype=torch.float32)

    module, _ = load_artifact(directory)
    with torch.no_grad():
        here = module(x)
    assert here.shape == (8, 10)
    assert torch.equal(fresh, here)  # float32 -> JSON -> float32 is exact
    # and they are the int8 model's outputs, not something unrelated: close to the fp32 toy's
    expected = toys.tiny_cnn()(x).detach()
    assert torch.allclose(here, expected, atol=0.1 * expected.abs().max().item())


def test_tampered_model_file_fails_the_sha256_check(static_artifact: tuple[Any, Path], tmp_path: Path) -> None:
    copy = tmp_path / "artifact"
    shutil.copytree(static_artifact[1], copy)
    model = copy / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as e:
        load_artifact(copy)
    assert "sha256" in str(e.value) and str(model) in str(e.value)


def test_appended_bytes_are_tampering_too(static_artifact: tuple[Any, Path], tmp_path: Path) -> None:
    copy = tmp_path / "artifact"
    shutil.copytree(static_artifact[1], copy)
    with open(copy / MODEL_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(copy)


def test_missing_pieces_are_artifact_errors(static_artifact: tuple[Any, Path], tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not an artifact"):
        load_artifact(tmp_path)
    copy = tmp_path / "no-model"
    shutil.copytree(static_artifact[1], copy)
    (copy / MODEL_FILE).unlink()
    with pytest.raises(ArtifactError, match="missing its model file"):
        load_artifact(copy)
    newer = tmp_path / "newer"
    shutil.copytree(static_artifact[1], newer)
    manifest = json.loads((newer / MANIFEST_FILE).read_text())
    manifest["manifest_version"] = 99
    (newer / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="newer"):
        load_artifact(newer)
    broken = tmp_path / "broken"
    shutil.copytree(static_artifact[1], broken)
    (broken / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable"):
        load_artifact(broken)


def test_simulated_artifact_reproduces_the_fake_quantized_model(
    run_trial: Callable[..., Any], reference_for: Callable[[str, str], Any]
) -> None:
    reference = reference_for(CNN, toys.SYNTHETIC)
    result, directory = run_trial(CNN, toys.SYNTHETIC, "static", reference=reference, calibration_size=32, bits=4)
    module, manifest = load_artifact(directory)
    assert manifest["simulated"] is True and manifest["quantized_engine"] is None
    from farm.zoo.data import load_dataset

    test = load_dataset(toys.SYNTHETIC).test
    with torch.no_grad():
        outputs = module(test.x)  # type: ignore[attr-defined]
    from farm.quant.metrics import fidelity

    # the saved model is the evaluated one: its fidelity to the fp32 reference is the reported one
    assert fidelity(reference.outputs, outputs).sqnr_db == pytest.approx(result.sqnr_db, abs=1e-3)
