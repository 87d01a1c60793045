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
import io
import json
import math
import pickle
import pickletools
import re
import zipfile
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

#: What a refusal says about why: QuantFarm's promise, once.
PROMISE = "QuantFarm never runs code from a file"


class UnsafeFile(Exception):
    """A file holds something a weights-only load would refuse (or that could run code)."""


class Unreadable(UnsafeFile):
    """Not the kind of file expected at all (not a zip archive, a broken pickle, bad JSON): refused as well."""


# --- pickles ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _weights_only_opcodes() -> frozenset[str]:
    """The opcodes torch's weights-only unpickler implements (everything else it refuses)."""
    import torch._weights_only_unpickler as wou

    names = {
        name
        for name in dir(wou)
        if name.isupper()
        and isinstance(getattr(wou, name), bytes)
        and getattr(pickle, name, None) == getattr(wou, name)
    }
    by_code = {op.code: op.name for op in pickletools.opcodes}
    return frozenset(by_code[getattr(pickle, n).decode("latin-1")] for n in names)


@lru_cache(maxsize=1)
def _weights_only_globals() -> frozenset[str]:
    import torch._weights_only_unpickler as wou

    return frozenset(wou._get_allowed_globals())


def _global_name(arg: str) -> str:
    """``module name`` as pickletools gives a GLOBAL, mapped the way torch's unpickler maps Python 2 names."""
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    module, _, name = arg.partition(" ")
    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return f"{module}.{name}"


def weights_only_global(name: str) -> bool:
    """True when torch's weights-only unpickler accepts this global by default."""
    return name in _weights_only_globals()


def torchscript_global(name: str) -> bool:
    """Globals a TorchScript pickle may name: weights-only ones and TorchScript's own types and helpers."""
    return weights_only_global(name) or name.startswith("__torch__.") or name.startswith("torch.jit._pickle.")


def check_pickle(data: bytes, member: str, allowed: Callable[[str], bool] = weights_only_global) -> int:
    """Check one pickle without unpickling it: opcodes and globals must be ones a weights-only load accepts.

    The weights-only unpickler reads a global only through GLOBAL (whose names are literal in the stream),
    so the names seen here are every callable the pickle can reach.

    Returns:
        The offset just past the pickle's STOP.

    Raises:
        UnsafeFile: the pickle uses another opcode or global, or is not a complete pickle.
    """
    opcodes = _weights_only_opcodes()
    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(data)):
            if op.name not in opcodes:
                raise UnsafeFile(f"{member} uses the pickle opcode {op.name}, which a weights-only load refuses")
            if op.name == "GLOBAL":
                name = _global_name(str(arg))
                if not allowed(name):
                    raise UnsafeFile(f"{member} names the Python global {name}, which a weights-only load refuses")
            if op.name == "STOP":
                return (pos or 0) + 1
    except UnsafeFile:
        raise
    except Exception as e:  # noqa: BLE001 - pickletools raises ValueError and friends on garbage
        raise Unreadable(f"{member} is not a readable pickle ({type(e).__name__})") from None
    raise Unreadable(f"{member} is not a complete pickle")


# --- torch.save files (state dicts, references, checkpoints, payloads inside archives) ------------------


def check_torch_file(source: str | Path | bytes, label: str, *, require_zip: bool = False) -> None:
    """Check a ``torch.save`` file before ``torch.load`` reads it.

    A zip-format file (torch >= 1.6) must have only weights-only pickles. A legacy (pre-zip) file starts
    with five pickles, each checked; ``require_zip`` refuses it instead (inside archives torch unpickles
    such payloads without the weights-only guard, so only the modern format is accepted there).

    Raises:
        UnsafeFile: a pickle a weights-only load would refuse.
    """
    opened: Any = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    if zipfile.is_zipfile(opened):  # read member by member: a state dict may be larger than memory allows twice
        with zipfile.ZipFile(opened) as z:
            for info in z.infolist():
                if info.filename.endswith(".pkl"):
                    check_pickle(z.read(info), f"{label}:{info.filename}")
        return
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not data:
        return
    if require_zip:
        raise Unreadable(f"{label} is not a zip-format torch.save payload")
    offset = 0
    for index in range(5):  # magic number, protocol, sys info, the object, storage keys
        if data[offset : offset + 1] != b"\x80":  # not (or no longer) a pickle: torch.load says what it is
            return
        offset += check_pickle(data[offset:], f"{label} (pickle {index + 1})")


# --- TorchScript -----------------------------------------------------------------------------------------


def check_torchscript(path: str | Path, label: str | None = None) -> None:
    """Check a TorchScript archive before ``torch.jit.load`` reads it.

    Its ``code/`` is TorchScript, run by TorchScript's interpreter (which can't reach Python); its pickles
    must name only weights-only globals and TorchScript types. Extra files that are pickles are held to the
    weights-only rule too, although torch never unpickles them.

    Raises:
        UnsafeFile: not a zip archive, or a member a weights-only load would refuse.
    """
    label = label or str(path)
    with _open_zip(path, label) as z:
        for info in z.infolist():
            name = info.filename
            if name.endswith((".pkl", ".debug_pkl")):
                check_pickle(z.read(info), name, torchscript_global)
            elif "/extra/" in f"/{name}" and _looks_like_pickle(data := z.read(info)):
                check_pickle(data, name)
            elif _nested_zip(z, info):
                check_torch_file(z.read(info), name, require_zip=True)


def _looks_like_pickle(data: bytes) -> bool:
    """A member that parses as one pickle; other bytes are opaque data no loader unpickles."""
    if data[:1] != b"\x80" or len(data) < 3:
        return False
    try:
        for op, _, pos in pickletools.genops(io.BytesIO(data)):
            if op.name == "STOP":
                return (pos or 0) + 1 == len(data)
    except Exception:  # noqa: BLE001
        return False
    return False


def _nested_zip(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> bool:
    with z.open(info) as f:
        return f.read(4) == b"PK\x03\x04"


def _open_zip(path: str | Path, label: str) -> zipfile.ZipFile:
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise Unreadable(f"{label} is not a zip archive ({e})") from None
    names = z.namelist()
    if len(set(names)) != len(names):
        # torch's C++ reader and Python's zipfile may pick different copies of a duplicated name
        z.close()
        raise UnsafeFile(f"{label} holds two members of the same name")
    return z


# --- .pt2 (torch.export) ---------------------------------------------------------------------------------

_PT2_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id", "version"}
_PT2_PAYLOAD = re.compile(r"data/(weights|constants)/([A-Za-z0-9_.-]+)")


def check_pt2(path: str | Path, label: str | None = None) -> None:
    """Check a ``torch.export.save`` archive before ``torch.export.load`` reads it.

    Accepted: the archive's version files, ``models/*.json`` (graph targets must be torch operators; every
    symbolic expression and guard plain arithmetic), ``data/sample_inputs/*.pt`` and pickled payloads
    (zip-format, weights-only pickles), raw tensor payloads named by the payload configs, ``extra/`` files
    (read as text). Refused: anything else, notably AOTInductor binaries, custom or opaque objects and the
    legacy (torch < 2.7) layout.

    Raises:
        UnsafeFile: the first member that is not part of a plain exported program.
    """
    label = label or str(path)
    with _open_zip(path, label) as z:
        names = z.namelist()
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            raise UnsafeFile(f"{label} is not a torch.export archive (expected one top-level folder)")
        root = roots.pop() + "/"
        payloads = _pt2_payloads(z, root, names)
        for name in names:
            inner = name[len(root) :]
            if inner in _PT2_FIXED or inner.startswith("extra/") or name.endswith("/"):
                continue
            if re.fullmatch(r"models/[A-Za-z0-9_.-]+\.json", inner):
                check_graph_json(_read_json(z, name), name)
            elif re.fullmatch(r"data/sample_inputs/[A-Za-z0-9_.-]+\.pt", inner):
                check_torch_file(z.read(name), name, require_zip=True)
            elif re.fullmatch(r"data/(weights|constants)/[A-Za-z0-9_.-]+_config\.json", inner):
                continue  # read by _pt2_payloads
            elif inner in payloads:
                if payloads[inner]:
                    check_torch_file(z.read(name), name, require_zip=True)
            else:
                raise UnsafeFile(
                    f"{name} is not part of a plain exported program (AOTInductor binaries, custom objects and "
                    "the legacy .pt2 layout are refused)"
                )


def _pt2_payloads(z: zipfile.ZipFile, root: str, names: list[str]) -> dict[str, bool]:
    """``data/<kind>/<file>`` -> whether torch unpickles it, from the weights and constants configs."""
    payloads: dict[str, bool] = {}
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
            payloads[f"data/{found.group(1)}/{path_name}"] = bool(meta.get("use_pickle"))
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
    """Check a serialized ExportedProgram: operator targets, symbolic expressions and guards.

    Raises:
        UnsafeFile: a target that is not a torch operator, or an expression that is not plain arithmetic.
    """
    for key, value in _walk(program):
        if key == "target" and isinstance(value, str):
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
