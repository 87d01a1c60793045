"""The handler table and the observer names: each defined once, and nothing left to a silent default."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from farm.errors import ConfigError
from farm.quant.config import METHODS, OBSERVERS, StaticConfig
from farm.quant.qconfig import ACTIVATION_OBSERVERS, PercentileObserver, activation_observer, build_qconfig
from farm.quant.registry import HANDLERS, QuantContext, apply_method, handler_for


def test_every_method_config_type_has_its_handler() -> None:
    assert set(HANDLERS) == set(METHODS.values())
    for cls in METHODS.values():
        assert handler_for(cls()) is HANDLERS[cls]


def test_a_config_type_without_a_handler_is_refused_by_name() -> None:
    @dataclasses.dataclass(frozen=True)
    class Unwired(StaticConfig):  # a subclass is a different method: it needs its own handler
        pass

    ctx = QuantContext(model_ref="toy", example_input=torch.zeros(1, 4))
    with pytest.raises(ConfigError, match="no handler for method config Unwired"):
        apply_method(torch.nn.Linear(4, 2), Unwired(), ctx)


def test_observer_names_are_the_ones_config_validation_accepts() -> None:
    assert tuple(ACTIVATION_OBSERVERS) == OBSERVERS
    assert activation_observer("percentile") is PercentileObserver


def test_an_unknown_observer_is_an_error_not_percentile() -> None:
    # A config built around validation (object.__setattr__ on a frozen dataclass) used to fall into the
    # if/elif chain's else and silently quantize with the percentile observer.
    cfg = StaticConfig()
    object.__setattr__(cfg, "observer", "minmax2")
    with pytest.raises(ConfigError, match="unknown activation observer 'minmax2'.*minmax, moving_average"):
        build_qconfig(cfg, fake_quant=False)


@pytest.mark.parametrize("observer", OBSERVERS)
def test_each_observer_name_builds_its_own_observer(observer: str) -> None:
    qconfig = build_qconfig(StaticConfig(observer=observer), fake_quant=False)
    assert type(qconfig.activation()) is ACTIVATION_OBSERVERS[observer]
