"""Which layers of a model a method would quantize, and how much of the model each holds.

Per-layer rules (:mod:`farm.quant.layers`) name torch module qualified names (``named_modules()``); this module
says which of those names a method really reaches, so that a rule matching none of them is refused before
anything is quantized, ``farm layers MODEL`` can list them, and ``farm tune`` knows what to fall back.

- dynamic: the layers ``quantize_dynamic`` swaps, by exact type (Linear, LSTM, GRU and the cells; a Linear
  subclass such as MultiheadAttention's ``out_proj`` is left alone, as torch.ao does).
- static / qat: Conv1d/2d/3d, ConvTranspose1d/2d/3d and Linear that torch.fx reaches: a layer inside a torch.nn
  module that fx keeps whole (MultiheadAttention, TransformerEncoderLayer) is never quantized.
- fp16 / bf16: every module holding weights of its own, but the normalisation layers (kept in fp32 anyway) and the
  inside of a MultiheadAttention (whose forward reads its children's weights directly).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from farm.errors import ConfigError, Problem
from farm.quant.layers import LayerSetting, Rules, method_problems, resolve, unmatched

DYNAMIC_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell)
STATIC_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)
#: Layers whose statistics and affine parameters stay in fp32 under a half-precision cast (farm.quant.fp).
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm1d/2d/3d
)
#: The methods that have layers to quantize (fp32 and noop change nothing).
LAYER_METHODS = ("dynamic", "static", "qat", "fp16", "bf16")
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable layer, with its share of the model.

    Attributes:
        name: the module's qualified name (what a rule's ``name`` matches).
        type: its class name (what a rule's ``type`` matches).
        params: its parameters.
        param_share: ``params`` over the whole model's parameters.
        macs: its multiply-accumulates for one sample (0 for a layer without any, such as an Embedding).
        mac_share: ``macs`` over the model's (conv, linear and recurrent layers') multiply-accumulates.
    """

    name: str
    type: str
    params: int
    param_share: float
    macs: int
    mac_share: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quantizable_layers(model: nn.Module, method: str) -> dict[str, str]:
    """The layers ``method`` would quantize (or cast), in model order.

    Args:
        model: the fp32 model.
        method: a method name (``dynamic``, ``static``, ``qat``, ``fp16``, ``bf16``; others have none).

    Returns:
        Qualified name → class name.
    """
    if method == "dynamic":
        return {n: type(m).__name__ for n, m in model.named_modules() if type(m) in DYNAMIC_TYPES}
    if method in ("static", "qat"):
        return {n: type(m).__name__ for n, m in _traced_modules(model) if type(m) in STATIC_TYPES}
    if method in ("fp16", "bf16"):
        return _float_layers(model)
    return {}


def _traced_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules torch.fx reaches: it keeps every torch.nn module whole (a leaf) but the containers."""
    out: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            qualified = f"{prefix}.{name}" if prefix else name
            out.append((qualified, child))
            if not _fx_leaf(child):
                walk(qualified, child)

    walk("", model)
    return out


def _fx_leaf(module: nn.Module) -> bool:
    kind = type(module).__module__
    return kind.startswith(("torch.nn", "torch.ao.nn")) and not isinstance(module, _CONTAINERS)


def _float_layers(model: nn.Module) -> dict[str, str]:
    out: dict[str, str] = {}
    inside: list[str] = []  # MultiheadAttention prefixes: its forward reads the children's weights itself
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(module, nn.MultiheadAttention):
            inside.append(name)
        if isinstance(module, NORM_LAYERS):
            continue
        if any(p.is_floating_point() for p in module.parameters(recurse=False)):
            out[name] = type(module).__name__
    return out


def layer_settings(model: nn.Module, method: str, rules: Rules) -> dict[str, LayerSetting]:
    """What ``rules`` say about each of the layers ``method`` quantizes in ``model`` (layers no rule selects are
    left out).

    Raises:
        ConfigError: a rule matches no quantizable layer, or asks what ``method`` cannot do per layer.
    """
    if not rules:
        return {}
    layers = quantizable_layers(model, method)
    check_settings(method, rules, layers)
    return resolve(rules, layers)


def check_rules(model: nn.Module, cfg: Any, *, graph: bool = False) -> None:
    """Refuse, at a job's start, per-layer rules that don't fit the model: a rule matching no layer the method
    quantizes (the message names those that exist), or asking what the method can't do per layer.

    Only torch-deployed jobs are checked here; a runtime maps the rules onto its own graph and checks them there.

    Args:
        model: the loaded model.
        cfg: the job's method config.
        graph: the model is a serialized graph (TorchScript, torch.export), which has no layers to apply rules to.

    Raises:
        ConfigError: what does not fit, one problem per rule.
    """
    if not cfg.layers or cfg.runtime != "torch":
        return
    if graph:
        raise ConfigError(
            f"layers: per-layer rules need the model as an nn.Module; {cfg.method} on a serialized graph applies "
            "to the whole model"
        )
    check_settings(cfg.method, cfg.layers, quantizable_layers(model, cfg.method))


def check_settings(method: str, rules: Rules, layers: Mapping[str, str]) -> None:
    """Refuse rules that match none of ``layers`` (naming the layers that exist) or ask for what ``method`` cannot
    do per layer: bits other than 8 or an observer under dynamic, bits / granularity / observer under an fp method,
    a half dtype under an integer method (its skipped layers stay fp32).

    Raises:
        ConfigError: every problem, each with the rule's path (``layers[1]``).
    """
    problems = method_problems(method, rules)
    if layers:
        problems += unmatched(rules, layers)
    elif not problems:
        problems.append(Problem("layers", f"method {method} quantizes no layer of this model: no rule can apply"))
    if problems:
        raise ConfigError(problems)


def layer_table(model: nn.Module, example_batch: Any, method: str) -> list[LayerInfo]:
    """The quantizable layers of ``model`` under ``method`` with their parameter and MAC shares.

    Args:
        model: the fp32 model.
        example_batch: one input batch (a tensor, tuple or dict of tensors) the model is run on to count MACs.
        method: a method name, as :func:`quantizable_layers`.

    Returns:
        One :class:`LayerInfo` per quantizable layer, in model order.
    """
    from farm.quant.coverage import profile_layers

    profile = profile_layers(model, example_batch)
    modules = dict(model.named_modules())
    total_params = max(profile.total_params, 1)
    total_macs = profile.total_macs
    rows = []
    for name, kind in quantizable_layers(model, method).items():
        params = profile.params.get(name)
        if params is None:  # a layer coverage does not profile (an Embedding under an fp method)
            params = sum(p.numel() for p in modules[name].parameters())
        macs = profile.macs.get(name, 0)
        rows.append(
            LayerInfo(name, kind, params, params / total_params, macs, macs / total_macs if total_macs else 0.0)
        )
    return rows


def feeding(model: nn.Module, example_batch: Any, names: Iterable[str], output: str | int | None = None) -> set[str]:
    """The modules of ``names`` the selected output of ``model`` depends on; the others are dropped by an export of
    that output alone and change nothing it computes (an encoder's classifier head beside the embedding compared).

    One forward pass adds a probe (a zero that requires grad) to each module's output; the selected output's
    gradient reaches the probes of the modules it depends on. A module whose output is not a floating-point tensor
    counts as feeding it (nothing tells), as does every module when the pass can't be followed (no gradient to the
    output, an in-place op autograd refuses).
    """
    import torch

    from farm.quant.inputs import call, select_output

    names = list(names)
    modules = dict(model.named_modules())
    probes: list[tuple[str, torch.Tensor]] = []  # a module called twice has two
    opaque: set[str] = set()

    def probe(name: str) -> Any:
        def add(module: nn.Module, args: Any, out: Any) -> Any:
            if not (isinstance(out, torch.Tensor) and out.is_floating_point()):
                opaque.add(name)
                return None
            probes.append((name, torch.zeros((), dtype=out.dtype, requires_grad=True)))
            return out + probes[-1][1]

        return add

    handles = [modules[n].register_forward_hook(probe(n)) for n in names if n in modules]
    try:
        with torch.enable_grad():
            selected = select_output(call(model, example_batch), output)
            if not probes or not selected.requires_grad:
                return set(names)
            grads = torch.autograd.grad(selected.float().sum(), [t for _, t in probes], allow_unused=True)
    except (RuntimeError, TypeError, ValueError):
        return set(names)
    finally:
        for handle in handles:
            handle.remove()
    fed = opaque | {name for (name, _), grad in zip(probes, grads, strict=True) if grad is not None}
    ran = opaque | {name for name, _ in probes}
    return {n for n in names if n in fed or n not in ran}  # a module the pass never called: nothing tells


def kept_by_rules(model: nn.Module, method: str, rules: Rules) -> dict[str, str]:
    """The layers of ``model`` that per-layer ``rules`` keep in fp32 under ``method`` (``skip``, or ``dtype: fp32``
    under an fp method), in model order, name → class name (for coverage and its warning)."""
    if not rules:
        return {}
    layers = quantizable_layers(model, method)
    settings = resolve(rules, layers)
    if method in ("fp16", "bf16"):
        return {
            n: layers[n] for n, s in settings.items() if (s.skip and s.dtype in (None, "fp32")) or s.dtype == "fp32"
        }
    return {n: layers[n] for n, s in settings.items() if s.skip}
