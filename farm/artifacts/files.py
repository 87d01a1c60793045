"""File helpers the stores share: sha256 (whole file and S3's multipart composite), atomic copies, walks."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from farm.errors import ArtifactError

_CHUNK_BYTES = 1 << 20
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(value: str) -> str:
    """Lower-case a hex sha256 and check its form.

    Args:
        value: 64 hex digits.

    Returns:
        The digest in lower case.

    Raises:
        ArtifactError: it is not 64 hex digits.
    """
    digest = value.strip().lower() if isinstance(value, str) else ""
    if not _SHA256_HEX.match(digest):
        raise ArtifactError(f"not a hex sha256: {value!r}")
    return digest


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks.

    Args:
        path: the file.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def copy_atomic(src: Path, dest: Path, *, sha256: str | None = None) -> tuple[str, int]:
    """Copy ``src`` to ``dest`` through a temp file beside ``dest`` and an atomic rename.

    The digest is taken of the bytes as they are copied, so what lands at ``dest`` is what was checked.
    ``dest`` is replaced only after the copy is complete, fsynced and (when ``sha256`` is given) verified;
    on any failure the temp file is removed and ``dest`` is left as it was.

    Args:
        src: the file to copy.
        dest: where it goes; its parent directory is created.
        sha256: the expected hex sha256 of ``src``, if known.

    Returns:
        (hex sha256, size in bytes) of the copied bytes.

    Raises:
        ArtifactError: the bytes do not match ``sha256``.
        OSError: reading or writing failed.
    """
    expected = check_sha256(sha256) if sha256 is not None else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        size = 0
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            for chunk in iter(lambda: fin.read(_CHUNK_BYTES), b""):
                h.update(chunk)
                size += len(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        digest = h.hexdigest()
        if expected is not None and digest != expected:
            raise ArtifactError(f"{src}: sha256 is {digest}, expected {expected}")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are ordinary readable files
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    return digest, size


def _fsync_dir(path: Path) -> None:
    # Makes the rename durable; not every platform or filesystem allows opening a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def regular_files(local_dir: Path) -> Iterator[tuple[str, Path]]:
    """Every regular file under ``local_dir`` as (relative posix path, path), sorted by relative path.

    Symlinks (to files or directories) are skipped, never followed, so a link inside the directory that
    points elsewhere cannot pull outside files into an upload.

    Args:
        local_dir: the directory to walk.

    Yields:
        (relative path with ``/`` separators, absolute path) pairs.

    Raises:
        ArtifactError: ``local_dir`` is not a directory.
    """
    if local_dir.is_symlink() or not local_dir.is_dir():
        raise ArtifactError(f"{local_dir} is not a directory")
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(local_dir, followlinks=False):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            path = Path(dirpath) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                found.append((path.relative_to(local_dir).as_posix(), path))
    yield from sorted(found)


def multipart_digests(path: Path, part_bytes: int | None) -> tuple[str, str, int]:
    """Hash a file once for both S3 checksums: the whole file's sha256 and the parts' composite.

    S3 stores, for a multipart upload with ``ChecksumAlgorithm=SHA256``, the sha256 of the concatenated
    binary sha256 digests of the parts, in base64 (AWS adds ``-<parts>``). This computes the same value
    for parts of ``part_bytes`` bytes (the last one shorter).

    Args:
        path: the file.
        part_bytes: the part size; None or 0 for a single-request upload (no composite).

    Returns:
        (whole-file hex sha256, base64 composite sha256 or "" when not multipart, number of parts).
    """
    whole = hashlib.sha256()
    part = hashlib.sha256()
    part_digests: list[bytes] = []
    in_part = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            whole.update(chunk)
            if not part_bytes:
                continue
            view = memoryview(chunk)
            while view:
                take = min(len(view), part_bytes - in_part)
                part.update(view[:take])
                in_part += take
                view = view[take:]
                if in_part == part_bytes:
                    part_digests.append(part.digest())
                    part, in_part = hashlib.sha256(), 0
    if part_bytes and in_part:
        part_digests.append(part.digest())
    composite = b64_digest(hashlib.sha256(b"".join(part_digests)).digest()) if part_digests else ""
    return whole.hexdigest(), composite, len(part_digests)


def b64_digest(digest: bytes) -> str:
    """Base64 of a binary digest, as S3 writes checksums."""
    return base64.b64encode(digest).decode("ascii")
