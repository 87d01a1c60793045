"""Accuracy and fidelity against the fp32 reference, on outputs whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch

from farm.quant.metrics import all_finite, fidelity, topk_accuracy


def reference() -> torch.Tensor:
    return torch.randn((16, 10), generator=torch.Generator().manual_seed(0))


def test_identical_outputs() -> None:
    ref = reference()
    fid = fidelity(ref, ref.clone())
    assert fid.agreement == 1.0
    assert fid.sqnr_db is None  # infinite: no noise at all
    assert fid.cosine == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("noise_fraction", [0.1, 0.01, 0.5])
def test_known_sqnr_for_proportional_noise(noise_fraction: float) -> None:
    ref = reference()
    # noise = noise_fraction * ref: noise power is noise_fraction**2 of the signal power
    fid = fidelity(ref, ref * (1 + noise_fraction))
    assert fid.sqnr_db == pytest.approx(-20 * math.log10(noise_fraction), abs=1e-4)  # float32 outputs
    assert fid.agreement == 1.0  # a positive scale keeps every argmax
    assert fid.cosine == pytest.approx(1.0, abs=1e-9)


def test_known_sqnr_for_independent_noise() -> None:
    ref = torch.ones(4, 10) * torch.arange(1, 11, dtype=torch.float32)
    noise = torch.zeros(4, 10)
    noise[:, 0] = 1.0  # signal power 4 * 385, noise power 4
    fid = fidelity(ref, ref + noise)
    assert fid.sqnr_db == pytest.approx(10 * math.log10(385), abs=1e-6)
    assert fid.agreement == 1.0


def test_opposite_outputs() -> None:
    ref = reference()
    fid = fidelity(ref, -ref)
    assert fid.agreement == 0.0
    assert fid.cosine == pytest.approx(-1.0, abs=1e-9)
    assert fid.sqnr_db == pytest.approx(10 * math.log10(1 / 4), abs=1e-6)


def test_agreement_counts_matching_top1() -> None:
    ref = torch.eye(4)
    out = torch.eye(4)
    out[0] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # one of four samples changes its answer
    assert fidelity(ref, out).agreement == 0.75


def test_fidelity_flattens_extra_dimensions() -> None:
    ref = torch.randn((3, 2, 5), generator=torch.Generator().manual_seed(1))
    assert fidelity(ref, ref * 1.1).sqnr_db == pytest.approx(20.0, abs=1e-4)


def test_zero_signal_with_noise_is_minus_infinity() -> None:
    assert fidelity(torch.zeros(2, 3), torch.ones(2, 3)).sqnr_db == float("-inf")


def test_topk_accuracy() -> None:
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = torch.tensor([2, 0, 0, 1])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(0.25)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(0.75)
    assert topk_accuracy(logits, labels, 3) == pytest.approx(1.0)
    assert topk_accuracy(logits, labels, 5) == pytest.approx(1.0)  # k beyond the classes is all of them
    assert math.isnan(topk_accuracy(logits[:0], labels[:0]))


def test_all_finite() -> None:
    assert all_finite(torch.tensor([1.0, -2.0]))
    assert not all_finite(torch.tensor([1.0, float("nan")]))
    assert not all_finite(torch.tensor([float("inf")]))
