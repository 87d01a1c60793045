"""No file a user hands QuantFarm runs code: model files, weights, references, checkpoints, artifacts.

Each hostile file carries a pickle whose ``__reduce__`` opens (creates) a marker file, placed in one member
that can hold a pickle (or, for ``.pt2``, a string torch evaluates). Every user-facing path must refuse it
in one line before a torch loader sees it, and the marker must never appear.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result

from farm.cli import cli
from farm.errors import ArtifactError, ConfigError, FarmError, QuantizationError
from tests import toys

TOY_DATA = toys.SYNTHETIC


class Marker:
    """Unpickles to ``open(path, "w")``: the file appears the moment anything unpickles it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def saved(obj: Any, *, protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_protocol=protocol)
    return buf.getvalue()


def rewrite_zip(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None], add: dict[str, bytes]) -> Path:
    """Copy a zip archive, passing each member through ``edit`` (None drops it), then adding ``add``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = edit(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)
        for name, data in add.items():
            zout.writestr(name, data)
    return dst


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ts") / "model.pt"
    torch.manual_seed(0)
    module = torch.jit.trace(toys.TinyMLP().eval(), torch.randn(2, *toys.SHAPE))
    torch.jit.save(module, str(path))
    return path


def _empty_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w"):
        pass
    return buf.getvalue()


EMPTY_ZIP = _empty_zip()


def upper_case_pickle(torch_file: bytes) -> bytes:
    """The same torch.save zip with ``archive/data.pkl`` renamed ``archive/DATA.PKL``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(torch_file)) as zin, zipfile.ZipFile(out, "w") as zout:
        for name in zin.namelist():
            renamed = name[: -len("data.pkl")] + "DATA.PKL" if name.endswith("/data.pkl") else name
            zout.writestr(renamed, zin.read(name))
    return out.getvalue()


def hostile_pt2(exported: Path, tmp: Path, where: str, marker: Path) -> Path:
    with zipfile.ZipFile(exported) as z:
        root = z.namelist()[0].split("/")[0]
        weights_config = json.loads(z.read(f"{root}/data/weights/model_weights_config.json"))
    first_weight = next(iter(weights_config["config"].values()))["path_name"]
    add: dict[str, bytes] = {}

    def edit(name: str, data: bytes) -> bytes | None:
        inner = name[len(root) + 1 :]
        if where == "sample_inputs" and inner.startswith("data/sample_inputs/"):
            return saved((Marker(marker),))
        if where == "sample_inputs_protocol4" and inner.startswith("data/sample_inputs/"):
            return saved((Marker(marker),), protocol=4)
        if where == "sample_inputs_upper_case" and inner.startswith("data/sample_inputs/"):
            # torch's zip reader finds data.pkl ignoring case, then retries without the weights-only guard
            return upper_case_pickle(saved((Marker(marker),)))
        if where.startswith("pickled_weight") and inner.endswith("_weights_config.json"):
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True
            return json.dumps(config).encode()
        if where == "pickled_weight" and inner == f"data/weights/{first_weight}":
            return saved(Marker(marker))
        if where == "pickled_weight_polyglot" and inner == f"data/weights/{first_weight}":
            # a plain pickle followed by an empty zip: Python's zipfile sees a zip, torch (byte 0) a legacy file
            return pickle.dumps(Marker(marker), protocol=2) + EMPTY_ZIP
        if where in ("pickled_constant", "opaque_constant") and inner.endswith("_constants_config.json"):
            from torch.export.pt2_archive.constants import OPAQUE_OBJ_FILENAME_PREFIX, TENSOR_CONSTANT_FILENAME_PREFIX

            prefix = TENSOR_CONSTANT_FILENAME_PREFIX if where == "pickled_constant" else OPAQUE_OBJ_FILENAME_PREFIX
            file = f"{prefix}0"
            entry = {"path_name": file, "is_param": False, "use_pickle": True, "tensor_meta": None}
            add[f"{root}/data/constants/{file}"] = (
                saved(Marker(marker)) if where == "pickled_constant" else pickle.dumps(Marker(marker), protocol=2)
            )
            return json.dumps({"config": {"hostile": entry}}).encode()
        if where in ("sympy", "guard", "target") and inner.startswith("models/"):
            program = json.loads(data)
            if where == "guard":
                program["guards_code"] = [f"open({str(marker)!r}, 'w') is not None"]
                return json.dumps(program).encode()
            text = json.dumps(program)
            if where == "sympy":
                expr = json.dumps(f"__import__('builtins').open({str(marker)!r}, 'w')")
                changed = text.replace('"expr_str": "Symbol(', f'"expr_str": {expr}, "was": "Symbol(', 1)
            else:
                changed = text.replace('"torch.ops.aten.relu.default"', '"torch.os.system"', 1)
            assert changed != text, f"no {where} to rewrite in {name}"
            return changed.encode()
        return data

    if where == "aoti":
        add[f"{root}/data/aotinductor/model/model.so"] = b"\x7fELF not really"
    return rewrite_zip(exported, tmp / f"{where}.pt2", edit, add)


PT2_PLACES = [
    "sample_inputs",
    "sample_inputs_protocol4",
    "sample_inputs_upper_case",
    "pickled_weight",
    "pickled_weight_polyglot",
    "pickled_constant",
    "opaque_constant",
    "sympy",
    "guard",
    "target",
    "aoti",
]


def quantize(*args: str) -> Result:
    return CliRunner().invoke(cli, ["quantize", *args])


def assert_refused(result: Result, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("where", ["sample_inputs", "sample_inputs_upper_case", "pickled_weight_polyglot"])
def test_torchs_own_pt2_loader_runs_the_pickle(exported: Path, tmp_path: Path, where: str) -> None:
    """Why the inspection exists: torch.export.load itself unpickles these members without the guard."""
    marker = tmp_path / "MARKER"
    path = hostile_pt2(exported, tmp_path, where, marker)
    try:
        torch.export.load(str(path))
    except Exception:  # noqa: BLE001 - it may fail after running the pickle; what matters is the marker
        pass
    assert marker.exists()


@pytest.mark.parametrize("where", PT2_PLACES)
def test_quantize_refuses_a_hostile_pt2(
    exported: Path, tmp_path: Path, farm_home: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    path = hostile_pt2(exported, tmp_path, where, marker)
    result = quantize("--model", f"file:{path}", "--dataset", TOY_DATA, "--method", "fp32", "--output", "out")
    assert_refused(result, str(path), "refused", "never runs code")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def hostile_torchscript(scripted: Path, tmp: Path, where: str, marker: Path) -> Path:
    def edit(name: str, data: bytes) -> bytes | None:
        if name.endswith(f"/{where}"):
            return pickle.dumps(Marker(marker), protocol=2)
        return data

    root = zipfile.ZipFile(scripted).namelist()[0].split("/")[0]
    add = {}
    if where.startswith("extra/"):
        add[f"{root}/{where}"] = pickle.dumps(Marker(marker), protocol=2)
    return rewrite_zip(scripted, tmp / f"ts-{where.replace('/', '-')}.pt", edit, add)


TS_PLACES = ["data.pkl", "constants.pkl", "extra/notes.pkl", "extra/notes.bin"]


@pytest.mark.parametrize("where", TS_PLACES)
def test_quantize_refuses_a_hostile_torchscript_file(
    scripted: Path, tmp_path: Path, farm_home: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    path = hostile_torchscript(scripted, tmp_path, where, marker)
    result = quantize("--model", f"file:{path}", "--dataset", TOY_DATA, "--method", "fp32", "--output", "out")
    assert_refused(result, "refused", "weights-only")
    assert not marker.exists()


def test_a_torch_save_pickle_given_as_a_model_file_is_refused(
    tmp_path: Path, farm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    path = tmp_path / "model.pt"
    path.write_bytes(saved(Marker(marker)))
    result = quantize("--model", f"file:{path}", "--dataset", TOY_DATA, "--method", "fp32")
    assert_refused(result, "refused")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_quantize_refuses_hostile_weights(
    tmp_path: Path, farm_home: Path, allow_toys: str, protocol: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    weights = tmp_path / "w.pt"
    weights.write_bytes(saved({"net.1.weight": Marker(marker)}, protocol=protocol))
    result = quantize(
        "--model",
        "entrypoint:tests.toys:tiny_mlp",
        "--weights",
        str(weights),
        "--dataset",
        TOY_DATA,
        "--method",
        "fp32",
    )
    assert_refused(result, str(weights))
    assert not marker.exists()


def test_reference_load_refuses_a_hostile_reference(tmp_path: Path) -> None:
    from farm.quant.reference import Reference

    marker = tmp_path / "MARKER"
    path = tmp_path / "reference.pt"
    path.write_bytes(saved({"outputs": torch.zeros(2, 10), "labels": Marker(marker), "meta": "{}"}))
    with pytest.raises(QuantizationError, match="refused.*weights-only"):
        Reference.load(path)
    assert not marker.exists()


def test_read_checkpoint_refuses_a_hostile_checkpoint(tmp_path: Path) -> None:
    from farm.quant.checkpoint import read_checkpoint

    marker = tmp_path / "MARKER"
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(saved({"state": {"w": torch.zeros(1)}, "meta": Marker(marker)}))
    with pytest.raises(QuantizationError, match="checkpoint.pt refused"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["data.pkl", "constants.pkl", "extra/notes.pkl"])
def test_load_artifact_refuses_a_hostile_model_file(scripted: Path, tmp_path: Path, where: str) -> None:
    """The manifest's sha256 is written by whoever wrote the file: it proves nothing about safety."""
    from farm.quant.artifact import load_artifact

    marker = tmp_path / "MARKER"
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    model = hostile_torchscript(scripted, tmp_path, where, marker)
    (artifact / "model.pt").write_bytes(model.read_bytes())
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    manifest = {"manifest_version": 1, "artifact": {"file": "model.pt", "format": "torchscript", "sha256": digest}}
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="refused"):
        load_artifact(artifact)
    assert not marker.exists()


def test_load_model_refusals_are_config_errors(exported: Path, tmp_path: Path) -> None:
    from farm.zoo.models import load_model

    marker = tmp_path / "MARKER"
    path = hostile_pt2(exported, tmp_path, "pickled_weight", marker)
    with pytest.raises(ConfigError) as e:
        load_model(f"file:{path}")
    assert isinstance(e.value, FarmError) and "\n" not in str(e.value)
    assert not marker.exists()


# --- valid files still load and run ---------------------------------------------------------------------


def test_valid_files_pass_the_inspection(exported: Path, scripted: Path, tmp_path: Path) -> None:
    from farm.zoo.safe_load import check_pt2, check_torch_file, check_torchscript

    check_pt2(exported)
    check_torchscript(scripted)
    state = tmp_path / "state.pt"
    qmodel = torch.ao.quantization.quantize_dynamic(toys.TinyMLP().eval(), dtype=torch.qint8)
    torch.save({"state_dict": qmodel.state_dict(), "note": "x", "n": 3, "shape": torch.Size([2])}, state)
    check_torch_file(state, "state.pt")


@pytest.mark.parametrize("method", ["fp32", "bf16"])
def test_quantize_runs_a_valid_pt2(
    exported: Path, tmp_path: Path, farm_home: Path, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = quantize(
        "--model", f"file:{exported}", "--dataset", TOY_DATA, "--method", method, "--batch-size", "1",
        "--batch-size", "4", "--output", "out", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(result.stdout)
    assert report["agreement"] >= (1.0 if method == "fp32" else 0.9)
    assert (tmp_path / "out" / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("method", "extra"),
    [("dynamic", []), ("static", ["--calibration-size", "16"]), ("qat", ["--epochs", "1", "--calibration-size", "16"])],
)
def test_integer_methods_refuse_a_pt2_in_one_line(
    exported: Path, tmp_path: Path, farm_home: Path, method: str, extra: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = quantize(
        "--model", f"file:{exported}", "--dataset", TOY_DATA, "--method", method, *extra, "--output", "out"
    )
    assert_refused(result, method, "serialized graph", "fp32, bf16 and fp16 work")
    assert not (tmp_path / "out").exists()


def test_a_pt2_with_a_duplicated_member_is_refused(exported: Path, tmp_path: Path) -> None:
    """torch's C++ zip reader and Python's zipfile may read different copies of a duplicated name."""
    from farm.zoo.safe_load import UnsafeFile, check_pt2

    marker = tmp_path / "MARKER"
    root = zipfile.ZipFile(exported).namelist()[0].split("/")[0]
    hostile = saved((Marker(marker),))
    # the hostile copy first, the clean one last (the one Python's zipfile would read)
    with zipfile.ZipFile(tmp_path / "dup2.pt2", "w") as out, zipfile.ZipFile(exported) as src:
        out.writestr(f"{root}/data/sample_inputs/model.pt", hostile)
        for name in src.namelist():
            out.writestr(name, src.read(name))
    with pytest.raises(UnsafeFile, match="two members of the same name"):
        check_pt2(tmp_path / "dup2.pt2")
    assert not marker.exists()
