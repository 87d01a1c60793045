"""Per-layer rules on the command line: ``--layer SELECTOR:ACTION[,ACTION]`` and ``--layers-file`` (``farm quantize``,
and any command that builds a method config).

- SELECTOR: a glob over the module's qualified name (``layer4.*``, ``fc``), ``re:REGEX`` (matched in full), or
  ``type=Class`` (``type=Linear``); ``type=Class@GLOB`` selects by both.
- ACTION: ``skip`` (keep in floating point), ``bits=N``, ``granularity=per_channel|per_tensor`` (``pc`` / ``pt``),
  ``observer=NAME``, ``dtype=fp32|fp16|bf16``, ``quantize`` (undo an earlier rule's skip).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from farm.errors import ConfigError, Problem
from farm.quant.layers import LayerRule, Rules, parse_rules

_SHORT = {"pc": "per_channel", "pt": "per_tensor"}
CLI_SYNTAX = "SELECTOR:ACTION[,ACTION] (SELECTOR: glob, re:REGEX or type=Class; ACTION: skip, bits=N, granularity=.., observer=.., dtype=..)"  # noqa: E501


def parse_cli_rule(text: str, where: str = "--layer") -> dict[str, Any]:
    """One ``--layer`` value as a rule mapping (checked afterwards by :func:`farm.quant.layers.parse_rules`).

    Raises:
        ConfigError: not ``SELECTOR:ACTION[,ACTION]``, or an unknown action.
    """
    selector, sep, actions = text.rpartition(":")  # actions hold no ':', a regex may
    if not sep or not selector or not actions.strip():
        raise ConfigError(Problem(where, f"expected {CLI_SYNTAX}, got {text!r}"))
    rule: dict[str, Any] = {}
    if selector.startswith("type="):
        kind, _, name = selector[5:].partition("@")
        rule["type"] = kind
        if name:
            rule["name"] = name
    else:
        rule["name"] = selector
    for action in actions.split(","):
        key, has_value, value = (part.strip() for part in action.partition("="))
        if key in ("skip", "quantize") and not has_value:
            rule["skip"] = key == "skip"
        elif key == "bits" and has_value and value.isdecimal():
            rule["bits"] = int(value)
        elif key in ("granularity", "observer", "dtype") and value:
            rule[key] = _SHORT.get(value, value) if key == "granularity" else value
        else:
            raise ConfigError(Problem(where, f"unknown action {action.strip()!r} in {text!r}; expected {CLI_SYNTAX}"))
    return rule


def rules_from_options(layer: tuple[str, ...], layers_file: str | None) -> Rules:
    """The rules of ``--layers-file`` (first) and each ``--layer`` (in order: a later rule wins).

    Raises:
        ConfigError: a file that can't be read or isn't a list of rules, a value not in the CLI syntax, a rule
            that is not valid.
    """
    raw: list[Any] = []
    if layers_file is not None:
        raw += _read_rules_file(layers_file)
    offset = len(raw)
    raw += [parse_cli_rule(text) for text in layer]
    rules, problems = parse_rules(raw)
    if problems:
        raise ConfigError([Problem(_where(p.path, offset, layer, layers_file), p.message) for p in problems])
    return rules


def _where(path: str, offset: int, layer: tuple[str, ...], layers_file: str | None) -> str:
    """``layers[3].bits`` as the option it came from: ``--layer fc:bits=9`` or ``--layers-file r.yaml: [1].bits``."""
    index, _, rest = path.removeprefix("layers[").partition("]")
    if not index.isdecimal():
        return path
    i = int(index)
    if i >= offset:
        return f"--layer {layer[i - offset]}"
    return f"--layers-file {layers_file}: [{i}]{rest}"


def _read_rules_file(path: str) -> list[Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(Problem("--layers-file", f"cannot read {path}: {e.strerror or e}")) from None
    except yaml.YAMLError as e:
        raise ConfigError(Problem("--layers-file", f"{path} is not valid YAML: {' '.join(str(e).split())}")) from None
    if isinstance(data, dict) and set(data) == {"layers"}:
        data = data["layers"]
    if not isinstance(data, list):
        raise ConfigError(Problem("--layers-file", f"{path} must hold a list of layer rules (or layers: [...])"))
    return data


def with_rules(config: Any, rules: Rules) -> Any:
    """``config`` with ``rules`` after its own ``layers`` (a rule given on the command line wins)."""
    if not rules:
        return config
    combined: tuple[LayerRule, ...] = (*config.layers, *rules)
    return config.replace(layers=combined)
