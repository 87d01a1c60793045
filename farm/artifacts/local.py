"""An artifact store in a local directory (or a shared filesystem mounted on every worker)."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

from farm.artifacts.base import ArtifactMissing, ArtifactStore, StoredObject, safe_key
from farm.artifacts.files import copy_atomic
from farm.errors import ArtifactError, ConfigError


class LocalStore(ArtifactStore):
    """Files under ``root``; key ``a/b`` is the file ``root/a/b``.

    Writes go through a temp file in the destination directory and ``os.replace``, so a reader never sees a
    half-written file. Besides :func:`~farm.artifacts.base.safe_key`, every path is resolved (symlinks
    followed) and must still lie inside the resolved root: a symlink planted inside the store cannot
    redirect a read or a write outside it.

    Args:
        root: the store's directory; created on the first write.
    """

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser().resolve()

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def _path(self, key: str) -> tuple[str, Path]:
        key = safe_key(key)
        path = self.root.joinpath(*key.split("/"))
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise ArtifactError(f"artifact key {key!r} resolves outside the store {self.url}")
        return key, resolved

    def put_file(self, local_path: Path, key: str, *, sha256: str | None = None) -> StoredObject:
        """Copy a file into the store (atomically), hashing the bytes as they are written.

        See :meth:`ArtifactStore.put_file`.
        """
        key, dest = self._path(key)
        src = Path(local_path)
        if not src.is_file():
            raise ArtifactError(f"cannot upload {src}: not a file")
        try:
            digest, size = copy_atomic(src, dest, sha256=sha256)
        except OSError as e:
            raise ArtifactError(f"cannot write {self.uri_for(key)}: {e.strerror or e}") from e
        return StoredObject(key=key, uri=self.uri_for(key), sha256=digest, size_bytes=size)

    def get_file(self, key: str, dest_path: Path, *, sha256: str | None = None) -> Path:
        """Copy an object out of the store (atomically), verifying ``sha256`` when given.

        See :meth:`ArtifactStore.get_file`.
        """
        key, src = self._path(key)
        if not src.is_file():
            raise ArtifactMissing(f"{self.uri_for(key)} does not exist")
        dest = Path(dest_path)
        try:
            copy_atomic(src, dest, sha256=sha256)
        except ArtifactError as e:
            raise ArtifactError(f"{self.uri_for(key)} failed verification: {e}") from e
        except OSError as e:
            raise ArtifactError(f"cannot copy {self.uri_for(key)} to {dest}: {e.strerror or e}") from e
        return dest

    def exists(self, key: str) -> bool:
        """See :meth:`ArtifactStore.exists`."""
        return self._path(key)[1].is_file()

    def delete_prefix(self, prefix: str) -> None:
        """See :meth:`ArtifactStore.delete_prefix`. Never follows a symlink out of the store."""
        if not prefix:
            raise ArtifactError("refusing to delete an empty prefix (the whole store)")
        prefix = safe_key(prefix)
        path = self.root.joinpath(*prefix.split("/"))
        # Check the parent resolved, not the path itself: a symlink at ``path`` is unlinked, never followed.
        if not path.parent.resolve().is_relative_to(self.root):
            raise ArtifactError(f"prefix {prefix!r} resolves outside the store {self.url}")
        try:
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise ArtifactError(f"cannot delete {self.uri_for(prefix)}: {e.strerror or e}") from e

    def uri_for(self, key: str) -> str:
        """``file:///root/key``, percent-encoded as :meth:`pathlib.Path.as_uri` does.

        See :meth:`ArtifactStore.uri_for`.
        """
        key = safe_key(key)
        return self.root.joinpath(*key.split("/")).as_uri()

    def key_for(self, uri: str) -> str:
        """See :meth:`ArtifactStore.key_for`."""
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ArtifactError(f"{uri!r} is not a file:// URI of the store {self.url}")
        # Compare strings, not Paths: pathlib would quietly collapse "a//b" and "a/./b".
        path = unquote(parts.path, errors="strict")
        root = self.root.as_posix().rstrip("/") + "/"
        if not path.startswith(root):
            raise ArtifactError(f"{uri!r} is outside the store {self.url}")
        return safe_key(path[len(root) :])


def file_uri_path(uri: str) -> Path:
    """The local path of a ``file://`` URI (``file:///abs/path`` or ``file://localhost/abs/path``).

    Args:
        uri: the URI.

    Returns:
        The absolute path, percent-decoded.

    Raises:
        ConfigError: another host, a relative path, a query or a fragment.
    """
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise ConfigError(f"{uri!r} is not a local file:// URI (expected file:///absolute/path)")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise ConfigError(f"{uri!r}: a file:// URI needs an absolute path (file:///absolute/path)")
    return Path(path)
