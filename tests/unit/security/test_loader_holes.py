"""Holes a review found in the inspection: files torch's readers see differently from Python's, and races.

- torch decides zip vs legacy by byte 0 and finds zip members ignoring case; Python's zipfile does neither;
- torch.export retries a failed weights-only load of sample inputs without the guard;
- a file checked by path and then opened again by the loader can be swapped in between;
- operator arguments in a graph are resolved by name like node targets.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from farm.errors import ConfigError
from farm.zoo import safe_load
from farm.zoo.safe_load import Unreadable, UnsafeFile, check_graph_json, check_pt2, check_torch_file
from tests import toys
from tests.unit.security.test_hostile_files import EMPTY_ZIP, Marker, hostile_pt2, saved, upper_case_pickle


def test_a_pickle_followed_by_an_empty_zip_is_not_a_zip(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    polyglot = pickle.dumps(Marker(marker), protocol=2) + EMPTY_ZIP
    assert zipfile.is_zipfile(io.BytesIO(polyglot))  # what the first inspection trusted
    with pytest.raises(Unreadable, match="not a zip-format"):
        check_torch_file(polyglot, "w", require_zip=True)
    with pytest.raises(UnsafeFile, match="io.open"):  # read as the legacy file torch would read
        check_torch_file(polyglot, "w")
    assert not marker.exists()


def test_bytes_before_a_zip_archive_are_refused() -> None:
    good = saved({"w": torch.zeros(2)})
    check_torch_file(good, "good")
    with pytest.raises(UnsafeFile, match="data before its zip records"):
        check_torch_file(b"PK\x03\x04" + b"\0" * 60 + good, "prefixed")


def test_an_upper_case_pickle_name_is_checked(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    with pytest.raises(UnsafeFile, match=r"DATA\.PKL names the Python global io\.open"):
        check_torch_file(upper_case_pickle(saved({"w": Marker(marker)})), "w")
    assert not marker.exists()


def test_names_equal_ignoring_case_and_unknown_members_are_refused() -> None:
    good = saved({"w": torch.zeros(2)})
    with zipfile.ZipFile(io.BytesIO(good)) as z:
        members = {name: z.read(name) for name in z.namelist()}
    for extra, match in [("archive/DATA.pkl", "same name"), ("archive/payload.bin", "not part of a torch.save")]:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zout:
            for name, data in members.items():
                zout.writestr(name, data)
            zout.writestr(extra, members["archive/data.pkl"])
        with pytest.raises(UnsafeFile, match=match):
            check_torch_file(out.getvalue(), "w")


def test_legacy_format_files_are_checked_and_still_load(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf, _use_new_zipfile_serialization=False)
    check_torch_file(buf.getvalue(), "legacy.pt")
    buf = io.BytesIO()
    torch.save({"w": Marker(marker)}, buf, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeFile, match="io.open"):
        check_torch_file(buf.getvalue(), "legacy.pt")
    with pytest.raises(Unreadable, match="not a torch.save file"):
        check_torch_file(b"hello, not a pickle", "text.pt")
    assert not marker.exists()


def test_sample_inputs_that_fail_a_weights_only_load_are_refused(exported: Path, tmp_path: Path) -> None:
    """Every pickle passes the opcode check, but the load fails: torch would retry it without the guard."""
    broken = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(saved((torch.ones(2),))), "r") as zin, zipfile.ZipFile(broken, "w") as zout:
        for name in zin.namelist():
            if "/data/" not in name:  # drop the tensor's storage
                zout.writestr(name, zin.read(name))
    path = tmp_path / "broken.pt2"
    with zipfile.ZipFile(exported) as zin, zipfile.ZipFile(path, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, broken.getvalue() if "/data/sample_inputs/" in name else zin.read(name))
    with pytest.raises(UnsafeFile, match="fails a weights-only load"):
        check_pt2(path)


def test_a_pickled_payload_is_refused_even_when_its_pickle_is_clean(exported: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(exported) as z:
        root = z.namelist()[0].split("/")[0]
    path = tmp_path / "clean-pickled.pt2"
    with zipfile.ZipFile(exported) as zin, zipfile.ZipFile(path, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == f"{root}/data/weights/model_weights_config.json":
                config = json.loads(data)
                for meta in config["config"].values():
                    meta["use_pickle"] = True
                data = json.dumps(config).encode()
            zout.writestr(name, data)
    with pytest.raises(UnsafeFile, match="is pickled"):
        check_pt2(path)


# --- the file the loader reads is the file inspected --------------------------------------------------------


def test_a_pt2_swapped_after_inspection_is_not_loaded(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from farm.zoo.models import load_model

    marker = tmp_path / "MARKER"
    hostile = hostile_pt2(exported, tmp_path, "sample_inputs", marker).read_bytes()
    path = tmp_path / "model.pt2"
    path.write_bytes(exported.read_bytes())
    inspect = safe_load.check_pt2

    def inspect_then_swap(*args: object, **kwargs: object) -> None:
        inspect(*args, **kwargs)  # type: ignore[arg-type]
        path.write_bytes(hostile)

    monkeypatch.setattr(safe_load, "check_pt2", inspect_then_swap)
    model = load_model(f"file:{path}")
    assert not marker.exists()
    assert path.read_bytes() == hostile  # the swap happened; the loader used the bytes it had inspected
    assert model.module(torch.randn(3, *toys.SHAPE)).shape == (3, 10)


def test_weights_swapped_after_inspection_are_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.zoo.models import read_state_dict

    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, path)
    inspect = safe_load.check_torch_file

    def inspect_then_swap(*args: object, **kwargs: object) -> None:
        inspect(*args, **kwargs)  # type: ignore[arg-type]
        torch.save({"w": torch.full((2,), 7.0)}, path)

    monkeypatch.setattr(safe_load, "check_torch_file", inspect_then_swap)
    assert torch.equal(read_state_dict(path)["w"], torch.ones(2))


def test_a_model_file_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    from farm.zoo.models import load_model

    path = tmp_path / "model.pt2"
    path.write_bytes(b"")
    path.chmod(0)
    try:
        with pytest.raises(ConfigError) as e:
            load_model(f"file:{path}")
        assert "\n" not in str(e.value)
    finally:
        path.chmod(0o600)


# --- operator arguments -----------------------------------------------------------------------------------


def graph_with_argument(operator: str) -> dict[str, object]:
    node = {"target": "torch.ops.aten.relu.default", "inputs": [{"name": "f", "arg": {"as_operator": operator}}]}
    return {"graph_module": {"graph": {"nodes": [node]}}}


@pytest.mark.parametrize("operator", ["torch.os.system", "#ns:evil", "builtins.eval", "torch.__class__"])
def test_operator_arguments_must_be_torch_operators(operator: str) -> None:
    with pytest.raises(UnsafeFile, match="not a torch operator"):
        check_graph_json(graph_with_argument(operator), "models/model.json")


def test_a_torch_operator_argument_passes() -> None:
    check_graph_json(graph_with_argument("torch.ops.aten.add.Tensor"), "models/model.json")
