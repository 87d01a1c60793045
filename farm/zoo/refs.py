"""Model and dataset reference strings: ``scheme:body[?key=value&...]``.

Parsing and syntax checks only; nothing here imports torch, so the producer validates references in a
sweep spec with the same rules the workers apply. Whether a reference *loads* is decided by
:mod:`farm.zoo.models` and :mod:`farm.zoo.data` on the machine that runs the job.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from farm.errors import ConfigError, Problem

BUILTIN_MODELS = {
    "digits-cnn": "small CNN trained deterministically on scikit-learn's digits (input 1x8x8, 10 classes)",
    "digits-mlp": "MLP trained deterministically on scikit-learn's digits (input 1x8x8, 10 classes)",
    "tiny-encoder": "transformer encoder, seeded random init: (input_ids, attention_mask) int64 [B, L<=64], "
    "vocab 1000 -> {embedding [B, dim], logits [B, 4]}; pair with tokens:LEN (?dim=64&layers=2&heads=4)",
}
#: The options each built-in model takes (its size): (least, most, default) of each.
BUILTIN_OPTIONS: dict[str, dict[str, tuple[int, int, int]]] = {
    "tiny-encoder": {"dim": (8, 1024, 64), "layers": (1, 12, 2), "heads": (1, 32, 4)},
}


def builtin_option(ref: Ref, name: str) -> int:
    """A built-in model's size option as given, else its default (:data:`BUILTIN_OPTIONS`)."""
    return ref.int_option(name, BUILTIN_OPTIONS[ref.body][name][2])


def _is_count(value: str) -> bool:
    """A plain decimal integer as a person writes it: ASCII digits, no sign, no leading zero ("²" is no digit)."""
    return value.isascii() and value.isdecimal() and (value == "0" or not value.startswith("0"))


#: The dataset a built-in model runs on when none is named (``farm quantize --model farm:NAME``).
BUILTIN_DATASETS = {"tiny-encoder": "tokens:32"}
SKLEARN_DATASETS = {"digits": "scikit-learn's bundled 8x8 handwritten digits, 1,797 images, 10 classes"}

MODEL_SCHEMES = {
    "farm": "built-in models: " + ", ".join(f"farm:{n}" for n in BUILTIN_MODELS),
    "torchvision": "torchvision classification models, random init unless weights are given (?num_classes=N)",
    "entrypoint": "entrypoint:package.module:function returning an nn.Module (module must be in FARM_ALLOWED_MODULES)",
    "file": "file:PATH to a TorchScript (.pt) or torch.export (.pt2) file",
}
DATASET_SCHEMES = {
    "sklearn": "sklearn:digits with fixed train / calibration / test splits",
    "imagefolder": "imagefolder:DIR in torchvision ImageFolder layout (?image_size=224&calibration_fraction=0.5)",
    "synthetic": "synthetic:CxHxW random inputs for latency-only runs (?n_test=64&n_calibration=256&n_train=256)",
    "tokens": "tokens:LEN random token ids with an attention mask, length 8..LEN (?vocab=1000&n_test=64&...)",
    "entrypoint": "entrypoint:package.module:function returning the splits (module must be in FARM_ALLOWED_MODULES)",
}

# Options each scheme understands; entrypoints pass theirs to the function as keyword arguments.
# (A built-in model's options are its own: BUILTIN_OPTIONS.)
_MODEL_OPTIONS: dict[str, set[str] | None] = {
    "torchvision": {"num_classes"},
    "entrypoint": None,
    "file": set(),
}
_DATASET_OPTIONS: dict[str, set[str] | None] = {
    "sklearn": set(),
    "imagefolder": {"image_size", "calibration_fraction", "test_size"},
    "synthetic": {"n_test", "n_calibration", "n_train"},
    "tokens": {"vocab", "n_test", "n_calibration", "n_train"},
    "entrypoint": None,
}
_INT_OPTIONS = {"num_classes", "image_size", "test_size", "n_test", "n_calibration", "n_train", "vocab"}
_ENTRYPOINT = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_TV_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
MAX_TOKENS = 8192
_SHAPE = re.compile(r"^[1-9]\d*(x[1-9]\d*)*$")


@dataclass(frozen=True)
class Ref:
    """A parsed reference. ``options`` keeps the order they were written in."""

    kind: str  # "model" or "dataset"
    scheme: str
    body: str
    options: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        text = f"{self.scheme}:{self.body}"
        return f"{text}?{urlencode(self.options)}" if self.options else text

    def option(self, name: str, default: str | None = None) -> str | None:
        return dict(self.options).get(name, default)

    def int_option(self, name: str, default: int) -> int:
        value = self.option(name)
        return default if value is None else int(value)

    def float_option(self, name: str, default: float) -> float:
        value = self.option(name)
        return default if value is None else float(value)


def builtin_dataset(model_ref: str) -> str:
    """The dataset a model runs on when none is named: a built-in model's own, else ``sklearn:digits``."""
    if not model_ref.startswith("farm:"):
        return "sklearn:digits"
    return BUILTIN_DATASETS.get(model_ref.removeprefix("farm:").partition("?")[0], "sklearn:digits")


def parse_model_ref(text: str) -> Ref:
    """Parse a model reference such as ``torchvision:resnet18?num_classes=10``.

    Raises:
        ConfigError: unknown scheme, malformed body or unknown option.
    """
    return _parse(text, "model", MODEL_SCHEMES, _MODEL_OPTIONS)


def parse_dataset_ref(text: str) -> Ref:
    """Parse a dataset reference such as ``imagefolder:/data/val?image_size=160``.

    Raises:
        ConfigError: unknown scheme, malformed body or unknown option.
    """
    return _parse(text, "dataset", DATASET_SCHEMES, _DATASET_OPTIONS)


def _parse(text: str, kind: str, schemes: dict[str, str], allowed: dict[str, set[str] | None]) -> Ref:
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(
            f"unknown {kind} reference {text!r}: expected SCHEME:NAME with SCHEME one of {', '.join(schemes)}"
        )
    scheme, _, rest = text.partition(":")
    if scheme not in schemes:
        raise ConfigError(f"unknown {kind} reference {text!r}: scheme {scheme!r} is not one of {', '.join(schemes)}")
    body, _, query = rest.partition("?")
    options = tuple(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else ()
    ref = Ref(kind, scheme, body, options)
    problem = _check_body(ref)
    if problem is None and scheme == "farm" and kind == "model":
        problem = _check_builtin_options(ref)
    elif problem is None:
        problem = _check_options(ref, allowed[scheme])
    if problem:
        raise ConfigError(f"bad {kind} reference {text!r}: {problem}")
    return ref


def _check_body(ref: Ref) -> str | None:
    s, b = ref.scheme, ref.body
    if s == "farm" and b not in BUILTIN_MODELS:
        return f"no built-in model {b!r}; built-in: {', '.join(BUILTIN_MODELS)}"
    if s == "torchvision" and not _TV_NAME.match(b):
        return "expected a torchvision model name such as resnet18"
    if s == "entrypoint" and not _ENTRYPOINT.match(b):
        return "expected entrypoint:package.module:function"
    if s in ("file", "imagefolder") and not b:
        return "expected a path"
    if s == "sklearn" and b not in SKLEARN_DATASETS:
        return f"no scikit-learn dataset {b!r}; available: {', '.join(SKLEARN_DATASETS)}"
    if s == "synthetic" and not _SHAPE.match(b):
        return "expected a sample shape such as 3x224x224"
    if s == "tokens" and not (_is_count(b) and 1 <= int(b) <= MAX_TOKENS):
        return f"expected a sequence length between 1 and {MAX_TOKENS} such as tokens:32"
    return None


def _check_builtin_options(ref: Ref) -> str | None:
    """A built-in model's size options: known, integers in their range, heads dividing dim."""
    ranges = BUILTIN_OPTIONS.get(ref.body, {})
    keys = [key for key, _ in ref.options]
    for key, value in ref.options:
        if key not in ranges:
            valid = ", ".join(sorted(ranges)) or "none"
            return f"unknown option {key!r} for farm:{ref.body} (valid: {valid})"
        if keys.count(key) > 1:  # one model, one reference: the job key is the reference's text
            return f"option {key} is given {keys.count(key)} times"
        low, high, _ = ranges[key]
        if not _is_count(value) or not low <= int(value) <= high:
            return f"option {key} must be an integer from {low} to {high}, got {value!r}"
    if ref.body == "tiny-encoder":
        dim, heads = builtin_option(ref, "dim"), builtin_option(ref, "heads")
        if dim % heads:
            return f"dim {dim} must be a multiple of heads {heads}"
    return None


def _check_options(ref: Ref, allowed: set[str] | None) -> str | None:
    for key, value in ref.options:
        if allowed is not None and key not in allowed:
            valid = ", ".join(sorted(allowed)) or "none"
            return f"unknown option {key!r} for {ref.scheme}: references (valid: {valid})"
        if key in _INT_OPTIONS and allowed is not None:
            if not _is_count(value) or int(value) < 1:
                return f"option {key} must be a positive integer, got {value!r}"
        if key == "calibration_fraction":
            try:
                fraction = float(value)
            except ValueError:
                fraction = -1.0
            if not 0 < fraction < 1:
                return f"option calibration_fraction must be between 0 and 1, got {value!r}"
    return None


def allowed_modules(env: str | None = None) -> list[str]:
    """Module prefixes that ``entrypoint:`` references may import, from FARM_ALLOWED_MODULES (comma-separated)."""
    raw = os.environ.get("FARM_ALLOWED_MODULES", "") if env is None else env
    return [p.strip() for p in raw.split(",") if p.strip()]


def check_entrypoint_allowed(ref: Ref, allowed: Sequence[str] | None = None) -> tuple[str, str]:
    """Split an entrypoint body into (module, function) after checking the allowlist.

    Raises:
        ConfigError: the module is not under a prefix listed in FARM_ALLOWED_MODULES.
    """
    module, _, function = ref.body.partition(":")
    prefixes = allowed_modules() if allowed is None else list(allowed)
    if not any(module == p or module.startswith(p + ".") for p in prefixes):
        listed = ", ".join(prefixes) if prefixes else "nothing"
        raise ConfigError(
            Problem(
                "",
                f"entrypoint {ref.body!r} is not allowed: module {module!r} is not under FARM_ALLOWED_MODULES "
                f"(which lists {listed}); running a user's code is an explicit opt-in",
            )
        )
    return module, function
