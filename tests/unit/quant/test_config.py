"""Method configs: JSON round trips, validation that names the field, and every problem reported at once."""

from __future__ import annotations

import dataclasses
import json

import pytest

from farm.errors import ConfigError
from farm.quant.bench_config import BenchmarkConfig
from farm.quant.config import (
    METHODS,
    DynamicConfig,
    MethodConfig,
    QATConfig,
    StaticConfig,
    config_from_dict,
    config_from_json,
    parameter_specs,
    parse_method,
    public_methods,
    resolve_device,
)

# One non-default config per method, so a round trip that dropped or defaulted a field would show.
NON_DEFAULT = {
    "fp32": {},
    "fp16": {"mode": "autocast"},
    "bf16": {"mode": "autocast"},
    "dynamic": {"backend": "qnnpack"},
    "static": {
        "bits": 4,
        "calibration_size": 32,
        "observer": "percentile",
        "percentile": 99.5,
        "granularity": "per_tensor",
        "activation": "symmetric",
        "backend": "onednn",
        "reduce_range": False,
    },
    "qat": {
        "bits": 6,
        "observer": "histogram",
        "epochs": None,
        "steps": 7,
        "lr": 0.05,
        "optimizer": "adamw",
        "momentum": 0.5,
        "weight_decay": 0.01,
        "batch_size": 8,
        "freeze_observers_after": 3,
        "freeze_bn_after": 2,
        "device": "cpu",
        "loss": "kd",
    },
    "noop": {},
}


def problems_of(error: ConfigError) -> dict[str, str]:
    return {p.path: p.message for p in error.problems}


def test_every_method_has_a_non_default_example() -> None:
    assert set(NON_DEFAULT) == set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_default_config_round_trips_through_json(method: str) -> None:
    config = parse_method(method)
    text = config.to_json()
    back = config_from_json(text)
    assert back == config
    assert type(back) is type(config)
    assert back.to_json() == text
    assert json.loads(text)["method"] == method
    assert json.loads(text)["version"] == type(config).version


@pytest.mark.parametrize("method", sorted(METHODS))
def test_non_default_config_round_trips_through_json_and_dict(method: str) -> None:
    config = parse_method(method, NON_DEFAULT[method])
    for name, value in NON_DEFAULT[method].items():
        assert getattr(config, name) == value
    assert config_from_json(config.to_json()) == config
    assert config_from_dict(config.to_dict()) == config
    if NON_DEFAULT[method]:
        assert config != parse_method(method)
        assert config.to_json() != parse_method(method).to_json()


def test_to_json_is_canonical() -> None:
    a = parse_method("static", {"observer": "histogram", "bits": 6})
    b = parse_method("static", {"bits": 6, "observer": "histogram"})
    assert a.to_json() == b.to_json()
    assert " " not in a.to_json()
    keys = list(json.loads(a.to_json()))
    assert keys == sorted(keys)


def test_configs_are_frozen() -> None:
    config = parse_method("static")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.bits = 4  # type: ignore[misc]


def test_replace_validates_the_copy() -> None:
    config = parse_method("static")
    assert config.replace(bits=4) == parse_method("static", {"bits": 4})
    with pytest.raises(ConfigError) as e:
        config.replace(bits=9)
    assert set(problems_of(e.value)) == {"bits"}


def test_unknown_parameter_is_named_with_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as e:
        parse_method("static", {"bitz": 8})
    problems = problems_of(e.value)
    assert set(problems) == {"bitz"}
    assert "unknown parameter" in problems["bitz"]
    assert "bits" in problems["bitz"] and "calibration_size" in problems["bitz"]


@pytest.mark.parametrize(
    ("method", "params", "field", "words"),
    [
        ("static", {"bits": "eight"}, "bits", "integer"),
        ("static", {"bits": 8.5}, "bits", "integer"),
        ("static", {"bits": True}, "bits", "integer"),
        ("static", {"calibration_size": "many"}, "calibration_size", "integer"),
        ("static", {"observer": 3}, "observer", "string"),
        ("static", {"reduce_range": "yes"}, "reduce_range", "true or false"),
        ("static", {"percentile": "high"}, "percentile", "number"),
        ("static", {"bits": None}, "bits", "not null"),
        ("qat", {"lr": [0.1]}, "lr", "number"),
        ("qat", {"lr": "nan"}, "lr", "finite"),
        ("qat", {"momentum": True}, "momentum", "number"),
    ],
)
def test_wrong_type_is_named(method: str, params: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_method(method, params)
    problems = problems_of(e.value)
    assert list(problems) == [field]
    assert words in problems[field]
    assert field in str(e.value)


@pytest.mark.parametrize("method", ["static", "qat"])
@pytest.mark.parametrize("bits", [0, 1, 9, 16, -8])
def test_bits_outside_2_to_8_are_refused(method: str, bits: int) -> None:
    with pytest.raises(ConfigError) as e:
        parse_method(method, {"bits": bits})
    problems = problems_of(e.value)
    assert list(problems) == ["bits"]
    assert ("at least 2" if bits < 2 else "at most 8") in problems["bits"]
    assert str(bits) in problems["bits"]


@pytest.mark.parametrize("bits", range(2, 9))
def test_bits_2_to_8_are_accepted_and_below_8_is_simulated(bits: int) -> None:
    for method in ("static", "qat"):
        config = parse_method(method, {"bits": bits})
        assert config.bits == bits  # type: ignore[attr-defined]
        assert config.simulated is (bits < 8)
        assert ("simulated" in config.label()) is (bits < 8)


def test_float_methods_are_never_simulated() -> None:
    for method in ("fp32", "fp16", "bf16"):
        assert parse_method(method).simulated is False


@pytest.mark.parametrize("bits", [4, 2, 7])
def test_dynamic_runs_int8_only(bits: int) -> None:
    with pytest.raises(ConfigError) as e:
        parse_method("dynamic", {"bits": bits})
    problems = problems_of(e.value)
    assert list(problems) == ["bits"]
    assert "int8" in problems["bits"] and str(bits) in problems["bits"]
    assert parse_method("dynamic", {"bits": 8}) == DynamicConfig()


def test_unknown_observer_lists_the_observers() -> None:
    with pytest.raises(ConfigError) as e:
        parse_method("static", {"observer": "minmax2"})
    problems = problems_of(e.value)
    assert list(problems) == ["observer"]
    assert "'minmax2'" in problems["observer"]
    for name in ("minmax", "moving_average", "histogram", "percentile"):
        assert name in problems["observer"]


@pytest.mark.parametrize("percentile", [49.9, 0, -1, 100.01, 150])
def test_percentile_out_of_range(percentile: float) -> None:
    with pytest.raises(ConfigError) as e:
        parse_method("static", {"observer": "percentile", "percentile": percentile})
    assert list(problems_of(e.value)) == ["percentile"]


@pytest.mark.parametrize("percentile", [50, 99.99, 100])
def test_percentile_bounds_are_inclusive(percentile: float) -> None:
    assert parse_method("static", {"percentile": percentile}).percentile == percentile  # type: ignore[attr-defined]


@pytest.mark.parametrize("size", [0, -1, -5])
@pytest.mark.parametrize("method", ["static", "qat"])
def test_calibration_size_must_be_positive(method: str, size: int) -> None:
    with pytest.raises(ConfigError) as e:
        parse_method(method, {"calibration_size": size})
    problems = problems_of(e.value)
    assert list(problems) == ["calibration_size"]
    assert "at least 1" in problems["calibration_size"]
    assert str(size) in problems["calibration_size"]


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        parse_method("static", {"bits": 9, "observer": "minmax2", "calibration_size": 0, "nope": 1, "percentile": 101})
    problems = problems_of(e.value)
    assert set(problems) == {"bits", "observer", "calibration_size", "nope", "percentile"}
    text = str(e.value)
    assert text.startswith("5 problems:")
    assert len(text.splitlines()) == 6
    for path in problems:
        assert f"  {path}: " in text


def test_problem_paths_carry_the_given_prefix() -> None:
    with pytest.raises(ConfigError) as e:
        parse_method("static", {"bits": 9, "observer": "x"}, path="methods[2].static")
    assert set(problems_of(e.value)) == {"methods[2].static.bits", "methods[2].static.observer"}


def test_cross_field_problem_is_named() -> None:
    with pytest.raises(ConfigError) as e:
        parse_method("static", {"mode": "eager", "bits": 4})
    problems = problems_of(e.value)
    assert list(problems) == ["mode"]
    assert "eager" in problems["mode"]
    assert parse_method("static", {"mode": "eager", "bits": 8}).mode == "eager"  # type: ignore[attr-defined]


def test_yaml_style_float_strings_are_accepted_for_floats() -> None:
    config = parse_method("qat", {"lr": "1e-4", "weight_decay": "5e-5"})
    assert isinstance(config, QATConfig)
    assert config.lr == pytest.approx(1e-4) and isinstance(config.lr, float)
    assert config.weight_decay == pytest.approx(5e-5)
    assert parse_method("qat", {"lr": 1}).lr == 1.0  # type: ignore[attr-defined]


def test_lr_must_be_greater_than_zero() -> None:
    for bad in (0, "0", -1e-3):
        with pytest.raises(ConfigError) as e:
            parse_method("qat", {"lr": bad})
        assert "greater than 0" in problems_of(e.value)["lr"]


def test_integral_floats_become_ints_but_fractions_do_not() -> None:
    config = parse_method("static", {"calibration_size": 32.0})
    assert config.calibration_size == 32 and isinstance(config.calibration_size, int)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError):
        parse_method("static", {"calibration_size": 32.5})


def test_unknown_method_lists_public_methods_only() -> None:
    with pytest.raises(ConfigError) as e:
        parse_method("int4-magic")
    text = str(e.value)
    assert "'int4-magic'" in text
    for cls in public_methods():
        assert cls.method in text
    assert "noop" not in text


def test_config_from_dict_refuses_newer_versions_and_missing_method() -> None:
    data = parse_method("static").to_dict()
    with pytest.raises(ConfigError) as e:
        config_from_dict({**data, "version": StaticConfig.version + 1})
    assert list(problems_of(e.value)) == ["version"]
    with pytest.raises(ConfigError) as e:
        config_from_dict({"bits": 8})
    assert list(problems_of(e.value)) == ["method"]


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"static"'])
def test_config_from_json_refuses_non_objects(text: str) -> None:
    with pytest.raises(ConfigError):
        config_from_json(text)


def test_public_methods_hide_noop_and_keep_a_stable_order() -> None:
    assert [c.method for c in public_methods()] == ["fp32", "fp16", "bf16", "dynamic", "static", "qat"]


@pytest.mark.parametrize("cls", list(METHODS.values()), ids=lambda c: c.method)
def test_parameter_specs_describe_every_field(cls: type[MethodConfig]) -> None:
    specs = parameter_specs(cls)
    assert [s["name"] for s in specs] == [f.name for f in dataclasses.fields(cls)]
    defaults = cls()
    for spec in specs:
        assert spec["default"] == getattr(defaults, spec["name"])
        assert spec["help"]
    json.dumps(specs)  # `farm methods --json` prints these


def test_static_bits_spec_gives_its_range() -> None:
    bits = next(s for s in parameter_specs(StaticConfig) if s["name"] == "bits")
    assert (bits["min"], bits["max"], bits["type"]) == (2, 8, "int")
    reduce_range = next(s for s in parameter_specs(StaticConfig) if s["name"] == "reduce_range")
    assert reduce_range["type"] == "bool | None"


def test_benchmark_config_problems() -> None:
    assert BenchmarkConfig().problems() == []
    paths = [p.path for p in BenchmarkConfig(batch_sizes=(0, 8, 8)).problems()]
    assert paths.count("batch_size") == 2
    assert [p.path for p in BenchmarkConfig(batch_sizes=()).problems()] == ["batch_size"]
    assert [p.path for p in BenchmarkConfig(threads=0).problems()] == ["threads"]
    assert [p.path for p in BenchmarkConfig(device="tpu").problems()] == ["device"]
    assert len(BenchmarkConfig(max_time_s=0).problems()) == 1
    bench = BenchmarkConfig(batch_sizes=(1, 4), warmup_s=0.0)
    assert BenchmarkConfig.from_dict(json.loads(json.dumps(bench.to_dict()))) == bench


def test_resolve_device() -> None:
    assert resolve_device(parse_method("fp16"), "auto") == "cuda"
    assert resolve_device(parse_method("static"), "auto") == "cpu"
    assert resolve_device(parse_method("bf16"), "cuda") == "cuda"
    with pytest.raises(ConfigError) as e:
        resolve_device(parse_method("static"), "cuda")
    assert list(problems_of(e.value)) == ["device"]
