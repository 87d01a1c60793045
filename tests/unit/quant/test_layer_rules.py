"""Per-layer rules on the torch methods: the layers each method reaches, the real effect of skip and overrides
(module types, weight dtypes, qschemes, coverage), refusals, and rules in sweep specs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from farm.errors import ConfigError
from farm.quant import coverage
from farm.quant.config import parse_method
from farm.quant.context import QuantContext
from farm.quant.layer_list import check_rules, feeding, kept_by_rules, layer_table, quantizable_layers
from farm.quant.registry import apply_method, quiet_torch_ao
from tests import toys


def example(n: int = 4) -> torch.Tensor:
    return torch.randn((n, *toys.SHAPE), generator=torch.Generator().manual_seed(1))


def context(model: nn.Module) -> QuantContext:
    splits: dict[str, Any] = toys.toy_splits(16)
    return QuantContext(
        "toy", example(1), calibration=splits["calibration"], train=splits["train"], teacher=model, batch_size=8
    )


def run(model: nn.Module, method: str, **params: Any) -> Any:
    with quiet_torch_ao():
        return apply_method(model, parse_method(method, params), context(model))


def cov(model: nn.Module, outcome: Any) -> coverage.Coverage:
    return coverage.measure(coverage.profile_layers(model, example()), outcome.model, simulated=outcome.simulated)


class Attention(nn.Module):
    """torch's own attention and transformer layer: fx keeps them whole, dynamic leaves out_proj alone."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.block = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.mha(x, x, x)[0]))


def test_each_method_lists_the_layers_it_reaches() -> None:
    cnn = toys.tiny_cnn()
    assert quantizable_layers(cnn, "dynamic") == {"classifier": "Linear"}
    static = {"features.0": "Conv2d", "features.3": "Conv2d", "features.6": "Conv2d", "classifier": "Linear"}
    assert quantizable_layers(cnn, "static") == static == quantizable_layers(cnn, "qat")
    assert quantizable_layers(cnn, "bf16") == static  # batch norms stay fp32 anyway: no rule applies to them
    assert quantizable_layers(cnn, "fp32") == {}

    attention = Attention()
    dynamic = quantizable_layers(attention, "dynamic")
    assert "mha.out_proj" not in dynamic  # a Linear subclass torch.ao's dynamic flow leaves in fp32
    assert {"block.linear1", "block.linear2", "head"} <= set(dynamic)
    assert quantizable_layers(attention, "static") == {"head": "Linear"}  # fx traces neither mha nor block
    assert "mha.out_proj" not in quantizable_layers(attention, "fp16") and "mha" in quantizable_layers(
        attention, "fp16"
    )


def test_layer_table_gives_shares_that_add_up() -> None:
    cnn = toys.tiny_cnn()
    rows = layer_table(cnn, example(), "static")
    assert [r.name for r in rows] == ["features.0", "features.3", "features.6", "classifier"]
    assert rows[2].params == 32 * 32 * 9 and rows[2].macs == 8 * 8 * 32 * 32 * 9
    assert sum(r.mac_share for r in rows) == pytest.approx(1.0)
    assert 0.9 < sum(r.param_share for r in rows) < 1.0  # the batch norms hold the rest


class TwoHeads(nn.Module):
    """An embedding and the head that reads it, beside a layer the forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head, self.unused = nn.Linear(4, 4), nn.Linear(4, 2), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = torch.relu(self.body(x))
        return {"embedding": embedding, "logits": self.head(embedding)}


def test_the_layers_an_output_depends_on_are_told_from_those_it_does_not() -> None:
    """A tune compares one output: a layer that does not feed it (the head, beside the embedding) changes nothing
    it computes, and the export of that output drops it; a layer the forward never calls tells nothing."""
    from farm.zoo.data import first_batch, load_dataset
    from farm.zoo.models import load_model

    model, x = TwoHeads().eval(), torch.randn(3, 4)
    names = ["body", "head", "unused"]
    assert feeding(model, x, names, "embedding") == {"body", "unused"}
    assert feeding(model, x, names, "logits") == {"body", "head", "unused"}
    encoder = load_model("farm:tiny-encoder").module.eval()
    tokens = first_batch(load_dataset("tokens:16").test, 2)
    layers = list(quantizable_layers(encoder, "dynamic"))
    assert set(layers) - feeding(encoder, tokens, layers, "embedding") == {"head"}
    assert feeding(encoder, tokens, layers) == set(layers)  # the logits read every layer
    assert not any(p.grad is not None for p in encoder.parameters())  # the probes' gradients touch no weight


def test_dynamic_skip_keeps_the_layer_a_float_linear_and_coverage_drops() -> None:
    mlp = toys.tiny_mlp()
    outcome = run(
        mlp, "dynamic", layers=[{"name": "net.3", "skip": True}, {"name": "net.1", "granularity": "per_channel"}]
    )
    modules = dict(outcome.model.named_modules())
    assert type(modules["net.3"]) is nn.Linear and modules["net.3"].weight.dtype == torch.float32
    assert type(modules["net.1"]).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert modules["net.1"].weight().qscheme() == torch.per_channel_affine  # the override, method per_tensor
    c = cov(mlp, outcome)
    assert (c.layers, c.layers_total) == (1, 2)
    assert c.params == pytest.approx((64 * 32 + 32) / 2410, abs=1e-4)
    with torch.no_grad():
        assert torch.allclose(outcome.model(example()), mlp(example()), atol=0.05)


def test_low_coverage_warning_names_the_layers_the_rules_kept() -> None:
    mlp = toys.tiny_mlp()
    rules = [{"type": "Linear", "skip": True}]
    c = cov(mlp, run(mlp, "dynamic", layers=rules))
    kept = kept_by_rules(mlp, "dynamic", parse_method("dynamic", {"layers": rules}).layers)
    warning = coverage.low_coverage_warning("dynamic", c, kept) or ""
    assert "per-layer rules keep net.1, net.3 in floating point" in warning
    assert "kept by the rules" in warning and "no quantized kernel" not in warning


def test_static_skip_leaves_a_float_module_and_overrides_change_the_qscheme() -> None:
    cnn = toys.tiny_cnn()
    outcome = run(
        cnn,
        "static",
        layers=[{"name": "classifier", "skip": True}, {"name": "features.3", "granularity": "per_tensor"}],
    )
    assert not outcome.simulated
    modules = dict(outcome.model.named_modules())
    assert type(modules["classifier"]) is nn.Linear
    assert modules["features.3"].weight().qscheme() == torch.per_tensor_affine
    assert modules["features.6"].weight().qscheme() == torch.per_channel_affine
    c = cov(cnn, outcome)
    assert (c.layers, c.layers_total) == (3, 4)
    whole = cov(cnn, run(cnn, "static"))
    assert whole.params == pytest.approx(1.0) and c.params < whole.params


def test_a_lower_bit_rule_simulates_the_model_with_that_layer_narrower() -> None:
    cnn = toys.tiny_cnn()
    mixed = run(cnn, "static", layers=[{"name": "features.6", "bits": 4}])
    assert mixed.simulated  # no int8 kernel runs a 4-bit layer
    fq = {n: m.weight_fake_quant for n, m in mixed.model.named_modules() if hasattr(m, "weight_fake_quant")}
    assert (int(fq["features.6"].quant_min), int(fq["features.6"].quant_max)) == (-8, 7)
    assert (int(fq["features.3"].quant_min), int(fq["features.3"].quant_max)) == (-128, 127)
    all4 = run(cnn, "static", bits=4)
    one8 = run(cnn, "static", bits=4, layers=[{"name": "features.6", "bits": 8}])
    # the packed estimate counts each layer at its own bit-width: features.6 (9,216 weights) at 8 bits, not 4
    assert one8.packed_size_bytes - all4.packed_size_bytes == 32 * 32 * 9 * 4 // 8


def test_qat_skip_keeps_the_layer_without_fake_quantizer() -> None:
    cnn = toys.tiny_cnn()
    outcome = run(cnn, "qat", steps=1, batch_size=8, layers=[{"name": "features.0", "skip": True}])
    modules = dict(outcome.model.named_modules())
    assert not type(modules["features.0"]).__module__.startswith("torch.ao.nn.quantized")
    assert type(modules["features.3"]).__module__.startswith("torch.ao.nn.intrinsic.quantized")
    assert cov(cnn, outcome).layers == 3


def test_eager_static_sets_the_module_qconfig() -> None:
    model = toys.stubbed_cnn()
    outcome = run(model, "static", mode="eager", layers=[{"name": "fc", "granularity": "per_tensor"}])
    modules = dict(outcome.model.named_modules())
    assert modules["fc"].weight().qscheme() == torch.per_tensor_affine
    assert modules["conv"].weight().qscheme() == torch.per_channel_affine


def test_bf16_keeps_a_skipped_layer_in_fp32_and_a_dtype_rule_in_its_dtype() -> None:
    cnn = toys.tiny_cnn()
    layers = [{"name": "features.6", "skip": True}, {"name": "classifier", "dtype": "fp16"}]
    outcome = run(cnn, "bf16", layers=layers)
    modules = dict(outcome.model.named_modules())
    assert modules["features.6"].weight.dtype == torch.float32
    assert modules["classifier"].weight.dtype == torch.float16
    assert modules["features.3"].weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = outcome.forward(outcome.prepare_input(example()))
        assert out.dtype == torch.bfloat16  # cast back at the layer's boundary
        assert torch.allclose(out.float(), cnn(example()), atol=0.1)
    profile = coverage.profile_layers(cnn, example())
    kept = kept_by_rules(cnn, "bf16", parse_method("bf16", {"layers": layers}).layers)
    assert list(kept) == ["features.6"]  # fp16 is still reduced precision
    c = coverage.full(profile, kept=kept, model=cnn)
    assert (c.layers, c.layers_total) == (3, 4)
    assert c.params == pytest.approx(1 - 32 * 32 * 9 / profile.total_params, abs=1e-5)


@pytest.mark.parametrize(
    ("method", "params", "fragment"),
    [
        ("dynamic", {"layers": [{"name": "fc", "bits": 4}]}, "must be 8"),
        ("dynamic", {"layers": [{"name": "fc", "observer": "histogram"}]}, "observes no activations"),
        ("bf16", {"layers": [{"name": "fc", "bits": 4}]}, "skip or dtype, not bits"),
        ("bf16", {"mode": "autocast", "layers": [{"name": "fc", "skip": True}]}, "need mode cast"),
        ("static", {"layers": [{"name": "fc", "skip": True, "dtype": "bf16"}]}, "keeps a skipped layer in fp32"),
        ("fp32", {"layers": [{"name": "fc", "skip": True}]}, "quantizes no layer"),
    ],
)
def test_what_a_method_cannot_do_per_layer_is_refused_with_the_config(
    method: str, params: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_method(method, params)


def test_a_rule_matching_no_layer_is_refused_naming_the_layers() -> None:
    cfg = parse_method("static", {"layers": [{"name": "fc", "skip": True}, {"type": "Linear", "skip": True}]})
    with pytest.raises(ConfigError) as caught:
        check_rules(toys.tiny_cnn(), cfg)
    (problem,) = caught.value.problems  # the second rule matches the classifier
    assert problem.path == "layers[0]"
    assert "features.0 (Conv2d)" in problem.message and "classifier (Linear)" in problem.message
    # the same rule under dynamic: Conv2d is not a layer dynamic quantizes
    with pytest.raises(ConfigError, match="classifier"):
        check_rules(toys.tiny_cnn(), parse_method("dynamic", {"layers": [{"type": "Conv2d", "skip": True}]}))
    check_rules(toys.tiny_cnn(), parse_method("static", {"layers": [{"name": "features.*", "skip": True}]}))


def test_a_spec_takes_one_rule_list_as_one_value_and_a_list_of_lists_as_an_axis() -> None:
    from farm.quant.recipe import recipe_label
    from farm.spec.load import load_spec

    head = "name: x\nmodels: ['entrypoint:tests.toys:tiny_mlp']\ndataset: 'synthetic:1x8x8?n_test=8'\n"
    one = load_spec(head + "methods: [{dynamic: {layers: [{name: net.3, skip: true}]}}]\n")
    assert sorted(recipe_label(j.spec.method) for j in one.jobs) == ["dynamic int8 fp:net.3", "fp32"]
    sets = "[[], [{name: net.3, skip: true}], [{name: net.1, skip: true}]]"
    axis = load_spec(
        head + f"methods: [{{dynamic: {{layers: {sets}}}}}]\nexclude: [{{layers: [{{name: net.1, skip: true}}]}}]\n"
    )
    labels = sorted(recipe_label(j.spec.method) for j in axis.jobs)
    assert labels == ["dynamic int8", "dynamic int8 fp:net.3", "fp32"]
    keys = {recipe_label(j.spec.method): j.key for j in one.jobs + axis.jobs}
    assert len(set(keys.values())) == 3  # the rules are part of the key
    with pytest.raises(ConfigError, match=r"layers\[0\].skp"):
        load_spec(head + "methods: [{dynamic: {layers: [{name: net.3, skp: true}]}}]\n")


def test_a_long_rule_set_is_labelled_by_what_its_rules_do_and_a_digest() -> None:
    from farm.quant.layers import LayerRule, rules_label

    def label(**rule: Any) -> str:
        return rules_label(tuple(LayerRule(name=f"l{i}", **rule) for i in range(5)))

    assert label(skip=True).startswith("fp×5#")
    assert label(bits=8).startswith("int8×5#")  # a tune's layers raised to int8 over a simulated base
    assert label(bits=8, granularity="per_tensor").startswith("layers×5#")
    assert label(bits=8) != rules_label(tuple(LayerRule(name=f"m{i}", bits=8) for i in range(5)))
