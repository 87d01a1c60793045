"""Coverage: the share of parameters and multiply-accumulates a method really quantized."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic

from farm.quant import coverage
from farm.quant.registry import quiet_torch_ao
from tests import toys


def example() -> torch.Tensor:
    return torch.randn((2, *toys.SHAPE), generator=torch.Generator().manual_seed(0))


def dynamic(model: nn.Module) -> nn.Module:
    with quiet_torch_ao():
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def test_profile_counts_parameters_and_macs_per_sample() -> None:
    profile = coverage.profile_layers(toys.tiny_mlp(), example())
    assert profile.params == {"net.1": 64 * 32 + 32, "net.3": 32 * 10 + 10}
    assert profile.macs == {"net.1": 64 * 32, "net.3": 32 * 10}  # per sample: the batch of 2 is divided out
    assert profile.total_params == 2410

    cnn = coverage.profile_layers(toys.tiny_cnn(), example())
    assert cnn.macs["features.0"] == 8 * 8 * 16 * 1 * 9
    assert cnn.macs["features.3"] == 8 * 8 * 32 * 16 * 9
    assert cnn.macs["classifier"] == 32 * 10


def test_dynamic_quantization_covers_the_whole_mlp() -> None:
    model = toys.tiny_mlp()
    profile = coverage.profile_layers(model, example())
    cov = coverage.measure(profile, dynamic(model), simulated=False)
    assert cov.params == pytest.approx(1.0) and cov.macs == pytest.approx(1.0)
    assert (cov.layers, cov.layers_total) == (2, 2)
    assert coverage.low_coverage_warning("dynamic", cov) is None


def test_dynamic_quantization_barely_touches_the_cnn() -> None:
    model = toys.tiny_cnn()
    profile = coverage.profile_layers(model, example())
    cov = coverage.measure(profile, dynamic(model), simulated=False)
    assert cov.params < 0.03  # only the 330-parameter head of 14,458
    assert cov.macs < 0.001
    assert (cov.layers, cov.layers_total) == (1, 4)
    warning = coverage.low_coverage_warning("dynamic", cov)
    assert warning is not None and "Conv2d" in warning and "1 of 4" in warning


def test_the_fp32_model_itself_covers_nothing() -> None:
    model = toys.tiny_cnn()
    cov = coverage.measure(coverage.profile_layers(model, example()), model, simulated=False)
    assert (cov.params, cov.macs, cov.layers) == (0.0, 0.0, 0)
    warning = coverage.low_coverage_warning("static", cov) or ""
    # It names what stayed in floating point, and that static should have reached it.
    assert "Conv2d (100% of MACs, 97% of parameters) stays fp32: static has no quantized kernel for it" in warning


def test_full_coverage_of_a_cast() -> None:
    profile = coverage.profile_layers(toys.tiny_cnn(), example())
    assert coverage.full(profile) == coverage.Coverage(1.0, 1.0, 4, 4)
    assert coverage.full(profile, params=0.0).to_dict() == {"params": 0.0, "macs": 1.0, "layers": 4, "layers_total": 4}


def test_the_warning_names_the_layer_types_left_in_fp32_and_what_quantizes_them() -> None:
    model = toys.tiny_cnn()
    cov = coverage.measure(coverage.profile_layers(model, example()), dynamic(model), simulated=False)
    kinds = [kind for kind, _, _ in cov.left_fp]
    assert kinds[0] == "Conv2d" and "Linear" not in kinds  # the head was quantized
    warning = coverage.low_coverage_warning("dynamic", cov) or ""
    assert "Conv2d (100% of MACs, 97% of parameters) stays fp32: static or qat quantize it" in warning


class EmbeddingBagModel(nn.Module):
    """A transformer's shape of problem: most parameters sit in an embedding table, not in a Conv2d."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x).mean(1))


def test_an_embedding_dominated_model_names_the_embedding_and_that_static_does_not_apply() -> None:
    torch.manual_seed(0)
    model = EmbeddingBagModel().eval()
    tokens = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    cov = coverage.measure(coverage.profile_layers(model, tokens), dynamic(model), simulated=False)
    warning = coverage.low_coverage_warning("dynamic", cov) or ""
    assert "Embedding (99% of parameters) stays fp32: static and qat do not apply" in warning
    assert "Conv2d" not in warning
