"""Model references to modules: built-ins, torchvision, allowlisted entrypoints, graph files, weights files."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from farm.errors import ConfigError
from farm.zoo.digits import DigitsCNN, DigitsMLP, build_digits_model
from farm.zoo.models import builtin_models, load_model, read_state_dict, torchvision_models
from tests import toys


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_entrypoint_loads_in_eval_mode(allow_toys: str) -> None:
    loaded = load_model("entrypoint:tests.toys:tiny_cnn")
    assert isinstance(loaded.module, toys.TinyCNN)
    assert not loaded.module.training
    assert loaded.graph is False
    assert loaded.ref == "entrypoint:tests.toys:tiny_cnn"


def test_entrypoint_options_become_keyword_arguments(allow_toys: str) -> None:
    a = load_model("entrypoint:tests.toys:tiny_mlp?seed=1").module
    b = load_model("entrypoint:tests.toys:tiny_mlp?seed=1").module
    c = load_model("entrypoint:tests.toys:tiny_mlp").module
    assert same_weights(a, b)
    assert not same_weights(a, c)


def test_entrypoint_outside_the_allowlist_is_refused_before_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FARM_ALLOWED_MODULES", raising=False)
    with pytest.raises(ConfigError) as e:
        load_model("entrypoint:tests.toys:tiny_mlp")
    assert "FARM_ALLOWED_MODULES" in str(e.value)
    with pytest.raises(ConfigError):
        load_model("entrypoint:tests.toys:tiny_mlp", allowed=["tes"])
    assert load_model("entrypoint:tests.toys:tiny_mlp", allowed=["tests"]).module is not None


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("tests.toys.missing:f", "can't import tests.toys.missing"),
        ("tests.toys:no_such_function", "no callable 'no_such_function'"),
        ("tests.toys:SHAPE", "no callable 'SHAPE'"),
        ("tests.toys:not_a_module", "returned str, not a torch.nn.Module"),
        ("tests.toys:broken", "raised RuntimeError: boom"),
    ],
)
def test_bad_entrypoints_are_config_errors(allow_toys: str, body: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_model(f"entrypoint:{body}")
    assert words in str(e.value)


def test_torchvision_model_with_num_classes() -> None:
    assert "resnet18" in torchvision_models()
    loaded = load_model("torchvision:resnet18?num_classes=10")
    assert loaded.module.fc.out_features == 10  # type: ignore[union-attr]
    assert not loaded.module.training


def test_unknown_torchvision_model_suggests_names() -> None:
    with pytest.raises(ConfigError) as e:
        load_model("torchvision:resnet19")
    text = str(e.value)
    assert "resnet19" in text and "resnet18" in text


def test_builtin_models_are_listed() -> None:
    assert set(builtin_models()) == {"farm:digits-cnn", "farm:digits-mlp", "farm:tiny-encoder"}


@pytest.mark.slow  # the first use of farm:digits-cnn in a session trains it (about 5 s)
def test_digits_models_are_cached_under_farm_home(farm_home: Path) -> None:
    cnn = load_model("farm:digits-cnn").module
    assert isinstance(cnn, DigitsCNN) and not cnn.training
    cached = sorted(p.name for p in (farm_home / "cache" / "zoo").iterdir())
    assert any(name.startswith("digits-cnn-v") and name.endswith(".pt") for name in cached)
    again = load_model("farm:digits-cnn").module
    assert same_weights(cnn, again)


def test_digits_training_is_deterministic_and_a_damaged_cache_is_rebuilt(farm_home: Path, tmp_path: Path) -> None:
    session_mlp = load_model("farm:digits-mlp").module
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)  # the caller's RNG state must not leak into the built-in model
        fresh = build_digits_model("digits-mlp", tmp_path)  # trains from scratch in another directory
    assert isinstance(fresh, DigitsMLP)
    assert same_weights(session_mlp, fresh)
    (cache_file,) = tmp_path.glob("digits-mlp-*.pt")
    cache_file.write_bytes(b"not a state dict")
    rebuilt = build_digits_model("digits-mlp", tmp_path)
    assert same_weights(rebuilt, fresh)
    assert read_state_dict(cache_file).keys() == fresh.state_dict().keys()


def test_weights_file_is_loaded_strictly(allow_toys: str, tmp_path: Path) -> None:
    donor = toys.tiny_mlp(seed=5)
    path = tmp_path / "w.pt"
    torch.save(donor.state_dict(), path)
    assert same_weights(load_model("entrypoint:tests.toys:tiny_mlp", weights=path).module, donor)


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module."])
def test_common_checkpoint_wrappers_are_accepted(tmp_path: Path, wrap: str) -> None:
    state = toys.tiny_mlp(seed=2).state_dict()
    path = tmp_path / "w.pt"
    if wrap == "module.":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        torch.save({wrap: state, "epoch": torch.tensor(3)}, path)
    loaded = read_state_dict(path)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def weights_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Bad weights files and the words their error must contain."""
    files: dict[str, tuple[Path, str]] = {}
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    files["list"] = (path, "is not a state dict")
    path = tmp_path / "object.pt"
    torch.save(toys.NotAStateDict(), path)
    files["object"] = (path, "holds Python objects that a weights-only load refuses")
    path = tmp_path / "random.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    files["random"] = (path, "is corrupted or not a PyTorch file")
    path = tmp_path / "truncated.pt"
    torch.save(toys.tiny_mlp().state_dict(), path)
    path.write_bytes(path.read_bytes()[:300])
    files["truncated"] = (path, "is corrupted or not a PyTorch file")
    path = tmp_path / "empty-dict.pt"
    torch.save({}, path)
    files["empty"] = (path, "is not a state dict")
    path = tmp_path / "other-model.pt"
    torch.save(toys.tiny_cnn().state_dict(), path)
    files["mismatch"] = (path, "does not fit entrypoint:tests.toys:tiny_mlp")
    files["missing"] = (tmp_path / "nope.pt", "does not exist")
    return files


@pytest.mark.parametrize("kind", ["list", "object", "random", "truncated", "empty", "mismatch", "missing"])
def test_bad_weights_files_are_named_for_what_they_are(allow_toys: str, tmp_path: Path, kind: str) -> None:
    path, words = weights_files(tmp_path)[kind]
    with pytest.raises(ConfigError) as e:
        load_model("entrypoint:tests.toys:tiny_mlp", weights=path)
    text = str(e.value)
    assert words in text
    assert str(path) in text
    assert "\n" not in text and "\x1b" not in text
    if kind == "random":
        assert "Python objects" not in text  # random bytes are no pickled object


def test_torchscript_file_is_a_graph(tmp_path: Path) -> None:
    model = toys.tiny_mlp()
    path = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    loaded = load_model(f"file:{path}")
    assert loaded.graph is True
    x = torch.randn(3, *toys.SHAPE)
    assert torch.allclose(loaded.module(x), model(x))
    with pytest.raises(ConfigError) as e:
        load_model(f"file:{path}", weights=tmp_path / "w.pt")
    assert "serialized graph" in str(e.value)


def test_missing_or_unreadable_graph_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_model(f"file:{tmp_path / 'absent.pt'}")
    assert "does not exist" in str(e.value)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(64))
    with pytest.raises(ConfigError) as e:
        load_model(f"file:{junk}")
    assert "not a readable TorchScript" in str(e.value)
