"""A recipe's short label: the method and every parameter that tells two jobs of a sweep apart.

Two QAT jobs that differ only in ``epochs`` looked identical in every results table but for the job id. The
label (``qat int4 mavg pc n=32 e3``) always names the parameters a sweep's axes vary (bits, observer,
granularity, calibration size) and adds every other parameter that is not at its default, so no two distinct
method configs of one model share a label. Standard library only: the producer and the store use it too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from farm.quant.config import LATE_PARAMS, MethodConfig, config_from_dict
from farm.quant.layers import rules_label
from farm.runtimes.registry import DEFAULT_RUNTIME, short_name

#: Short names of parameter values (observers, granularities, schemes).
_VALUES = {
    "minmax": "minmax",
    "moving_average": "mavg",
    "histogram": "hist",
    "percentile": "pct",
    "per_channel": "pc",
    "per_tensor": "pt",
    "symmetric": "sym",
    "affine": "aff",
}
#: Prefixes of non-default parameters (``e3`` is epochs=3); a parameter missing here is written ``name=value``.
_PREFIXES = {
    "calibration_size": "n=",
    "epochs": "e",
    "steps": "s",
    "percentile": "p",
    "lr": "lr=",
    "momentum": "mom=",
    "weight_decay": "wd=",
    "batch_size": "bs=",
    "freeze_observers_after": "fo=",
    "freeze_bn_after": "fbn=",
}
#: Parameters whose values are unambiguous on their own (a backend, a static mode, an optimizer, a loss ...).
_BARE = ("backend", "mode", "optimizer", "loss", "activation", "granularity")
#: Parameters always named (a sweep's axes), in this order, when the method has them and names them at their
#: default (a parameter a method added later, :attr:`MethodConfig.omit_at_default`, is named only off it:
#: ``dynamic int8``, ``dynamic int8 pc``).
_ALWAYS = ("bits", "observer", "granularity", "calibration_size")


def recipe_label(config: MethodConfig | dict[str, Any]) -> str:
    """The short label of a method config.

    Args:
        config: a method config, or its ``to_dict()`` (as stored in a job's spec).

    Returns:
        E.g. ``fp32``, ``dynamic int8``, ``dynamic int8 pc``, ``static int8 minmax pc n=256``,
        ``qat int4 mavg pc n=32 e3``, ``static int8 pct p99.9 pt n=64 eager backend=qnnpack``; a runtime other than
        torch comes last: ``static int8 minmax pc n=256 ort``, ``fp16 ort cuda-ep``.

    Raises:
        ConfigError: ``config`` is a dict that is no valid method config.
    """
    cfg = config if isinstance(config, MethodConfig) else config_from_dict(config)
    params = cfg.params()
    defaults = {
        f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING
    }  # every parameter has a default (farm.quant.params.param)
    always = [name for name in _ALWAYS if name in params and name not in cfg.omit_at_default]
    words = [cfg.method] + [_word(name, params[name], always=True) for name in always]
    for name, value in params.items():
        if name in always or name in LATE_PARAMS or (name in defaults and defaults[name] == value):
            continue
        if name == "percentile" and params.get("observer") != "percentile":
            continue  # only the percentile observer reads it
        words.append(_word(name, value, always=False))
    return " ".join(w for w in [*words, rules_label(cfg.layers), *_deploy_words(cfg)] if w)


def _deploy_words(cfg: MethodConfig) -> list[str]:
    """The runtime's short word last (``ort``), then the execution provider when one is named (``cuda-ep``)."""
    if cfg.runtime == DEFAULT_RUNTIME and cfg.provider is None:
        return []
    words = [short_name(cfg.runtime)]
    if cfg.provider is not None:
        words.append(cfg.provider.removesuffix("ExecutionProvider").lower() + "-ep")
    return words


def _word(name: str, value: Any, *, always: bool) -> str:
    if name == "bits":
        return f"int{value}"
    if value is None:
        return f"{name}=none"
    if isinstance(value, bool):
        return name if value else f"no-{name}"
    if name in _PREFIXES:
        return f"{_PREFIXES[name]}{_number(value)}"
    if isinstance(value, str):
        short = _VALUES.get(value, value)
        # A value that names its parameter by itself (qnnpack, eager, adam, kd, sym) goes bare.
        return short if always or name in _BARE else f"{name}={short}"
    return f"{name}={_number(value)}"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
