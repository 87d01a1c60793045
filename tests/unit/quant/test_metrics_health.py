"""Health: a reference without class signal, a trial whose outputs collapsed, NaN; and the jobs that carry it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from farm.quant.metrics import (
    HEALTH_COLLAPSED,
    HEALTH_DEGENERATE,
    HEALTH_NAN,
    HEALTH_OK,
    fidelity,
    reference_health,
    result_health,
)
from tests import toys


def logits(n: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, 10), generator=torch.Generator().manual_seed(seed))


def test_a_reference_with_class_signal_is_ok() -> None:
    assert reference_health(logits()).status == HEALTH_OK


def test_one_class_for_every_input_is_a_degenerate_reference() -> None:
    ref = logits() * 0.01
    ref[:, 7] += 1.0  # every sample says class 7, though the outputs still vary
    health = reference_health(ref)
    assert health.status == HEALTH_DEGENERATE and "class 7 for all 32 samples" in (health.reason or "")


def test_near_constant_outputs_are_a_degenerate_reference() -> None:
    # The issue's case: logits ~1e-9 that hardly move between inputs (random init).
    ref = torch.full((32, 10), 1e-9) + logits() * 1e-15
    assert reference_health(ref).status == HEALTH_DEGENERATE
    assert reference_health(torch.zeros(32, 10)).status == HEALTH_DEGENERATE


def test_a_few_samples_of_one_class_are_not_enough_to_call_it_degenerate() -> None:
    ref = logits(4) * 0.01
    ref[:, 2] += 1.0
    assert reference_health(ref).status == HEALTH_OK


def test_every_trial_compared_with_a_degenerate_reference_is_flagged() -> None:
    ref = torch.zeros(32, 10)
    out = logits()
    assert result_health(ref, out, fidelity(ref, out)).status == HEALTH_DEGENERATE


@pytest.mark.parametrize(
    "make_output",
    [
        lambda ref: torch.zeros_like(ref),  # cosine 0, SQNR 0 dB
        lambda ref: -ref,  # agreement 0, cosine -1
        lambda ref: ref + 3 * logits(seed=1),  # noise above the signal: SQNR < 0 dB
    ],
)
def test_collapsed_outputs(make_output: Callable[[torch.Tensor], torch.Tensor]) -> None:
    ref = logits()
    out = make_output(ref)
    health = result_health(ref, out, fidelity(ref, out))
    assert health.status == HEALTH_COLLAPSED and "collapsed" in (health.reason or "")


def test_a_close_trial_is_ok_and_nan_is_nan() -> None:
    ref = logits()
    close = ref * 1.01
    assert result_health(ref, close, fidelity(ref, close)) == result_health(ref, ref, fidelity(ref, ref))
    assert result_health(ref, close, fidelity(ref, close)).status == HEALTH_OK
    broken = ref.clone()
    broken[0, 0] = float("nan")
    assert result_health(ref, broken, fidelity(ref, broken)).status == HEALTH_NAN
    assert reference_health(broken).status == HEALTH_NAN


# -- jobs: the health column and the warning, end to end on tiny models -------------------------------------------


def test_a_degenerate_reference_flags_itself_and_its_trials(run_trial: Callable[..., Any]) -> None:
    model = "entrypoint:tests.toys:flat_head"
    ref, _ = run_trial(model, toys.SYNTHETIC, "fp32")
    assert ref.health == HEALTH_DEGENERATE
    assert any("degenerate reference" in w for w in ref.warnings)
    trial, _ = run_trial(model, toys.SYNTHETIC, "dynamic")
    assert trial.health == HEALTH_DEGENERATE and trial.recipe == "dynamic int8"


def test_a_trial_whose_outputs_collapsed_is_flagged(run_trial: Callable[..., Any]) -> None:
    model = "entrypoint:tests.toys:outlier_mlp"
    ref, _ = run_trial(model, toys.SYNTHETIC, "fp32")
    assert ref.health == HEALTH_OK
    trial, _ = run_trial(model, toys.SYNTHETIC, "static", granularity="per_tensor", calibration_size=32)
    assert trial.health == HEALTH_COLLAPSED, (trial.agreement, trial.cosine, trial.sqnr_db)
    assert any(w.startswith("health: collapsed") for w in trial.warnings)


def test_a_healthy_trial_is_ok(run_trial: Callable[..., Any]) -> None:
    trial, _ = run_trial("entrypoint:tests.toys:tiny_mlp", toys.SYNTHETIC, "dynamic")
    assert trial.health == HEALTH_OK
    assert not any(w.startswith("health:") for w in trial.warnings)


@pytest.mark.slow
def test_the_issues_random_init_mobilenet_v2_is_a_degenerate_reference(run_trial: Callable[..., Any]) -> None:
    # The issue's case: untrained MobileNetV2 gives one class for every input; static reported agreement, SQNR and
    # cosine 0 and a speedup, exit 0, no warning. (About 25 s on two cores: slow.)
    data = "synthetic:3x224x224?n_test=32&n_calibration=16&n_train=16"
    trial, _ = run_trial("torchvision:mobilenet_v2", data, "static", calibration_size=16)
    assert trial.health == HEALTH_DEGENERATE
    assert any(w.startswith("health: degenerate reference") for w in trial.warnings)
