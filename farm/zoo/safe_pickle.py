"""Pickles and zip archives, inspected the way torch's loaders will read them, without unpickling anything.

The rules mirror torch's readers, not Python's: a file is a zip archive only when it starts with a local
file header (``torch.serialization._is_zipfile``), and torch's zip reader finds members ignoring case, so
names are classified lowercased and two names that differ only in case are refused. Anything that is not a
known raw-data member of a ``torch.save`` archive is either checked as a pickle or refused.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import zipfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

#: What a refusal says about why: QuantFarm's promise, once.
PROMISE = "QuantFarm never runs code from a file"

#: What ``torch.serialization._is_zipfile`` looks for at byte 0; anything else torch reads as a legacy file.
ZIP_MAGIC = b"PK\x03\x04"


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


def looks_like_pickle(data: bytes) -> bool:
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


# --- zip archives, as torch's reader sees them -----------------------------------------------------------


def open_zip(data: bytes, label: str) -> zipfile.ZipFile:
    """Open an archive torch will read, refusing anything its reader and Python's could read differently.

    Raises:
        Unreadable: not a zip archive from byte 0 (torch would read it as a legacy pickle file instead).
        UnsafeFile: data before or between the archive's records, or names equal ignoring case.
    """
    if data[:4] != ZIP_MAGIC:
        raise Unreadable(f"{label} is not a zip archive (it does not start with a zip header)")
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise Unreadable(f"{label} is not a zip archive ({e})") from None
    infos = sorted(z.infolist(), key=lambda i: i.header_offset)
    # Python's zipfile shifts every offset by any bytes found before the central directory's stated place;
    # torch's reader doesn't. An archive whose first record is not at byte 0 is read differently by the two.
    if not infos or infos[0].header_offset != 0 or z.start_dir < infos[-1].header_offset:
        z.close()
        raise UnsafeFile(f"{label} has data before its zip records (its directory offsets are inconsistent)")
    lowered = [info.filename.lower() for info in infos]
    if len(set(lowered)) != len(lowered):
        # torch's reader finds a member ignoring case: it and Python's zipfile may pick different copies
        z.close()
        raise UnsafeFile(f"{label} holds two members of the same name (ignoring case)")
    return z


def archive_root(z: zipfile.ZipFile, label: str) -> str:
    """The one top-level folder every member of a torch archive lives in, with its slash."""
    names = z.namelist()
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise UnsafeFile(f"{label} is not a torch archive (expected one top-level folder)")
    return roots.pop() + "/"


# --- torch.save files (state dicts, references, checkpoints, payloads inside archives) ------------------

_TORCH_SAVE_RAW = re.compile(r"byteorder|version|\.data/version|\.data/serialization_id|\.format_version|"
                             r"\.storage_alignment|data/[0-9]+")  # fmt: skip


def check_torch_file(source: str | Path | bytes, label: str, *, require_zip: bool = False) -> None:
    """Check a ``torch.save`` file before ``torch.load`` reads it; pass the very bytes torch.load will get.

    A zip-format file (torch >= 1.6, starting with a zip header) may hold only its pickle, which must be
    weights-only, and raw storages; any other member is refused. A legacy (pre-zip) file is five pickles,
    each checked, then raw storages; ``require_zip`` refuses it instead (inside archives torch unpickles
    such payloads without the weights-only guard, so only the modern format is accepted there).

    Raises:
        Unreadable: not a torch.save file.
        UnsafeFile: a pickle a weights-only load would refuse, or a member torch.save never writes.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not data:
        return
    if data[:4] == ZIP_MAGIC:
        with open_zip(data, label) as z:
            root = archive_root(z, label)
            for info in z.infolist():
                inner = info.filename[len(root) :].lower()
                if inner.endswith(".pkl"):
                    check_pickle(z.read(info), f"{label}:{info.filename}")
                elif not (_TORCH_SAVE_RAW.fullmatch(inner) or inner.endswith("/")):
                    raise UnsafeFile(f"{label}:{info.filename} is not part of a torch.save file")
        return
    if require_zip:
        raise Unreadable(f"{label} is not a zip-format torch.save payload")
    offset = 0
    for index in range(5):  # magic number, protocol, sys info, the object, storage keys
        if data[offset : offset + 1] != b"\x80":
            raise Unreadable(f"{label} is not a torch.save file (no pickle {index + 1} at byte {offset})")
        offset += check_pickle(data[offset:], f"{label} (pickle {index + 1})")


def check_weights_only_load(data: bytes, label: str) -> None:
    """Load a checked payload with ``weights_only=True`` here, so torch's own retry without it never happens.

    torch.export's sample-input loader falls back to ``weights_only=False`` when the guarded load fails.

    Raises:
        UnsafeFile: the guarded load fails.
    """
    import torch

    if not data:
        return
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure would send torch to its unguarded retry
        detail = " ".join(str(e).split())[:120] or type(e).__name__
        raise UnsafeFile(f"{label} fails a weights-only load ({detail})") from None
