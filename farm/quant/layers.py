"""Per-layer rules: which layers a method keeps in floating point, and which get their own bits, granularity,
observer or float dtype.

A method config's ``layers`` parameter is a tuple of :class:`LayerRule`. A rule selects layers by module name (a
glob over the qualified name such as ``encoder.layers.*.linear1``, or ``re:<regex>`` matched in full) and/or by
module type (the class name, ``Linear``); it says ``skip`` (keep the layer in floating point) or overrides
``bits``, ``granularity``, ``observer`` or ``dtype``. Rules apply in order and a later rule's fields win over an
earlier one's, as in CSS; a layer no rule selects follows the method's own parameters.

Standard library only, as :mod:`farm.quant.config` (the producer validates specs without torch): matching
against a real model's layers is :func:`resolve`, given the layers' names and types.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from farm.errors import Problem

#: The parameters a rule may override, and the values each accepts.
GRANULARITIES = ("per_tensor", "per_channel")
OBSERVERS = ("minmax", "moving_average", "histogram", "percentile")
DTYPES = ("fp32", "fp16", "bf16")
MIN_BITS, MAX_BITS = 2, 8
#: The keys a rule written in a spec may have.
RULE_KEYS = ("name", "type", "skip", "bits", "granularity", "observer", "dtype")
#: At most this many rules are named one by one in a recipe label; more are counted and digested.
LABEL_RULES = 2


@dataclass(frozen=True)
class LayerSetting:
    """What the rules say about one layer: kept in floating point (``skip``, in ``dtype``), or quantized with
    these overrides (None: the method's own value)."""

    skip: bool = False
    bits: int | None = None
    granularity: str | None = None
    observer: str | None = None
    dtype: str | None = None

    def merged(self, rule: LayerRule) -> LayerSetting:
        """This setting with ``rule``'s fields laid over it (a later rule wins)."""
        return LayerSetting(
            skip=rule.skip if rule.skip is not None else self.skip,
            bits=rule.bits if rule.bits is not None else self.bits,
            granularity=rule.granularity if rule.granularity is not None else self.granularity,
            observer=rule.observer if rule.observer is not None else self.observer,
            dtype=rule.dtype if rule.dtype is not None else self.dtype,
        )


@dataclass(frozen=True)
class LayerRule:
    """One rule of a method's ``layers`` parameter.

    Attributes:
        name: a glob over the module's qualified name (``layer4.*``, ``fc``), or ``re:<regex>`` matched in full;
            None selects by type alone.
        type: the module's class name (``Linear``, ``Conv2d``); None selects by name alone.
        skip: True keeps the layer in floating point (fp32, or ``dtype``); False quantizes it even where an
            earlier rule skipped it; None leaves that to earlier rules.
        bits, granularity, observer: overrides of the method's own parameters for this layer.
        dtype: the float dtype of a layer kept in floating point, or of the layer under an fp method (fp16 for one
            block of a bf16 model).
    """

    name: str | None = None
    type: str | None = None
    skip: bool | None = None
    bits: int | None = None
    granularity: str | None = None
    observer: str | None = None
    dtype: str | None = None

    def matches(self, name: str, type_name: str) -> bool:
        """Whether this rule selects the layer ``name`` of class ``type_name``."""
        if self.type is not None and self.type != type_name:
            return False
        if self.name is None:
            return True
        if self.name.startswith("re:"):
            return re.fullmatch(self.name[3:], name) is not None
        return fnmatch.fnmatchcase(name, self.name)

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, as a spec writes them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def label(self) -> str:
        """``fp:fc``, ``Linear:int4``, ``layer4.*:pt``, ``enc.*:fp16``."""
        what = self.name or ""
        if self.type is not None:
            what = f"{self.type}@{what}" if what else self.type
        if self.skip:
            return f"fp:{what}" if self.dtype in (None, "fp32") else f"{self.dtype}:{what}"
        words = [f"int{self.bits}" if self.bits is not None else None]
        words += [{"per_tensor": "pt", "per_channel": "pc"}.get(self.granularity or "", None)]
        words += [self.observer, self.dtype, "q" if self.skip is False else None]
        return f"{what}:" + ",".join(w for w in words if w)


Rules = tuple[LayerRule, ...]


def parse_rules(value: Any, path: str = "layers") -> tuple[Rules, list[Problem]]:
    """Read a ``layers`` parameter: a list of rule mappings (or of :class:`LayerRule`).

    A rule needs ``name`` or ``type`` and at least one of ``skip``, ``bits``, ``granularity``, ``observer``,
    ``dtype``; a regex must compile.

    Returns:
        The rules and every problem found (each with its path, ``layers[2].bits``).
    """
    if value is None:
        return (), []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return (), [Problem(path, f"must be a list of layer rules, got {value!r}")]
    rules: list[LayerRule] = []
    problems: list[Problem] = []
    for i, item in enumerate(value):
        rule, found = _parse_rule(item, f"{path}[{i}]")
        problems.extend(found)
        if rule is not None:
            rules.append(rule)
    return tuple(rules), problems


def _parse_rule(item: Any, path: str) -> tuple[LayerRule | None, list[Problem]]:
    if isinstance(item, LayerRule):
        item = item.to_dict()
    if not isinstance(item, Mapping):
        return None, [Problem(path, f"a layer rule is a mapping such as {{name: fc, skip: true}}, got {item!r}")]
    problems = [
        Problem(f"{path}.{key}", f"unknown key; a rule has {', '.join(RULE_KEYS)}")
        for key in item
        if key not in RULE_KEYS
    ]
    checks: dict[str, tuple[type, tuple[str, ...] | None]] = {
        "name": (str, None),
        "type": (str, None),
        "skip": (bool, None),
        "bits": (int, None),
        "granularity": (str, GRANULARITIES),
        "observer": (str, OBSERVERS),
        "dtype": (str, DTYPES),
    }
    values: dict[str, Any] = {}
    for key, (kind, choices) in checks.items():
        v = item.get(key)
        if v is None:
            continue
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            problems.append(Problem(f"{path}.{key}", f"must be a {kind.__name__}, got {v!r}"))
        elif choices is not None and v not in choices:
            problems.append(Problem(f"{path}.{key}", f"{v!r} is not one of {', '.join(choices)}"))
        else:
            values[key] = v
    bits = values.get("bits")
    if bits is not None and not MIN_BITS <= bits <= MAX_BITS:
        problems.append(Problem(f"{path}.bits", f"must be from {MIN_BITS} to {MAX_BITS}, got {bits}"))
    name = values.get("name")
    if isinstance(name, str) and name.startswith("re:"):
        try:
            re.compile(name[3:])
        except re.error as e:
            problems.append(Problem(f"{path}.name", f"not a valid regular expression: {e}"))
    if "name" not in values and "type" not in values and not any(p.path.endswith((".name", ".type")) for p in problems):
        problems.append(Problem(path, "a layer rule selects layers by name (a glob, or re:REGEX) or by type"))
    if not any(k in values for k in ("skip", "bits", "granularity", "observer", "dtype")) and not problems:
        problems.append(Problem(path, "a layer rule says skip: true or overrides bits, granularity, observer or dtype"))
    if problems:
        return None, problems
    return LayerRule(**values), []


def rules_to_list(rules: Rules) -> list[dict[str, Any]]:
    """The rules as a spec writes them (JSON-ready)."""
    return [r.to_dict() for r in rules]


def rules_label(rules: Rules) -> str:
    """A short label for a recipe: up to :data:`LABEL_RULES` rules by name (``fp:fc``), more as a count and a
    digest (``fp×6#3fa2``, ``int8×6#91c0`` where each only sets the bit-width) so two rule sets never share a label."""
    if not rules:
        return ""
    if len(rules) <= LABEL_RULES:
        return " ".join(r.label() for r in rules)
    digest = hashlib.sha256(json.dumps(rules_to_list(rules), sort_keys=True).encode()).hexdigest()[:4]
    bits = {r.bits for r in rules}
    only_bits = all(set(r.to_dict()) <= {"name", "type", "bits"} for r in rules)
    raised = len(bits) == 1 and None not in bits and only_bits  # a tune's int8 rung
    kind = "fp" if all(r.skip for r in rules) else f"int{bits.pop()}" if raised else "layers"
    return f"{kind}×{len(rules)}#{digest}"


def resolve(rules: Rules, layers: Mapping[str, str]) -> dict[str, LayerSetting]:
    """The setting of each layer some rule selects.

    Args:
        rules: the method's rules, in order.
        layers: the model's quantizable layers, qualified name → class name.

    Returns:
        Layer name → its merged setting, for the layers at least one rule selects (in ``layers``' order).
    """
    out: dict[str, LayerSetting] = {}
    for name, type_name in layers.items():
        setting: LayerSetting | None = None
        for rule in rules:
            if rule.matches(name, type_name):
                setting = (setting or LayerSetting()).merged(rule)
        if setting is not None:
            out[name] = setting
    return out


def skipped(rules: Rules, layers: Mapping[str, str]) -> list[str]:
    """The layers the rules keep in floating point."""
    return [name for name, s in resolve(rules, layers).items() if s.skip]


def unmatched(rules: Rules, layers: Mapping[str, str]) -> list[Problem]:
    """A problem for every rule that selects none of ``layers``, naming the layers that exist."""
    problems = []
    for i, rule in enumerate(rules):
        if not any(rule.matches(n, t) for n, t in layers.items()):
            listed = ", ".join(f"{n} ({t})" for n, t in list(layers.items())[:12])
            more = f" and {len(layers) - 12} more (farm layers MODEL lists them)" if len(layers) > 12 else ""
            problems.append(
                Problem(f"layers[{i}]", f"rule {rule.to_dict()} matches no layer; the layers are {listed}{more}")
            )
    return problems


def param_axis(param: str, value: Any) -> list[Any]:
    """A method parameter's values in a sweep spec, as an axis: a list is an axis of values, anything else one value.

    ``layers`` is a list itself: one list of rules is ONE value (``layers: [{name: fc, skip: true}]``), and an axis
    of rule sets is a list of lists (``layers: [[], [{name: fc, skip: true}]]``).
    """
    if param == "layers":
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            return value
        return [value]
    return value if isinstance(value, list) else [value]


#: The methods whose layers rules apply to, by kind.
_INTEGER_RULE_METHODS = ("dynamic", "static", "qat")
_FLOAT_RULE_METHODS = ("fp16", "bf16")


def method_problems(method: str, rules: Rules, mode: str | None = None) -> list[Problem]:
    """What ``method`` cannot do per layer, whatever the model: bits other than 8 or an observer under dynamic,
    bits / granularity / observer under fp16 and bf16 (and any rule under their ``mode: autocast``, which picks
    dtypes per op), a half dtype under an integer method (its skipped layers stay fp32), any rule under a method
    that quantizes no layer (fp32)."""
    problems: list[Problem] = []
    if rules and method not in (*_INTEGER_RULE_METHODS, *_FLOAT_RULE_METHODS):
        return [Problem("layers", f"method {method} quantizes no layer, so per-layer rules have nothing to apply to")]
    if rules and method in _FLOAT_RULE_METHODS and mode == "autocast":
        return [Problem("layers", f"{method} mode autocast picks dtypes per op, not per layer: rules need mode cast")]
    if method == "static" and mode == "eager" and any(r.skip for r in rules):
        # Eager mode quantizes everything between the model's QuantStub and DeQuantStub: a float layer in there
        # would be handed quantized tensors and fail at the first call.
        return [Problem("layers", "static mode eager can't keep a layer in floating point inside the model's "
                                  "QuantStub/DeQuantStub region: use mode fx for skip rules")]  # fmt: skip
    for i, r in enumerate(rules):
        path = f"layers[{i}]"
        if method == "dynamic" and r.bits is not None and r.bits != 8:
            problems.append(
                Problem(f"{path}.bits", f"dynamic quantization runs int8 kernels only; must be 8, got {r.bits}")
            )
        if method == "dynamic" and r.observer is not None:
            problems.append(
                Problem(
                    f"{path}.observer",
                    "dynamic quantization observes no activations (ranges are computed on the "
                    "fly); observer applies to static and qat",
                )  # fmt: skip
            )
        if method in _FLOAT_RULE_METHODS:
            given = [k for k in ("bits", "granularity", "observer") if getattr(r, k) is not None]
            if given:
                problems.append(Problem(path, f"{method} is a floating-point method: a rule says skip or dtype, "
                                              f"not {', '.join(given)}"))  # fmt: skip
        if method in _INTEGER_RULE_METHODS and r.dtype not in (None, "fp32"):
            problems.append(
                Problem(
                    f"{path}.dtype",
                    f"{method} keeps a skipped layer in fp32; dtype {r.dtype} applies to fp16 and bf16 jobs",
                )  # fmt: skip
            )
    return problems
