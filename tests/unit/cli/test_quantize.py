"""``farm quantize``: every bad input is one line and exit status 2 with nothing left behind; good runs report.

Each case writes to ``<tmp>/runs/trial``: after a failure that directory must not exist and ``runs`` must
hold nothing (no hidden scratch directory either).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from farm.cli import cli
from tests import toys

TOY_DATA = toys.SYNTHETIC
TOY_MLP = "entrypoint:tests.toys:tiny_mlp"
BRANCHY = "entrypoint:tests.toys:branchy"


def quantize(*args: str) -> Result:
    return CliRunner().invoke(cli, ["quantize", *args])


def assert_one_line_error(result: Result, *words: str) -> str:
    """Exit status 2, one ``Error:`` line on stderr naming the problem, nothing on stdout, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit)  # not an unexpected exception caught by the runner
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("Error: ")
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stdout == ""
    for word in words:
        assert word in line, line
    return line


def assert_nothing_left(runs: Path) -> None:
    assert not (runs / "trial").exists()
    assert not runs.exists() or sorted(p.name for p in runs.iterdir()) == []


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def bad_weights(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "list":
        torch.save([torch.zeros(3), torch.ones(3)], path)
    elif kind == "object":
        torch.save(toys.NotAStateDict(), path)
    else:
        path.write_bytes(random.Random(1).randbytes(2048))
    return path


BAD_INPUTS = {
    # name: (arguments, words the one error line must contain)
    "unknown built-in model": (["--model", "farm:digits-rnn", "--method", "static"], ["farm:digits-rnn"]),
    "unknown model scheme": (["--model", "hub:resnet18", "--dataset", "sklearn:digits", "--method", "fp32"], ["hub"]),
    "unknown torchvision model": (
        ["--model", "torchvision:resnet999", "--dataset", "synthetic:3x32x32", "--method", "fp32"],
        ["resnet999"],
    ),
    "unknown dataset": (["--model", "farm:digits-cnn", "--dataset", "sklearn:iris", "--method", "fp32"], ["iris"]),
    "unknown dataset scheme": (["--model", "farm:digits-cnn", "--dataset", "kaggle:x", "--method", "fp32"], ["kaggle"]),
    "bad synthetic shape": (["--model", TOY_MLP, "--dataset", "synthetic:1x8x", "--method", "fp32"], ["sample shape"]),
    "unknown method": (["--model", "farm:digits-cnn", "--method", "int3"], ["--method", "'int3'"]),
    "bits 9": (["--model", "farm:digits-cnn", "--method", "static", "--bits", "9"], ["--bits", "at most 8", "9"]),
    "bits 1": (["--model", "farm:digits-cnn", "--method", "static", "--bits", "1"], ["--bits", "at least 2", "1"]),
    "bits for fp32": (["--model", "farm:digits-cnn", "--method", "fp32", "--bits", "8"], ["--bits", "fp32"]),
    "bits 4 for dynamic": (["--model", "farm:digits-cnn", "--method", "dynamic", "--bits", "4"], ["--bits", "int8"]),
    "bits not a number": (["--model", "farm:digits-cnn", "--method", "static", "--bits", "four"], ["--bits"]),
    "calibration size 0": (
        ["--model", "farm:digits-cnn", "--method", "static", "--calibration-size", "0"],
        ["--calibration-size", "at least 1"],
    ),
    "calibration size -5": (
        ["--model", "farm:digits-cnn", "--method", "static", "--calibration-size", "-5"],
        ["--calibration-size", "-5"],
    ),
    "observer bogus": (["--model", "farm:digits-cnn", "--method", "static", "--observer", "bogus"], ["--observer"]),
    "backend bogus": (["--model", "farm:digits-cnn", "--method", "static", "--backend", "bogus"], ["--backend"]),
    "percentile out of range": (
        ["--model", "farm:digits-cnn", "--method", "static", "--percentile", "101"],
        ["--percentile"],
    ),
    "unknown --param": (["--model", "farm:digits-cnn", "--method", "static", "--param", "bogus=1"], ["--param bogus"]),
    "class attribute as --param": (
        ["--model", "farm:digits-cnn", "--method", "static", "--param", "summary=x"],
        ["--param summary", "takes no summary"],
    ),
    "method name as --param": (
        ["--model", "farm:digits-cnn", "--method", "static", "--param", "method=qat"],
        ["--param method", "takes no method"],
    ),
    "malformed --param": (
        ["--model", "farm:digits-cnn", "--method", "static", "--param", "bits"],
        ["--param", "KEY=VALUE"],
    ),
    "batch size 0": (["--model", "farm:digits-cnn", "--method", "fp32", "--batch-size", "0"], ["--batch-size"]),
    "batch size list with a word": (
        ["--model", "farm:digits-cnn", "--method", "fp32", "--batch-size", "1,eight"],
        ["--batch-size", "'1,eight' is not a batch size"],
    ),
    "isolation bogus": (
        ["--model", "farm:digits-cnn", "--method", "fp32", "--isolation", "sometimes"],
        ["--isolation", "'sometimes' is not one of exclusive, pinned, none"],
    ),
    "no dataset for an outside model": (["--model", TOY_MLP, "--method", "fp32"], ["--dataset"]),
    "missing weights file": (
        ["--model", TOY_MLP, "--dataset", TOY_DATA, "--method", "fp32", "--weights", "nope.pt"],
        ["nope.pt"],
    ),
    "entrypoint outside the allowlist": (
        ["--model", "entrypoint:os.path:join", "--dataset", TOY_DATA, "--method", "fp32"],
        ["FARM_ALLOWED_MODULES", "os.path"],
    ),
    "model producing NaN": (
        ["--model", "entrypoint:tests.toys:nan_model", "--dataset", TOY_DATA, "--method", "fp32"],
        ["NaN"],
    ),
    "model that does not fit the data": (
        ["--model", TOY_MLP, "--dataset", "synthetic:3x8", "--method", "fp32"],
        ["fails on inputs", "(3, 8)"],
    ),
    "untraceable model": (
        ["--model", BRANCHY, "--dataset", TOY_DATA, "--method", "static", "--calibration-size", "32"],
        ["static", "torch.fx cannot trace", "'dynamic'", "QuantStub/DeQuantStub"],
    ),
    "eager mode without QuantStub": (
        ["--model", TOY_MLP, "--dataset", TOY_DATA, "--method", "static", "--mode", "eager", "--calibration-size", "8"],
        ["QuantStub"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_leaves_nothing(case: str, runs: Path, allow_toys: str) -> None:
    args, words = BAD_INPUTS[case]
    result = quantize(*args, "--batch-size", "1", "--output", str(runs / "trial"))
    assert_one_line_error(result, *words)
    assert_nothing_left(runs)


@pytest.mark.slow  # loads farm:digits-cnn (trains it if this is the session's first use)
def test_calibration_size_larger_than_the_split_gives_the_split_size(runs: Path) -> None:
    result = quantize(
        "--model", "farm:digits-cnn", "--method", "static", "--calibration-size", "1000",
        "--batch-size", "1", "--output", str(runs / "trial"),
    )  # fmt: skip
    assert_one_line_error(result, "calibration size 1000", "sklearn:digits", "(360 samples)")
    assert_nothing_left(runs)


@pytest.mark.parametrize("kind", ["list", "object", "random"])
def test_bad_weights_file_is_one_line_and_leaves_nothing(
    kind: str, tmp_path: Path, runs: Path, allow_toys: str
) -> None:
    path = bad_weights(tmp_path, kind)
    words = {
        "list": "is not a state dict",
        "object": "holds Python objects",
        "random": "is corrupted or not a PyTorch file",
    }[kind]
    result = quantize(
        "--model", TOY_MLP, "--dataset", TOY_DATA, "--method", "fp32", "--weights", str(path),
        "--batch-size", "1", "--output", str(runs / "trial"),
    )  # fmt: skip
    assert_one_line_error(result, words, str(path))
    assert_nothing_left(runs)


def test_fp16_without_cuda_is_one_line(runs: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: fp16 runs")
    result = quantize("--model", "farm:digits-cnn", "--method", "fp16", "--output", str(runs / "trial"))
    assert_one_line_error(result, "fp16", "CUDA")
    assert_nothing_left(runs)


def test_missing_imagefolder_is_one_line(tmp_path: Path, runs: Path) -> None:
    missing = tmp_path / "no-such-dir"
    result = quantize(
        "--model", "farm:digits-cnn", "--dataset", f"imagefolder:{missing}", "--method", "fp32",
        "--output", str(runs / "trial"),
    )  # fmt: skip
    assert_one_line_error(result, str(missing), "does not exist")
    assert_nothing_left(runs)


def test_imagefolder_without_images_is_one_line(tmp_path: Path, runs: Path) -> None:
    folder = tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    (folder / "cat" / "notes.txt").write_text("no images here")
    (folder / "dog").mkdir()
    result = quantize(
        "--model", "farm:digits-cnn", "--dataset", f"imagefolder:{folder}", "--method", "fp32",
        "--output", str(runs / "trial"),
    )  # fmt: skip
    assert_one_line_error(result, str(folder), "holds no images")
    assert_nothing_left(runs)


def test_output_holding_something_else_is_refused_and_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    result = quantize("--model", "farm:digits-cnn", "--method", "fp32", "--output", str(target))
    assert_one_line_error(result, "--output", "not empty")
    assert sorted(p.name for p in target.iterdir()) == ["thesis.tex"]


@pytest.mark.slow  # a fresh interpreter imports torch and runs the model (a few seconds)
def test_untraceable_model_in_a_real_process(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    runs = tmp_path / "runs"
    args = [
        "quantize", "--model", "entrypoint:tests.toys:branchy", "--dataset", TOY_DATA, "--method", "static",
        "--calibration-size", "32", "--batch-size", "1", "--output", str(runs / "trial"),
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", "from farm.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=subprocess_env,
        cwd=tmp_path,
        timeout=180,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("Error: static: torch.fx cannot trace entrypoint:tests.toys:branchy")
    assert "'dynamic'" in lines[0] and "QuantStub/DeQuantStub" in lines[0]
    assert_nothing_left(runs)


# Runs that work.

LATENCY_FIELDS = {"batch_size", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "throughput", "speedup"}
TOP_FIELDS = {
    "accuracy",
    "accuracy_fp32",
    "accuracy_drop",
    "agreement",
    "sqnr_db",
    "size_bytes",
    "size_ratio",
    "coverage",
    "simulated",
    "latency",
}


@pytest.mark.slow  # digits-cnn with its fp32 reference and two batch sizes (and its training if first)
def test_json_output_is_one_object_with_the_documented_fields(runs: Path) -> None:
    target = runs / "trial"
    result = quantize(
        "--model", "farm:digits-cnn", "--method", "static", "--batch-size", "1", "--batch-size", "4,1",
        "--json", "--output", str(target),
    )  # fmt: skip
    assert result.exit_code == 0, (result.stderr, result.exception)
    data = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert isinstance(data, dict)
    assert TOP_FIELDS <= set(data)
    assert data["method"] == "static" and data["simulated"] is False
    assert 0.97 <= data["accuracy"] <= 1.0 and data["accuracy_drop"] <= 0.01
    assert data["accuracy_drop"] == pytest.approx(data["accuracy_fp32"] - data["accuracy"])
    assert 0 < data["size_ratio"] <= 0.30 and data["size_bytes"] > 0
    assert data["coverage"] == 1.0
    assert [lat["batch_size"] for lat in data["latency"]] == [1, 4]
    for lat in data["latency"]:
        assert LATENCY_FIELDS <= set(lat)
        assert 0 < lat["latency_p50_ms"] <= lat["latency_p90_ms"] <= lat["latency_p99_ms"]
        assert lat["throughput"] > 0 and lat["speedup"] > 0
    assert data["artifact_uri"] == str(target.resolve())
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "model.pt"]
    assert sorted(p.name for p in runs.iterdir()) == ["trial"]  # the scratch directory was moved, not copied
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["artifact"]["sha256"] == data["artifact"]["sha256"]


def test_readable_summary_mentions_accuracy_and_the_artifact(runs: Path, allow_toys: str) -> None:
    target = runs / "trial"
    result = quantize(
        "--model", TOY_MLP, "--dataset", TOY_DATA, "--method", "dynamic", "--batch-size", "1", "--output", str(target)
    )
    assert result.exit_code == 0, (result.stderr, result.exception)
    out = result.stdout
    (accuracy,) = [line for line in out.splitlines() if line.startswith("accuracy")]
    assert "vs fp32 1.0000" in accuracy
    assert f"artifact: {target.resolve()}" in out
    assert "dynamic int8" in out and "coverage" in out
    assert "warning:" in out and "synthetic inputs" in out
    assert (target / "manifest.json").is_file()
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_flags_reach_the_method_config(runs: Path, allow_toys: str) -> None:
    target = runs / "trial"
    result = quantize(
        "--model", TOY_MLP, "--dataset", TOY_DATA, "--method", "qat", "--bits", "6", "--calibration-size", "16",
        "--observer", "histogram", "--granularity", "per_tensor", "--activation", "symmetric", "--backend", "qnnpack",
        "--steps", "2", "--lr", "1e-4", "--optimizer", "adam", "--param", "batch_size=8", "--device", "cpu",
        "--seed", "3", "--batch-size", "1", "--json", "--output", str(target),
    )  # fmt: skip
    assert result.exit_code == 0, (result.stderr, result.exception)
    config = json.loads(result.stdout)["config"]
    expected = {
        "method": "qat", "bits": 6, "calibration_size": 16, "observer": "histogram", "granularity": "per_tensor",
        "activation": "symmetric", "backend": "qnnpack", "steps": 2, "lr": 1e-4, "optimizer": "adam",
        "batch_size": 8, "device": "cpu",
    }  # fmt: skip
    assert {k: config[k] for k in expected} == expected
    assert json.loads((target / "manifest.json").read_text())["method"] == config


@pytest.mark.parametrize("isolation", ["exclusive", "pinned", "none"])
def test_isolation_is_recorded_with_every_latency_entry(
    isolation: str, runs: Path, allow_toys: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from farm.quant.isolation import LOCK_DIR_ENV
    from farm.quant.pinning import pinned_cores

    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))  # free cores: no other process claims here
    affinity = os.sched_getaffinity(0)
    result = quantize(
        "--model", TOY_MLP, "--dataset", TOY_DATA, "--method", "dynamic", "--batch-size", "1,2",
        "--isolation", isolation, "--json", "--output", str(runs / "trial"),
    )  # fmt: skip
    assert result.exit_code == 0, (result.stderr, result.exception)
    data = json.loads(result.stdout)
    assert [lat["isolation"] for lat in data["latency"]] == [isolation] * 2
    for lat in data["latency"]:
        assert lat["host_load"] is None or 0.0 <= lat["host_load"] <= 1.0
        # pinned (and exclusive) trials ran on a core of their own; none left the affinity alone
        assert (lat["cores"] is None) is (isolation == "none")
        assert lat["cores"] is None or (len(lat["cores"]) == 1 and set(lat["cores"]) <= affinity)
    assert os.sched_getaffinity(0) == affinity and pinned_cores() is None  # given back after the trial


def test_rerun_replaces_an_earlier_artifact_and_leaves_no_scratch(runs: Path, allow_toys: str) -> None:
    target = runs / "trial"
    args = ["--model", TOY_MLP, "--dataset", TOY_DATA, "--batch-size", "1", "--json", "--output", str(target)]
    first = quantize(*args, "--method", "fp32")
    assert first.exit_code == 0, first.stderr
    second = quantize(*args, "--method", "dynamic")
    assert second.exit_code == 0, second.stderr
    assert json.loads((target / "manifest.json").read_text())["method"]["method"] == "dynamic"
    assert sorted(p.name for p in runs.iterdir()) == ["trial"]


def test_default_output_lands_under_farm_home(farm_home: Path, allow_toys: str) -> None:
    result = quantize("--model", TOY_MLP, "--dataset", TOY_DATA, "--method", "fp32", "--batch-size", "1", "--json")
    assert result.exit_code == 0, result.stderr
    uri = Path(json.loads(result.stdout)["artifact_uri"])
    assert uri.parent == (farm_home / "trials").resolve()
    assert (uri / "model.pt").is_file()
