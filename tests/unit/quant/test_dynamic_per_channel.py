"""dynamic granularity: per-channel Linear weight scales, keys of per-tensor jobs unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from farm.errors import ConfigError
from farm.quant.config import DynamicConfig, config_from_dict, parse_method
from farm.quant.context import QuantContext, quantized_engine, quiet_torch_ao
from farm.quant.dynamic import apply_dynamic
from farm.quant.recipe import recipe_label
from farm.zoo.encoder import build_tiny_encoder
from tests.unit.zoo.test_encoder import token_batch


def test_the_default_granularity_is_left_out_of_the_dict() -> None:
    default = parse_method("dynamic")
    assert isinstance(default, DynamicConfig) and default.granularity == "per_tensor"
    assert default.to_dict() == {"method": "dynamic", "version": 1, "bits": 8, "backend": "x86"}
    assert default.to_json() == parse_method("dynamic", {"granularity": "per_tensor"}).to_json()
    per_channel = parse_method("dynamic", {"granularity": "per_channel"})
    assert per_channel.to_dict()["granularity"] == "per_channel"
    assert config_from_dict(per_channel.to_dict()) == per_channel
    assert config_from_dict(default.to_dict()) == default


def test_labels_name_per_channel_only() -> None:
    assert recipe_label(parse_method("dynamic")) == "dynamic int8"
    assert recipe_label({"method": "dynamic", "version": 1, "bits": 8, "backend": "x86"}) == "dynamic int8"
    assert recipe_label(parse_method("dynamic", {"granularity": "per_channel"})) == "dynamic int8 pc"
    assert parse_method("dynamic", {"granularity": "per_channel"}).label() == "dynamic int8 per_channel"
    assert recipe_label(parse_method("static", {"granularity": "per_tensor"})) == "static int8 minmax pt n=256"


def test_a_bad_granularity_names_the_choices() -> None:
    with pytest.raises(ConfigError) as e:
        parse_method("dynamic", {"granularity": "per_row"}, path="methods[1].dynamic")
    assert "methods[1].dynamic.granularity" in str(e.value) and "per_tensor, per_channel" in str(e.value)


def _quantize(model: nn.Module, granularity: str) -> nn.Module:
    cfg = parse_method("dynamic", {"granularity": granularity})
    assert isinstance(cfg, DynamicConfig)
    with quiet_torch_ao():
        outcome = apply_dynamic(model, cfg, QuantContext("test", example_input=torch.zeros(1)))
    assert outcome.engine == "x86" and outcome.device == "cpu"
    return outcome.model


def _qschemes(model: nn.Module) -> set[torch.qscheme]:
    from torch.ao.nn.quantized import dynamic as nnqd

    return {m.weight().qscheme() for m in model.modules() if isinstance(m, nnqd.Linear)}


def _cosine(model: nn.Module, reference: nn.Module, key: str) -> float:
    batches = [token_batch(seed, batch=32) for seed in range(2)]
    with torch.no_grad(), quantized_engine("x86"):  # the engine the weights were packed for
        pairs = [(model(ids, mask)[key], reference(ids, mask)[key]) for ids, mask in batches]
    return torch.cat([nn.functional.cosine_similarity(a, b, dim=1) for a, b in pairs]).mean().item()


def test_per_channel_packs_per_channel_weights_and_is_no_worse_on_the_encoder() -> None:
    encoder = build_tiny_encoder()
    per_tensor, per_channel = _quantize(encoder, "per_tensor"), _quantize(encoder, "per_channel")
    assert _qschemes(per_tensor) == {torch.per_tensor_affine}
    assert _qschemes(per_channel) == {torch.per_channel_affine}
    assert not any(type(m) is nn.Linear for m in per_channel.modules())
    for key in ("embedding", "logits"):
        assert _cosine(per_channel, encoder, key) >= _cosine(per_tensor, encoder, key), key


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


def test_recurrent_layers_stay_per_tensor_beside_per_channel_linears() -> None:
    from torch.ao.nn.quantized import dynamic as nnqd

    torch.manual_seed(0)
    model = _Recurrent().eval()
    quantized = _quantize(model, "per_channel")
    assert isinstance(quantized.lstm, nnqd.LSTM) and _qschemes(quantized) == {torch.per_channel_affine}
    x = torch.randn(4, 5, 8)
    with torch.no_grad(), quantized_engine("x86"):
        ref, out = model(x), quantized(x)
    assert nn.functional.cosine_similarity(out, ref, dim=1).min() > 0.99
