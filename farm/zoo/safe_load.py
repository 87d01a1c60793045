"""Inspect model, weights and checkpoint files before any torch loader reads them.

No file a user hands QuantFarm may run code. torch's loaders don't all promise that: ``torch.export.load``
unpickles a ``.pt2``'s sample inputs and pickled weights with ``weights_only=False``, hands math strings
to ``sympy.sympify`` (which evaluates them), executes the archive's guard code, resolves node targets by
name and loads AOTInductor shared libraries. So every archive is read here first, as a zip, and refused
unless each member is what a plain saved model holds:

- every pickle (``data.pkl``, ``constants.pkl``, pickled payloads, sample inputs) uses only the opcodes and
  the globals torch's weights-only unpickler accepts (``torch._weights_only_unpickler``); TorchScript's own
  pickles may also name TorchScript classes (``__torch__.*``, ``torch.jit._pickle.*``), which its C++
  unpickler resolves without running Python;
- a ``.pt2`` holds nothing but an exported program: graph JSON whose node targets are torch operators and
  whose symbolic expressions and guards are plain arithmetic; no AOTInductor binaries, no custom objects.

Nothing here unpickles or imports anything a file names. Functions raise :class:`UnsafeFile` with the
reason; callers turn it into their own one-line error.
"""

from __future__ import annotations

import ast
import json
import math
import re
import zipfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from farm.zoo.safe_pickle import (
    PROMISE,
    Unreadable,
    UnsafeFile,
    archive_root,
    check_pickle,
    check_torch_file,
    check_weights_only_load,
    looks_like_pickle,
    open_zip,
    torchscript_global,
    weights_only_global,
)

__all__ = [
    "PROMISE",
    "Unreadable",
    "UnsafeFile",
    "check_graph_json",
    "check_pickle",
    "check_pt2",
    "check_torch_file",
    "check_torchscript",
    "read_once",
    "weights_only_global",
]


def read_once(source: str | Path | bytes) -> bytes:
    """The file's bytes, read once: check these and hand these same bytes (``io.BytesIO``) to torch's loader.

    Checking a path and then letting torch open it again would leave a window to swap the file in between.
    """
    return source if isinstance(source, bytes) else Path(source).read_bytes()


# --- TorchScript -----------------------------------------------------------------------------------------


def check_torchscript(source: str | Path | bytes, label: str | None = None) -> None:
    """Check a TorchScript archive before ``torch.jit.load`` reads it (give it these same bytes).

    Its ``code/`` is TorchScript, run by TorchScript's interpreter (which can't reach Python); its pickles
    must name only weights-only globals and TorchScript types. Extra files that are pickles are held to the
    weights-only rule too, although torch never unpickles them. Names are matched ignoring case, as torch's
    reader matches them.

    Raises:
        UnsafeFile: not a zip archive, or a member a weights-only load would refuse.
    """
    label = label or str(source)
    with open_zip(read_once(source), label) as z:
        for info in z.infolist():
            name, lowered = info.filename, info.filename.lower()
            data = z.read(info)
            if lowered.endswith((".pkl", ".debug_pkl")):
                check_pickle(data, name, torchscript_global)
            elif data[:4] == b"PK\x03\x04":
                check_torch_file(data, name, require_zip=True)
            elif looks_like_pickle(data):
                check_pickle(data, name)


# --- .pt2 (torch.export) ---------------------------------------------------------------------------------

_PT2_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id", "version"}
_PT2_PAYLOAD = re.compile(r"data/(weights|constants)/([A-Za-z0-9_.-]+)")


def check_pt2(source: str | Path | bytes, label: str | None = None) -> None:
    """Check a ``torch.export.save`` archive before ``torch.export.load`` reads it (give it these same bytes).

    Accepted: the archive's version files, ``models/*.json`` (graph targets and operator arguments must be
    torch operators; every symbolic expression and guard plain arithmetic), ``data/sample_inputs/*.pt``
    (zip-format, weights-only pickles that a weights-only load accepts), raw tensor payloads named by the
    payload configs, ``extra/`` files (read as text). Refused: anything else, notably pickled payloads,
    AOTInductor binaries, custom or opaque objects and the legacy (torch < 2.7) layout.

    Raises:
        UnsafeFile: the first member that is not part of a plain exported program.
    """
    label = label or str(source)
    with open_zip(read_once(source), label) as z:
        names = z.namelist()
        root = archive_root(z, label)
        payloads = _pt2_payloads(z, root, names)
        for name in names:
            inner = name[len(root) :]
            if inner in _PT2_FIXED or inner.startswith("extra/") or name.endswith("/") or inner in payloads:
                continue
            if re.fullmatch(r"models/[A-Za-z0-9_.-]+\.json", inner):
                check_graph_json(_read_json(z, name), name)
            elif re.fullmatch(r"data/sample_inputs/[A-Za-z0-9_.-]+\.pt", inner):
                # torch.export retries a failed weights-only load of these without the guard: never let it fail
                check_torch_file(data := z.read(name), name, require_zip=True)
                check_weights_only_load(data, name)
            elif not re.fullmatch(r"data/(weights|constants)/[A-Za-z0-9_.-]+_config\.json", inner):
                raise UnsafeFile(
                    f"{name} is not part of a plain exported program (AOTInductor binaries, custom objects and "
                    "the legacy .pt2 layout are refused)"
                )


def _pt2_payloads(z: zipfile.ZipFile, root: str, names: list[str]) -> set[str]:
    """The raw tensor payloads (``data/<kind>/<file>``) the weights and constants configs name.

    Raises:
        UnsafeFile: a payload torch would unpickle (``use_pickle``: without the weights-only guard), or a
            constant that is a Python object.
    """
    payloads: set[str] = set()
    for name in names:
        inner = name[len(root) :]
        found = re.fullmatch(r"data/(weights|constants)/[A-Za-z0-9_.-]+_config\.json", inner)
        if not found:
            continue
        config = _read_json(z, name).get("config")
        if not isinstance(config, dict):
            raise UnsafeFile(f"{name} is not a payload config")
        for fqn, meta in config.items():
            path_name = meta.get("path_name") if isinstance(meta, dict) else None
            if not isinstance(path_name, str) or not _PT2_PAYLOAD.fullmatch(f"data/{found.group(1)}/{path_name}"):
                raise UnsafeFile(f"{name}: payload {fqn!r} has an unusable path name")
            if found.group(1) == "constants" and not path_name.startswith(_tensor_constant_prefix()):
                raise UnsafeFile(
                    f"{name}: constant {fqn!r} is a pickled Python object ({path_name}), which a weights-only "
                    "load refuses"
                )
            if meta.get("use_pickle"):
                raise UnsafeFile(
                    f"{name}: payload {fqn!r} is pickled, which torch.export.load unpickles without the "
                    "weights-only guard"
                )
            payloads.add(f"data/{found.group(1)}/{path_name}")
    return payloads


def _tensor_constant_prefix() -> str:
    from torch.export.pt2_archive.constants import TENSOR_CONSTANT_FILENAME_PREFIX

    return str(TENSOR_CONSTANT_FILENAME_PREFIX)


def _read_json(z: zipfile.ZipFile, name: str) -> dict[str, Any]:
    try:
        value = json.loads(z.read(name))
    except (ValueError, UnicodeDecodeError) as e:
        raise Unreadable(f"{name} is not JSON ({e})") from None
    if not isinstance(value, dict):
        raise UnsafeFile(f"{name} is not a JSON object")
    return value


def check_graph_json(program: dict[str, Any], member: str) -> None:
    """Check a serialized ExportedProgram: operator targets and arguments, symbolic expressions and guards.

    Raises:
        UnsafeFile: a target that is not a torch operator, or an expression that is not plain arithmetic.
    """
    for key, value in _walk(program):
        # node targets and operator arguments: torch.export's deserialize_operator resolves both by name
        if key in ("target", "as_operator") and isinstance(value, str):
            if not _safe_target(value):
                raise UnsafeFile(f"{member} calls {value[:80]!r}, which is not a torch operator")
        elif key == "expr_str":
            if not isinstance(value, str) or not _safe_expression(value, guard=False):
                raise UnsafeFile(f"{member} holds the symbolic expression {str(value)[:80]!r}, not plain arithmetic")
        elif key == "guards_code":
            for guard in value if isinstance(value, list) else [value]:
                if not isinstance(guard, str) or not _safe_expression(guard, guard=True):
                    raise UnsafeFile(f"{member} holds the guard {str(guard)[:80]!r}, not a plain shape check")


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                yield str(k), v
                stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)


_OPERATOR_NAMES = frozenset(
    "getitem add sub mul truediv floordiv mod pow neg pos abs eq ne lt le gt ge and_ or_ xor not_ invert "
    "lshift rshift matmul truth index".split()
)


def _safe_target(target: str) -> bool:
    """A node target torch.export's deserializer would resolve to an operator, never to arbitrary Python."""
    import torch

    parts = target.split(".")
    if any(not p.isidentifier() or p.startswith("__") for p in parts):
        return False
    if parts[0] == "_operator":
        return len(parts) == 2 and parts[1] in _OPERATOR_NAMES
    if parts[0] == "math":
        return len(parts) == 2 and not parts[1].startswith("_") and callable(getattr(math, parts[1], None))
    if parts[0] != "torch":
        return False
    obj: Any = torch
    try:
        for p in parts[1:]:
            obj = getattr(obj, p)
    except Exception:  # noqa: BLE001 - an unresolvable name is refused
        return False
    if isinstance(obj, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)):
        return True
    # symbolic-shape helpers (torch.sym_max, torch._sym_sqrt, ...): pure functions of numbers
    return len(parts) == 2 and parts[1].lstrip("_").startswith("sym_") and callable(obj)


_SYMPY_NAMES = frozenset(
    "Symbol Integer Rational Float Add Mul Pow Mod Max Min Abs Eq Ne Lt Le Gt Ge StrictLessThan "
    "StrictGreaterThan LessThan GreaterThan Equality Unequality And Or Not Xor BooleanTrue BooleanFalse true "
    "false oo Infinity NegativeInfinity zoo nan NaN floor ceiling Piecewise ExprCondPair Half One Zero "
    "NegativeOne sqrt FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift "
    "RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat "
    "TruncToInt RoundToInt RoundDecimal ToFloat Identity".split()
)
_GUARD_ATTRS = frozenset(
    "size stride storage_offset dim numel isnan isinf inf floor ceil trunc sqrt sym_max sym_min sym_not "
    "sym_float sym_int sym_sqrt".split()
)
_PLAIN_STRING = re.compile(r"[A-Za-z0-9_.+\-]*")
_SYMBOL_NAME = re.compile(r"[a-z]+[0-9]+")
_ARITHMETIC = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Load, ast.operator, ast.unaryop,
    ast.boolop, ast.cmpop, ast.Tuple,
)  # fmt: skip


def _safe_expression(text: str, *, guard: bool) -> bool:
    """True for plain arithmetic: sympy constructors (or, in guards, shape reads of ``L[...]``) and literals.

    sympy evaluates these strings with Python's ``eval`` and torch executes guards, so the rule is an
    allowlist of syntax and names: no attribute access but a few shape reads, no names but sympy's
    classes and symbols like ``s0``, no strings that sympy would parse again.
    """
    if len(text) > 10_000:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, _ARITHMETIC):
            continue
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str):
                if "__" in node.value or not _PLAIN_STRING.fullmatch(node.value):
                    return False
            elif node.value is not None and not isinstance(node.value, (int, float, bool)):
                return False
        elif isinstance(node, ast.Name):
            if guard:
                if node.id not in ("L", "math"):
                    return False
            elif node.id not in _SYMPY_NAMES and not _is_symbol_name(node.id):
                return False
        elif isinstance(node, ast.Call):
            if guard:
                if not (isinstance(node.func, ast.Attribute) and node.func.attr in _GUARD_ATTRS):
                    return False
            elif not (isinstance(node.func, ast.Name) and node.func.id in _SYMPY_NAMES):
                return False
        elif isinstance(node, ast.keyword):
            if node.arg is None or node.arg.startswith("_"):
                return False
        elif guard and isinstance(node, ast.Attribute):
            if node.attr not in _GUARD_ATTRS:
                return False
        elif guard and isinstance(node, (ast.Subscript, ast.Slice)):
            continue
        else:
            return False
    return True


@lru_cache(maxsize=256)
def _is_symbol_name(name: str) -> bool:
    """``s0``, ``u12``: a shape symbol, which sympy's parser turns into a Symbol (not a builtin or a sympy name)."""
    import builtins

    return bool(_SYMBOL_NAME.fullmatch(name)) and not hasattr(builtins, name)
