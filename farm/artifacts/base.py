"""The artifact store interface and key safety.

An artifact store holds bytes under keys (``jobs/<job_key>/model.pt``). Keys are always relative to the
store's own root (a directory, or ``s3://bucket/prefix``) and :func:`safe_key` makes sure no key can address
anything outside it. Every write is verified (size and sha256) before it counts, and every read can be.
"""

from __future__ import annotations

import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from farm.artifacts.files import regular_files
from farm.errors import ArtifactError, NotFound

MAX_KEY_BYTES = 900
"""S3 allows 1024 bytes for a whole key; 900 leaves room for the store's prefix."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ArtifactMissing(ArtifactError, NotFound):
    """The key (or file) asked for is not in the store. Both an ArtifactError and a NotFound."""


@dataclass(frozen=True)
class StoredObject:
    """One object as the store holds it, after its upload was verified.

    Attributes:
        key: the key relative to the store's root (no prefix).
        uri: where it lives (``file:///...`` or ``s3://bucket/prefix/key``); :meth:`ArtifactStore.key_for` inverts it.
        sha256: hex sha256 of its bytes.
        size_bytes: its size.
    """

    key: str
    uri: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class ListedObject:
    """One object as a listing shows it (nothing is downloaded or verified).

    Attributes:
        key: the key relative to the store's root (no prefix).
        uri: the object's URI, as :meth:`ArtifactStore.uri_for` gives it (what a database row holds).
        size_bytes: its size.
        modified_at: when it was last written (timezone-aware, UTC).
    """

    key: str
    uri: str
    size_bytes: int
    modified_at: datetime


def safe_key(key: str) -> str:
    """Normalise a key and reject any that could leave the store's root.

    A key is one or more ``/``-separated segments. It is NFC-normalised first (so that one name has one
    spelling), then refused if it is empty, longer than :data:`MAX_KEY_BYTES` UTF-8 bytes, starts with
    ``/``, holds a backslash, NUL or other control character, or has an empty, ``.`` or ``..`` segment.
    Nothing is percent-decoded: ``%2e%2e`` is a literal segment name.

    Args:
        key: the key to check.

    Returns:
        The normalised key.

    Raises:
        ArtifactError: the key is unsafe or malformed (the message says why).
    """
    if not isinstance(key, str):
        raise ArtifactError(f"artifact key must be a string, got {type(key).__name__}")
    key = unicodedata.normalize("NFC", key)
    shown = repr(key if len(key) <= 80 else key[:80] + "...")
    if not key:
        raise ArtifactError("artifact key is empty")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ArtifactError(f"artifact key {shown} is longer than {MAX_KEY_BYTES} bytes")
    if _CONTROL.search(key):
        raise ArtifactError(f"artifact key {shown} holds a NUL or control character")
    if "\\" in key:
        raise ArtifactError(f"artifact key {shown} holds a backslash; use '/' to separate segments")
    if key.startswith("/"):
        raise ArtifactError(f"artifact key {shown} is absolute; keys are relative to the store")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            what = "an empty" if not segment else f"a '{segment}'"
            raise ArtifactError(f"artifact key {shown} has {what} segment")
    return key


def join_key(prefix: str, name: str) -> str:
    """``prefix/name`` (or ``name`` when the prefix is empty), checked by :func:`safe_key`.

    Args:
        prefix: a key prefix, may be empty.
        name: the rest of the key.

    Returns:
        The joined, safe key.

    Raises:
        ArtifactError: the result is not a safe key.
    """
    return safe_key(f"{prefix}/{name}" if prefix else name)


class ArtifactStore(ABC):
    """Where artifacts' bytes live. Implementations: :class:`~farm.artifacts.local.LocalStore`,
    :class:`~farm.artifacts.s3.S3Store`. Every key goes through :func:`safe_key`."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The store's URL (``file:///root`` or ``s3://bucket/prefix``); never holds credentials."""

    @abstractmethod
    def put_file(self, local_path: Path, key: str, *, sha256: str | None = None) -> StoredObject:
        """Upload one file and verify what the store now holds.

        Args:
            local_path: the file to upload.
            key: where it goes, relative to the store.
            sha256: the file's expected hex sha256; computed when None.

        Returns:
            The stored object, verified.

        Raises:
            ArtifactError: unsafe key, unreadable file, a file that does not match ``sha256``, or an upload
                that failed verification (the bad object is deleted).
            TransientError: the store could not be reached; retry later.
        """

    def put_dir(self, local_dir: Path, prefix: str) -> list[StoredObject]:
        """Upload every regular file under ``local_dir`` (sorted; symlinks skipped) below ``prefix``.

        Args:
            local_dir: the directory to upload.
            prefix: the key prefix the files' relative paths are joined to.

        Returns:
            One verified :class:`StoredObject` per file, in sorted order of relative path.

        Raises:
            ArtifactError: ``local_dir`` is not a directory, a resulting key is unsafe, or an upload failed.
            TransientError: the store could not be reached; retry later.
        """
        prefix = safe_key(prefix) if prefix else ""
        files = list(regular_files(Path(local_dir)))
        keys = [join_key(prefix, rel) for rel, _ in files]  # check every key before writing anything
        return [self.put_file(path, key) for key, (_, path) in zip(keys, files, strict=True)]

    @abstractmethod
    def get_file(self, key: str, dest_path: Path, *, sha256: str | None = None) -> Path:
        """Download one object to ``dest_path`` through a temp file beside it and an atomic rename.

        Args:
            key: the object's key.
            dest_path: the local file to write; its parent is created.
            sha256: the expected hex sha256; the download is refused (and ``dest_path`` left untouched) when
                the bytes differ.

        Returns:
            ``dest_path``.

        Raises:
            ArtifactMissing: no such key.
            ArtifactError: unsafe key, or the bytes do not match.
            TransientError: the store could not be reached; retry later.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``.

        Args:
            key: the key.

        Returns:
            True when it exists.

        Raises:
            ArtifactError: unsafe key, or the store refused the request.
            TransientError: the store could not be reached; retry later.
        """

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete the object ``prefix`` and every object under ``prefix/``. Deleting nothing is not an error.

        ``jobs/ab`` never touches ``jobs/abc/...``: the prefix is a path, not a string prefix.

        Args:
            prefix: a non-empty key prefix (an empty one would empty the whole store, and is refused).

        Raises:
            ArtifactError: unsafe or empty prefix, or the store refused a deletion.
            TransientError: the store could not be reached; retry later.
        """

    @abstractmethod
    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        """Every object ``prefix`` names or holds below ``prefix/``, in no promised order.

        As with :meth:`delete_prefix`, the prefix is a path: ``jobs/ab`` never lists ``jobs/abc/...``.

        Args:
            prefix: a non-empty key prefix.

        Yields:
            One :class:`ListedObject` per object.

        Raises:
            ArtifactError: unsafe or empty prefix, a missing bucket, refused credentials.
            TransientError: the store could not be reached; retry later.
        """

    @abstractmethod
    def uri_for(self, key: str) -> str:
        """The URI of ``key`` in this store.

        Args:
            key: the key.

        Returns:
            A ``file://`` or ``s3://`` URI.

        Raises:
            ArtifactError: unsafe key.
        """

    @abstractmethod
    def key_for(self, uri: str) -> str:
        """The key a URI of this store names: the inverse of :meth:`uri_for`.

        Args:
            uri: a URI returned by :meth:`uri_for`.

        Returns:
            The key.

        Raises:
            ArtifactError: the URI is outside this store or names an unsafe key.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
