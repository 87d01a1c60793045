"""Model references to ``nn.Module``: built-ins, torchvision, allowlisted entrypoints and serialized graphs.

Nothing here downloads anything: torchvision models start from random weights unless a state dict is
given, and state dicts load with ``weights_only=True``.
"""

from __future__ import annotations

import importlib
import io
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from farm.errors import ConfigError
from farm.settings import cache_dir
from farm.zoo.refs import BUILTIN_MODELS, Ref, builtin_option, check_entrypoint_allowed, parse_model_ref


@dataclass
class LoadedModel:
    """A model ready for evaluation.

    Attributes:
        module: the model, in eval mode, on the CPU.
        ref: the reference it came from.
        graph: True for a serialized graph (TorchScript, ExportedProgram) that torch.ao cannot re-quantize.
    """

    module: nn.Module
    ref: str
    graph: bool = False


def torchvision_models() -> list[str]:
    """Names of torchvision's classification models."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def load_model(
    ref: str | Ref,
    *,
    weights: str | Path | None = None,
    allowed: Sequence[str] | None = None,
) -> LoadedModel:
    """Build the model a reference names.

    Args:
        ref: a model reference (see :mod:`farm.zoo.refs`).
        weights: a local state-dict file to load into the model (strict key match).
        allowed: module prefixes entrypoints may import; default FARM_ALLOWED_MODULES.

    Returns:
        The loaded model.

    Raises:
        ConfigError: unknown model, entrypoint outside the allowlist, unreadable or mismatched weights.
    """
    from farm.runtimes.vendor_telemetry import decline

    decline()  # a user's module may import OpenVINO or NNCF, whose import alone sends an event
    parsed = parse_model_ref(ref) if isinstance(ref, str) else ref
    graph = False
    if parsed.scheme == "farm":
        module: nn.Module = _builtin(parsed)
    elif parsed.scheme == "torchvision":
        module = _torchvision(parsed)
    elif parsed.scheme == "entrypoint":
        module = _entrypoint(parsed, allowed)
    else:
        module = _graph_file(Path(parsed.body))
        graph = True
    if weights is not None:
        if graph:
            raise ConfigError(f"weights can't be given for {parsed}: a serialized graph carries its own weights")
        load_weights(module, weights, str(parsed))
    return LoadedModel(module.eval(), str(parsed), graph)


def _builtin(ref: Ref) -> nn.Module:
    if ref.body == "tiny-encoder":
        from farm.zoo.encoder import build_tiny_encoder

        return build_tiny_encoder(**{name: builtin_option(ref, name) for name in ("dim", "layers", "heads")})
    from farm.zoo.digits import build_digits_model

    return build_digits_model(ref.body, cache_dir() / "zoo")


def _torchvision(ref: Ref) -> nn.Module:
    import torchvision

    names = torchvision_models()
    if ref.body not in names:
        close = [n for n in names if n.startswith(ref.body[:4])][:5]
        hint = f"; did you mean {', '.join(close)}?" if close else "; `farm models` lists them"
        raise ConfigError(
            f"unknown model reference {str(ref)!r}: torchvision has no classification model {ref.body!r}{hint}"
        )
    kwargs: dict[str, Any] = {}
    if ref.option("num_classes"):
        kwargs["num_classes"] = ref.int_option("num_classes", 1000)
    # weights=None: random init. Pretrained weights come only from files or the artifact store.
    return torchvision.models.get_model(ref.body, weights=None, **kwargs)


def _entrypoint(ref: Ref, allowed: Sequence[str] | None) -> nn.Module:
    module_name, function_name = check_entrypoint_allowed(ref, allowed)
    function = import_entrypoint(module_name, function_name, str(ref))
    kwargs = {k: _literal(v) for k, v in ref.options}
    try:
        module = function(**kwargs)
    except Exception as e:
        raise ConfigError(f"entrypoint {str(ref)!r} raised {type(e).__name__}: {_first_line(e)}") from e
    if not isinstance(module, nn.Module):
        raise ConfigError(f"entrypoint {str(ref)!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def import_entrypoint(module_name: str, function_name: str, label: str) -> Any:
    """Import ``module_name`` and return its attribute ``function_name`` (a callable).

    Raises:
        ConfigError: the module does not import or has no such callable.
    """
    try:
        mod = importlib.import_module(module_name)
    except Exception as e:
        raise ConfigError(f"entrypoint {label!r}: can't import {module_name}: {_first_line(e)}") from e
    function = getattr(mod, function_name, None)
    if not callable(function):
        raise ConfigError(f"entrypoint {label!r}: {module_name} has no callable {function_name!r}")
    return function


class ExportedModule(nn.Module):
    """The module of a loaded ``.pt2``, made to behave like any other model.

    ``ExportedProgram.module()`` returns a GraphModule whose ``eval()`` and ``train()`` raise: the graph
    was captured in one mode and stays in it. This wrapper records the mode without touching the graph,
    so ``.eval()``, ``.to(dtype)`` and ``.to(device)`` work as for any module.
    """

    def __init__(self, graph_module: nn.Module) -> None:
        super().__init__()
        self.graph_module = graph_module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.graph_module(*args, **kwargs)

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode
        return self


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} file {path} could not be read: {e.strerror or e}") from None


def _graph_file(path: Path) -> nn.Module:
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    from farm.zoo.safe_load import PROMISE, Unreadable, UnsafeFile, check_pt2, check_torchscript

    kind = "torch.export (.pt2)" if path.suffix == ".pt2" else "TorchScript"
    data = _read_bytes(path, "model")
    try:
        # Inspected before any torch loader sees it: torch.export.load runs pickles and code from the file.
        # The loader gets the very bytes inspected, never the path again (the file could change in between).
        check_pt2(data, path.name) if path.suffix == ".pt2" else check_torchscript(data, path.name)
    except Unreadable as e:
        raise ConfigError(f"model file {path} is not a readable {kind} file: {e}") from None
    except UnsafeFile as e:
        raise ConfigError(f"model file {path} refused: {e} ({PROMISE})") from None
    try:
        if path.suffix == ".pt2":
            return ExportedModule(torch.export.load(io.BytesIO(data)).module())
        return torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as e:
        raise ConfigError(f"model file {path} is not a readable {kind} file: {_first_line(e)}") from e


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True``; accepts ``{"state_dict": ...}`` and ``{"model": ...}`` wrappers.

    Raises:
        ConfigError: missing, corrupted, or not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist")
    from farm.zoo.safe_load import PROMISE, Unreadable, UnsafeFile, check_torch_file

    data = _read_bytes(path, "weights")
    try:
        check_torch_file(data, path.name)
    except Unreadable as e:
        raise ConfigError(f"weights file {path} is corrupted or not a PyTorch file: {e}") from None
    except UnsafeFile as e:
        raise ConfigError(
            f"weights file {path} is not a plain state dict: it holds Python objects that a weights-only load "
            f"refuses ({e}; {PROMISE})"
        ) from None
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch raises UnpicklingError both for objects weights_only refuses ("Unsupported global") and for
        # bytes that are no pickle at all ("Unsupported operand"): only the first is a Python object.
        detail = _unpickler_detail(e)
        if "Unsupported global" not in str(e):
            raise ConfigError(f"weights file {path} is corrupted or not a PyTorch file: {detail}") from None
        raise ConfigError(
            f"weights file {path} is not a plain state dict: it holds Python objects that a weights-only load "
            f"refuses ({detail})"
        ) from None
    except Exception as e:
        raise ConfigError(f"weights file {path} is corrupted or not a PyTorch file: {_first_line(e)}") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"weights file {path} is not a state dict (a mapping of parameter names to tensors)")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_weights(module: nn.Module, path: str | Path, label: str) -> None:
    """Load a state-dict file into ``module`` with strict key matching.

    Raises:
        ConfigError: the file is unreadable or its keys or shapes don't fit the model.
    """
    state = read_state_dict(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:400]
        raise ConfigError(f"weights file {path} does not fit {label}: {detail}") from None


def builtin_models() -> dict[str, str]:
    """Built-in model names and descriptions."""
    return {f"farm:{k}": v for k, v in BUILTIN_MODELS.items()}


def _literal(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    if value in ("true", "false"):
        return value == "true"
    return value


def _unpickler_detail(e: BaseException) -> str:
    """The reason torch's weights-only unpickler gives, without the advice around it."""
    text = " ".join(str(e).split())
    _, found, rest = text.partition("WeightsUnpickler error:")
    if not found:
        return _first_line(e)
    return rest.split(" Check the documentation")[0].split(". ")[0].strip()[:300]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
