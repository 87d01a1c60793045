"""``farm methods`` and ``farm models``: what a trial can ask for, readable and as JSON."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from farm.cli import cli
from farm.quant.config import METHODS, parameter_specs, public_methods

PUBLIC = ["fp32", "fp16", "bf16", "dynamic", "static", "qat"]


@pytest.mark.parametrize("width", [80, 200])
def test_methods_lists_every_public_method_with_every_parameter(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.cli import render

    monkeypatch.setattr(render.out, "width", width)  # the console's width is fixed when it is created
    result = CliRunner().invoke(cli, ["methods"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    headers = [line.split(" - ")[0] for line in out.splitlines() if line and not line.startswith(" ") and " - " in line]
    assert headers == PUBLIC
    assert "noop" not in out
    sections = out.split("\n\n")
    for cls in public_methods():
        (section,) = [s for s in sections if s.lstrip("\n").startswith(f"{cls.method} - ")]
        names = [p["name"] for p in parameter_specs(cls)]
        for name in names:
            assert f"  {name} " in section, (cls.method, name)  # whole names, never cut at 80 columns
        if not names:
            assert "(no parameters)" in section
    assert "…" not in out
    widest_row = max(len(line) for line in out.splitlines() if "│" in line)  # summaries soft-wrap; tables fit
    assert widest_row <= width and (widest_row > 80) is (width > 80)


def test_methods_json_parses_and_matches_the_configs() -> None:
    result = CliRunner().invoke(cli, ["methods", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [m["method"] for m in data] == PUBLIC
    for entry in data:
        cls = METHODS[entry["method"]]
        assert [p["name"] for p in entry["parameters"]] == [f.name for f in dataclasses.fields(cls)]
        assert entry["bits_axis"] is cls.integer and entry["calibration_axis"] is cls.calibrated
        assert entry["summary"] == cls.summary
    static = next(m for m in data if m["method"] == "static")
    bits = next(p for p in static["parameters"] if p["name"] == "bits")
    assert (bits["default"], bits["min"], bits["max"]) == (8, 2, 8)
    observer = next(p for p in static["parameters"] if p["name"] == "observer")
    assert observer["choices"] == ["minmax", "moving_average", "histogram", "percentile"]


def test_models_lists_builtins_and_torchvision() -> None:
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "farm:digits-cnn" in out and "farm:digits-mlp" in out
    torchvision_line = next(line for line in out.splitlines() if line.strip().startswith("torchvision: alexnet"))
    assert "resnet18" in torchvision_line.split(": ", 1)[1].split(", ")
    for scheme in ("sklearn:", "imagefolder:", "synthetic:", "entrypoint:"):
        assert scheme in out


def test_models_json_parses() -> None:
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data["builtin"]) == {"farm:digits-cnn", "farm:digits-mlp", "farm:tiny-encoder"}
    assert "resnet18" in data["torchvision"] and "mobilenet_v3_small" in data["torchvision"]
    assert set(data["model_schemes"]) == {"farm", "torchvision", "entrypoint", "file"}
    assert set(data["dataset_schemes"]) == {"sklearn", "imagefolder", "synthetic", "tokens", "entrypoint"}
