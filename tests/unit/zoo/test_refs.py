"""Model and dataset references: the documented forms parse, everything else is refused with a reason."""

from __future__ import annotations

import re

import pytest

from farm.errors import ConfigError
from farm.zoo.refs import (
    BUILTIN_MODELS,
    Ref,
    allowed_modules,
    check_entrypoint_allowed,
    parse_dataset_ref,
    parse_model_ref,
)


@pytest.mark.parametrize(
    ("text", "scheme", "body", "options"),
    [
        ("farm:digits-cnn", "farm", "digits-cnn", ()),
        ("farm:digits-mlp", "farm", "digits-mlp", ()),
        ("torchvision:resnet18", "torchvision", "resnet18", ()),
        (
            "torchvision:mobilenet_v3_small?num_classes=10",
            "torchvision",
            "mobilenet_v3_small",
            (("num_classes", "10"),),
        ),
        ("entrypoint:tests.toys:tiny_mlp", "entrypoint", "tests.toys:tiny_mlp", ()),
        (
            "entrypoint:pkg.sub.mod:build?width=4&name=x",
            "entrypoint",
            "pkg.sub.mod:build",
            (("width", "4"), ("name", "x")),
        ),
        ("file:/models/net.pt", "file", "/models/net.pt", ()),
        ("file:relative/net.pt2", "file", "relative/net.pt2", ()),
    ],
)
def test_model_refs_parse(text: str, scheme: str, body: str, options: tuple) -> None:
    ref = parse_model_ref(text)
    assert (ref.kind, ref.scheme, ref.body, ref.options) == ("model", scheme, body, options)
    assert str(ref) == text
    assert parse_model_ref(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "scheme", "body"),
    [
        ("sklearn:digits", "sklearn", "digits"),
        ("imagefolder:/data/val", "imagefolder", "/data/val"),
        ("imagefolder:/data/val?image_size=160&calibration_fraction=0.25&test_size=100", "imagefolder", "/data/val"),
        ("synthetic:3x224x224", "synthetic", "3x224x224"),
        ("synthetic:16", "synthetic", "16"),
        ("synthetic:1x8x8?n_test=4&n_calibration=8&n_train=2", "synthetic", "1x8x8"),
        ("entrypoint:tests.toys:splits?n=3", "entrypoint", "tests.toys:splits"),
    ],
)
def test_dataset_refs_parse(text: str, scheme: str, body: str) -> None:
    ref = parse_dataset_ref(text)
    assert (ref.kind, ref.scheme, ref.body) == ("dataset", scheme, body)
    assert parse_dataset_ref(str(ref)) == ref


def test_option_accessors() -> None:
    ref = parse_dataset_ref("imagefolder:/d?image_size=160&calibration_fraction=0.25")
    assert ref.int_option("image_size", 224) == 160
    assert ref.int_option("test_size", 7) == 7
    assert ref.float_option("calibration_fraction", 0.5) == 0.25
    assert ref.option("missing") is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("digits-cnn", "expected SCHEME:NAME"),
        ("hub:resnet18", "scheme 'hub'"),
        ("http://example.com/model.pt", "scheme 'http'"),
        ("farm:digits-rnn", "no built-in model 'digits-rnn'"),
        ("farm:", "no built-in model"),
        ("torchvision:ResNet18", "torchvision model name"),
        ("torchvision:resnet18/../x", "torchvision model name"),
        ("entrypoint:tests.toys", "package.module:function"),
        ("entrypoint:tests.toys:tiny mlp", "package.module:function"),
        ("entrypoint:1tests:f", "package.module:function"),
        ("file:", "expected a path"),
        ("farm:digits-cnn?pretrained=1", "unknown option 'pretrained'"),
        ("file:/m.pt?map_location=cuda", "unknown option 'map_location'"),
        ("torchvision:resnet18?num_classes=0", "positive integer"),
        ("torchvision:resnet18?num_classes=ten", "positive integer"),
        ("torchvision:resnet18?weights=DEFAULT", "unknown option 'weights'"),
    ],
)
def test_bad_model_refs_are_refused(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_model_ref(text)
    assert words in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("digits", "expected SCHEME:NAME"),
        ("hf:mnist", "scheme 'hf'"),
        ("farm:digits-cnn", "scheme 'farm'"),
        ("sklearn:iris", "no scikit-learn dataset 'iris'"),
        ("imagefolder:", "expected a path"),
        ("synthetic:", "sample shape"),
        ("synthetic:3x224x", "sample shape"),
        ("synthetic:3x0x8", "sample shape"),
        ("synthetic:0x8x8", "sample shape"),
        ("synthetic:-3x8x8", "sample shape"),
        ("synthetic:3*8*8", "sample shape"),
        ("synthetic:3X8X8", "sample shape"),
        ("synthetic:1x8x8?n_tests=4", "unknown option 'n_tests'"),
        ("synthetic:1x8x8?n_test=0", "positive integer"),
        ("synthetic:1x8x8?n_test=-4", "positive integer"),
        ("sklearn:digits?subset=train", "unknown option 'subset'"),
        ("imagefolder:/d?calibration_fraction=1.5", "between 0 and 1"),
        ("imagefolder:/d?calibration_fraction=0", "between 0 and 1"),
        ("imagefolder:/d?calibration_fraction=half", "between 0 and 1"),
        ("imagefolder:/d?image_size=big", "positive integer"),
        ("imagefolder:/d?resize=256", "unknown option 'resize'"),
    ],
)
def test_bad_dataset_refs_are_refused(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_dataset_ref(text)
    assert words in str(e.value)


def test_every_builtin_model_parses() -> None:
    for name in BUILTIN_MODELS:
        assert parse_model_ref(f"farm:{name}").body == name


def test_entrypoint_options_are_passed_through_unchecked() -> None:
    # Entrypoints receive their options as keyword arguments; QuantFarm does not know their names.
    ref = parse_model_ref("entrypoint:tests.toys:tiny_mlp?seed=3&anything=else")
    assert ref.option("seed") == "3" and ref.option("anything") == "else"


def entry(body: str) -> Ref:
    return parse_model_ref(f"entrypoint:{body}")


@pytest.mark.parametrize(
    ("allowed", "body"),
    [
        (["tests"], "tests.toys:tiny_mlp"),
        (["tests.toys"], "tests.toys:tiny_mlp"),
        (["tests.toys"], "tests.toys.deeper:f"),
        (["other", "tests"], "tests.toys:tiny_mlp"),
        (["mypkg"], "mypkg:build"),
    ],
)
def test_allowlist_admits_modules_under_a_listed_prefix(allowed: list[str], body: str) -> None:
    module, function = check_entrypoint_allowed(entry(body), allowed)
    assert f"{module}:{function}" == body


@pytest.mark.parametrize(
    ("allowed", "body"),
    [
        (["tes"], "tests.toys:tiny_mlp"),
        (["tests.toy"], "tests.toys:tiny_mlp"),
        (["tests.toys"], "tests:f"),
        (["tests.toys"], "tests.toys_evil:f"),
        (["os"], "osx.path:join"),
        ([], "tests.toys:tiny_mlp"),
        (["toys"], "tests.toys:tiny_mlp"),
    ],
)
def test_allowlist_matches_whole_dotted_components_only(allowed: list[str], body: str) -> None:
    with pytest.raises(ConfigError) as e:
        check_entrypoint_allowed(entry(body), allowed)
    text = str(e.value)
    assert "FARM_ALLOWED_MODULES" in text and "not allowed" in text
    assert repr(body.partition(":")[0]) in text


def test_allowlist_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_ALLOWED_MODULES", " tests , ,mypkg.models,")
    assert allowed_modules() == ["tests", "mypkg.models"]
    assert check_entrypoint_allowed(entry("mypkg.models.resnet:build")) == ("mypkg.models.resnet", "build")
    with pytest.raises(ConfigError):
        check_entrypoint_allowed(entry("mypkg.data:build"))
    monkeypatch.delenv("FARM_ALLOWED_MODULES")
    assert allowed_modules() == []
    with pytest.raises(ConfigError) as e:
        check_entrypoint_allowed(entry("tests.toys:tiny_mlp"))
    assert "lists nothing" in str(e.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("farm:tiny-encoder?width=3", "unknown option 'width' for farm:tiny-encoder (valid: dim, heads, layers)"),
        ("farm:tiny-encoder?dim=4", "option dim must be an integer from 8 to 1024, got '4'"),
        ("farm:tiny-encoder?layers=x", "option layers must be an integer from 1 to 12"),
        ("farm:tiny-encoder?dim=100&heads=8", "dim 100 must be a multiple of heads 8"),
        ("farm:digits-cnn?dim=64", "unknown option 'dim' for farm:digits-cnn (valid: none)"),
    ],
)
def test_builtin_size_options_are_checked(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        parse_model_ref(text)


def test_builtin_dataset_ignores_options() -> None:
    from farm.zoo.refs import builtin_dataset

    assert builtin_dataset("farm:tiny-encoder?dim=256") == "tokens:32"
    assert builtin_dataset("farm:tiny-encoder") == "tokens:32"
    assert builtin_dataset("farm:digits-cnn") == builtin_dataset("torchvision:resnet18") == "sklearn:digits"
    assert (
        str(parse_model_ref("farm:tiny-encoder?dim=256&layers=4&heads=8"))
        == "farm:tiny-encoder?dim=256&layers=4&heads=8"
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("farm:tiny-encoder?dim=²", "option dim must be an integer from 8 to 1024, got '²'"),
        ("farm:tiny-encoder?dim=%C2%B2", "option dim must be an integer"),
        ("farm:tiny-encoder?dim=0064", "option dim must be an integer from 8 to 1024, got '0064'"),
        ("farm:tiny-encoder?dim=32&dim=64", "option dim is given 2 times"),
        ("tokens:²", "expected a sequence length"),
        ("synthetic:3x8x8?n_test=²", "option n_test must be a positive integer"),
    ],
)
def test_digits_that_are_not_plain_integers_are_one_clear_line(text: str, needle: str) -> None:
    parse = parse_dataset_ref if text.startswith(("tokens", "synthetic")) else parse_model_ref
    with pytest.raises(ConfigError, match=re.escape(needle)):
        parse(text)


def test_the_encoders_own_defaults_are_the_references() -> None:
    from farm.zoo import encoder
    from farm.zoo.refs import BUILTIN_OPTIONS

    defaults = {name: spec[2] for name, spec in BUILTIN_OPTIONS["tiny-encoder"].items()}
    assert defaults == {"dim": encoder.DIM, "layers": encoder.LAYERS, "heads": encoder.HEADS}
