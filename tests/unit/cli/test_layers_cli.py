"""``farm layers MODEL`` and the per-layer rule options of ``farm quantize`` (``--layer``, ``--layers-file``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm.cli.layer_rules import parse_cli_rule
from farm.errors import ConfigError
from tests import toys
from tests.sweeps import describe, farm
from tests.unit.cli.test_bad_input import assert_one_line

TOY_CNN = "entrypoint:tests.toys:tiny_cnn"
TOY_MLP = "entrypoint:tests.toys:tiny_mlp"


@pytest.fixture(autouse=True)
def _toys(allow_toys: str) -> None:
    """The toy models load (FARM_ALLOWED_MODULES=tests.toys)."""


def test_layers_lists_every_quantizable_layer_with_shares_and_methods() -> None:
    result = farm("layers", TOY_CNN, "--dataset", toys.SYNTHETIC, "--json")
    assert result.exit_code == 0, describe(result)
    data = json.loads(result.stdout)
    rows = {r["name"]: r for r in data["layers"]}
    assert list(rows) == ["features.0", "features.3", "features.6", "classifier"]
    assert rows["classifier"]["methods"] == ["dynamic", "static", "qat"]
    assert rows["features.3"]["methods"] == ["static", "qat"]
    assert rows["features.6"]["params"] == 32 * 32 * 9 and rows["features.6"]["macs"] == 8 * 8 * 32 * 32 * 9
    assert sum(r["mac_share"] for r in rows.values()) == pytest.approx(1.0)

    only = json.loads(farm("layers", TOY_CNN, "--dataset", toys.SYNTHETIC, "--method", "dynamic", "--json").stdout)
    assert [r["name"] for r in only["layers"]] == ["classifier"]


def test_layers_prints_a_table() -> None:
    result = farm("layers", "farm:digits-cnn")
    assert result.exit_code == 0, describe(result)
    assert "features.10" in result.stdout and "classifier" in result.stdout and "MACs %" in result.stdout


def test_layers_refuses_bad_input_in_one_line() -> None:
    assert_one_line(farm("layers", TOY_CNN), "--dataset is required")
    assert_one_line(farm("layers", "farm:digits-cnn", "--method", "int3"), "--method")
    assert_one_line(farm("layers", "farm:tiny-encoder", "--model-output", "nope"), "embedding, logits")


def test_layers_mark_those_the_output_compared_does_not_read() -> None:
    args = ("layers", "farm:tiny-encoder", "--method", "dynamic", "--model-output", "embedding")
    result = farm(*args, "--json")
    assert result.exit_code == 0, describe(result)
    data = json.loads(result.stdout)
    assert data["output"] == "embedding"
    assert [r["name"] for r in data["layers"] if not r["feeds_output"]] == ["head"]
    table = farm(*args)
    assert "feeds output" in table.stdout and "does not read head" in table.stdout, describe(table)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("fc:skip", {"name": "fc", "skip": True}),
        ("type=Linear:granularity=pc", {"type": "Linear", "granularity": "per_channel"}),
        (
            "type=Conv2d@layer4.*:bits=4,observer=histogram",
            {"type": "Conv2d", "name": "layer4.*", "bits": 4, "observer": "histogram"},
        ),  # fmt: skip
        (r"re:layer[34]\.(0|1):quantize", {"name": r"re:layer[34]\.(0|1)", "skip": False}),
        ("enc.*:skip,dtype=bf16", {"name": "enc.*", "skip": True, "dtype": "bf16"}),
    ],
)
def test_the_cli_rule_syntax(text: str, rule: dict[str, object]) -> None:
    assert parse_cli_rule(text) == rule


@pytest.mark.parametrize("text", ["fc", ":skip", "fc:", "fc:bits=four", "fc:frob", "fc:skip=yes"])
def test_bad_cli_rules_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--layer"):
        parse_cli_rule(text)


def test_quantize_applies_layer_rules_and_reports_them(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("- {name: net.1, granularity: per_channel}\n")
    args = ["quantize", "--model", TOY_MLP, "--dataset", toys.SYNTHETIC, "--method", "dynamic", "--batch-size", "1"]
    result = farm(
        *args, "--layer", "net.3:skip", "--layers-file", str(rules), "--output", str(tmp_path / "t"), "--json"
    )
    assert result.exit_code == 0, describe(result)
    row = json.loads(result.stdout)
    assert row["config"]["layers"] == [{"name": "net.1", "granularity": "per_channel"}, {"name": "net.3", "skip": True}]
    assert row["recipe"] == "dynamic int8 net.1:pc fp:net.3"
    assert (row["coverage_layers"], row["coverage_layers_total"]) == (1, 2)
    assert row["coverage"] == pytest.approx((64 * 32 + 32) / 2410, abs=1e-4)


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (("--layer", "fc:skip"), ("matches no layer", "net.1 (Linear)", "net.3 (Linear)")),
        (("--layer", "net.3:bits=4"), ("must be 8",)),
        (("--layer", "net.3"), ("--layer", "SELECTOR:ACTION")),
        (("--layer", "net.3:bits=9"), ("--layer net.3:bits=9", "from 2 to 8")),
        (("--layers-file", "/no/such/rules.yaml"), ("--layers-file", "cannot read")),
    ],
)
def test_quantize_refuses_bad_rules_in_one_line_writing_nothing(
    tmp_path: Path, extra: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    args = ["quantize", "--model", TOY_MLP, "--dataset", toys.SYNTHETIC, "--method", "dynamic"]
    assert_one_line(farm(*args, *extra, "--output", str(runs / "trial")), *fragments)
    assert list(runs.iterdir()) == []  # no artifact, no scratch directory
