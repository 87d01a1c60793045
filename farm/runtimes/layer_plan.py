"""What a method config's per-layer rules ask of a runtime other than torch, checked before anything is exported.

Every runtime keeps a skipped layer in fp32 (onnxruntime: ``nodes_to_exclude`` or the fp16 converter's
``node_block_list``; OpenVINO: NNCF's ignored scope; TensorRT: no Q/DQ on it, or its precision pinned to fp32).
Overrides are taken where the runtime's quantizer has a per-node setting and refused, naming the rule, where it has
none: onnxruntime's static (QDQ) quantizer takes a weight's granularity per tensor (``TensorQuantOverrides``); no
runtime here has per-node bits (int8 kernels only), a per-node calibration observer, or a float dtype other than
fp32 for a skipped layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from farm.errors import ConfigError, Problem
from farm.quant.layers import LayerRule, LayerSetting, Rules, resolve, rules_to_list

#: What each runtime's names read as in messages.
RUNTIME_NAMES = {"onnxruntime": "onnxruntime", "openvino": "OpenVINO (NNCF)", "tensorrt": "TensorRT"}
_INTEGER = ("dynamic", "static", "qat")


@dataclass(frozen=True)
class LayerPlan:
    """A config's rules resolved against one model.

    Attributes:
        rules: the config's ``layers`` rules.
        layers: the model's layers the method quantizes (qualified name -> class name).
        settings: layer -> merged setting, for the layers a rule selects.
    """

    rules: Rules = ()
    layers: dict[str, str] = field(default_factory=dict)
    settings: dict[str, LayerSetting] = field(default_factory=dict)

    @property
    def skipped(self) -> list[str]:
        """The layers kept in floating point."""
        return [name for name, s in self.settings.items() if s.skip]

    def details(self) -> dict[str, Any]:
        """What a build records about the rules (the artifact's manifest, the results' runtime info)."""
        return {"layer_rules": rules_to_list(self.rules), "layers_skipped": self.skipped}


def layer_plan(model: nn.Module, cfg: Any, runtime: str) -> LayerPlan:
    """The rules of ``cfg`` resolved against ``model``, after checking that every rule selects a layer of
    ``model`` (:func:`farm.quant.layer_list.quantizable_layers`), asks what ``cfg.method`` can do per layer, and
    what ``runtime`` can do for that method.

    Returns:
        The plan (empty when the config has no rules).

    Raises:
        ConfigError: every rule that selects no layer (naming the layers there are) and every rule the method or
            the runtime cannot honour per layer (naming the rule and what it asks).
    """
    from farm.quant.layer_list import check_settings, quantizable_layers

    rules: Rules = tuple(getattr(cfg, "layers", ()) or ())
    if not rules:
        return LayerPlan()
    layers = quantizable_layers(model, cfg.method)
    problems: list[Problem] = []
    try:
        check_settings(cfg.method, rules, layers)
    except ConfigError as e:
        problems += e.problems
    problems += [p for p in unsupported(rules, cfg, runtime) if p not in problems]
    if problems:
        raise ConfigError(problems)
    return LayerPlan(rules, dict(layers), resolve(rules, layers))


def unsupported(rules: Rules, cfg: Any, runtime: str) -> list[Problem]:
    """A problem for each rule asking ``runtime`` for a per-layer setting it has no way to apply."""
    problems = []
    for i, rule in enumerate(rules):
        why = _refusal(rule, cfg, runtime)
        if why:
            problems.append(Problem(f"layers[{i}]", f"rule {rule.to_dict()}: {why}"))
    return problems


def _refusal(rule: LayerRule, cfg: Any, runtime: str) -> str | None:
    name = RUNTIME_NAMES.get(runtime, runtime)
    method = cfg.method
    if method not in _INTEGER:
        if rule.bits is not None or rule.granularity is not None or rule.observer is not None:
            return f"{method} quantizes nothing, so bits, granularity and observer have no meaning on {name}"
        wanted = "fp32" if rule.skip else rule.dtype
        if wanted not in (None, "fp32", method):
            return f"{name} {method} runs a layer in {method} or keeps it in fp32, not in {wanted}"
        return None
    if rule.dtype not in (None, "fp32"):
        return f"{name} keeps a layer out of quantization in fp32 only, not in {rule.dtype}"
    if rule.skip:
        return None
    if rule.bits is not None and rule.bits != 8:
        return f"{name} runs int8 kernels only; a layer cannot have bits {rule.bits}"
    if method == "qat" and runtime == "onnxruntime":
        return None  # fine-tuned in torch, which applies the layer's observer and granularity; exported as it is
    if rule.observer is not None and rule.observer != getattr(cfg, "observer", None):
        return f"{name} calibrates every layer with one observer ({getattr(cfg, 'observer', '-')}); none per layer"
    if rule.granularity is not None and rule.granularity != getattr(cfg, "granularity", None):
        if runtime == "onnxruntime" and method == "dynamic":
            return "onnxruntime's dynamic quantizer sets per_channel for the whole graph, not per layer"
        if runtime == "openvino":
            return f"NNCF sets weight granularity for the whole model, not per layer ({name})"
    return None
