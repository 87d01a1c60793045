"""A trial's latency entry through run_job: its speedup comes from its own fp32 baseline, timed side by side in
the same process, never from the reference job's stored latency; and fp32 says in which form it was timed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from farm.quant.reference import REFERENCE_FILE, Reference
from tests import toys

DATASET = toys.SYNTHETIC
CNN = "entrypoint:tests.toys:tiny_cnn"
CAL = {"calibration_size": 32}
SIDE_BY_SIDE = {"baseline_p50_ms", "speedup", "speedup_ci_low", "speedup_ci_high", "blocks", "fp32_deployed_as"}
NOISE = {"latency_p50_ci_low_ms", "latency_p50_ci_high_ms", "stable", "unstable_reason"}


@pytest.fixture(scope="module")
def reference(reference_for: Callable[[str, str], Any]) -> Reference:
    ref: Reference = reference_for(CNN, DATASET)
    return ref


def test_a_trials_speedup_comes_from_its_own_baseline(run_trial: Callable[..., Any], reference: Reference) -> None:
    # A reference whose stored latency is absurd: a speedup divided into it would be ~1e6.
    absurd = {b: {**lat, "latency_p50_ms": 1e6} for b, lat in reference.latency.items()}
    result, _ = run_trial(CNN, DATASET, "static", reference=dataclasses.replace(reference, latency=absurd), **CAL)
    (lat,) = result.latency
    assert SIDE_BY_SIDE | NOISE <= set(lat)
    assert 0 < lat["speedup"] < 100
    assert lat["speedup_ci_low"] <= lat["speedup"] <= lat["speedup_ci_high"]
    assert lat["blocks"] >= 6 and lat["baseline_p50_ms"] > 0
    assert lat["latency_p50_ci_low_ms"] <= lat["latency_p50_ms"] <= lat["latency_p50_ci_high_ms"]
    # The deployed fp32 is frozen TorchScript; its eager form is the fp32 job's figure, not timed again here.
    assert lat["fp32_deployed_as"] == "torchscript" and lat["fp32_eager_p50_ms"] is None
    if not lat["stable"]:
        assert lat["unstable_reason"] and any(w.startswith("latency at batch 1 is not stable") for w in result.warnings)


def test_a_simulated_trial_times_no_baseline(run_trial: Callable[..., Any], reference: Reference) -> None:
    result, _ = run_trial(CNN, DATASET, "static", reference=reference, bits=4, **CAL)
    (lat,) = result.latency
    assert result.simulated is True and lat["speedup"] is None
    assert not SIDE_BY_SIDE - {"speedup"} & set(lat)
    assert NOISE <= set(lat)


def test_fp32_says_it_was_timed_as_torchscript(run_trial: Callable[..., Any], tmp_path: Path) -> None:
    result, out = run_trial(CNN, DATASET, "fp32")  # computes its own reference
    assert result.deployed_as == "torchscript"
    (lat,) = result.latency
    assert lat["speedup"] == 1.0 and lat["fp32_deployed_as"] == "torchscript" and lat["fp32_eager_p50_ms"] > 0
    assert "baseline_p50_ms" not in lat  # the reference's own figures: nothing side by side
    back = Reference.load(out / REFERENCE_FILE)
    assert back.deployed_as == "torchscript"
    again, _ = run_trial(CNN, DATASET, "fp32", reference=back)  # from the file, on another worker
    assert again.deployed_as == "torchscript"


def test_the_benchmark_times_each_torchscript_module_as_a_user_loads_it(
    run_trial: Callable[..., Any], reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's module has run other shapes (verification, evaluation) that TorchScript specialised it to; the
    trial and its baseline are timed as fresh copies, reloaded from their bytes."""
    import farm.quant.measure as measure
    from farm.quant.context import QuantOutcome

    timed, reloaded = [], []
    real_time, real_reload = measure.time_batch, QuantOutcome.as_loaded

    def time_batch(calls: Any, *args: Any, **kwargs: Any) -> Any:
        timed.append(calls)
        return real_time(calls, *args, **kwargs)

    def as_loaded(self: QuantOutcome) -> QuantOutcome:
        fresh = real_reload(self)
        reloaded.append((self.model, fresh.model))
        return fresh

    monkeypatch.setattr(measure, "time_batch", time_batch)
    monkeypatch.setattr(QuantOutcome, "as_loaded", as_loaded)
    run_trial(CNN, DATASET, "static", reference=reference, **CAL)
    (calls,) = timed
    assert len(reloaded) == 2 and all(fresh is not used for used, fresh in reloaded)  # the trial and its baseline
    timed_modules = {id(calls.trial.func.__self__.model), id(calls.base.func.__self__.model)}
    assert timed_modules == {id(fresh) for _, fresh in reloaded}


def test_as_loaded_gives_a_fresh_copy_of_torchscript_and_leaves_other_modules_alone() -> None:
    import torch

    from farm.quant.context import QuantOutcome

    eager = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(2, 4)
    scripted = torch.jit.freeze(torch.jit.trace(eager, x))
    outcome = QuantOutcome(scripted)
    fresh = outcome.as_loaded()
    assert fresh.model is not scripted and isinstance(fresh.model, torch.jit.ScriptModule)
    assert torch.equal(fresh.forward(x), outcome.forward(x))
    assert QuantOutcome(eager).as_loaded().model is eager


def test_a_torchscript_module_that_cannot_be_reloaded_is_timed_as_it_is(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from farm.quant.context import QuantOutcome

    scripted = torch.jit.script(torch.nn.Linear(2, 2))

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Could not export Python function call 'helper'")

    monkeypatch.setattr(torch.jit, "save", refuse)
    outcome = QuantOutcome(scripted)
    assert outcome.as_loaded() is outcome
    assert "cannot be reloaded" in caplog.text
