"""An artifact store in a local directory (or a shared filesystem mounted on every worker)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlsplit

from farm.artifacts.base import ArtifactMissing, ArtifactStore, ListedObject, StoredObject, safe_key
from farm.artifacts.files import copy_atomic
from farm.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)


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
        self._prune(path.parent)

    def _prune(self, directory: Path) -> None:
        """Remove ``directory`` and its parents while they are empty, up to (not including) the root: an object
        store has no directories, and a deleted attempt must not leave ``jobs/<key>/<attempt>/`` behind."""
        while directory != self.root and directory.is_relative_to(self.root) and not directory.is_symlink():
            try:
                directory.rmdir()
            except OSError:  # not empty (another object, a concurrent write), or gone already
                return
            directory = directory.parent

    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        """See :meth:`ArtifactStore.list_objects`. Symlinks are skipped, never followed; a writer's temp file
        (``.<name>.<random>.part``) is listed like any other file, so a crashed writer's leftovers can be found.
        """
        if not prefix:
            raise ArtifactError("refusing to list an empty prefix; name one (for example 'jobs')")
        prefix = safe_key(prefix)
        top = self.root.joinpath(*prefix.split("/"))
        if not top.parent.resolve().is_relative_to(self.root):
            raise ArtifactError(f"prefix {prefix!r} resolves outside the store {self.url}")
        if top.is_symlink() or not top.exists():
            return
        if top.is_file():
            yield self._listed(prefix, top)
            return

        def fail(e: OSError) -> None:
            raise ArtifactError(f"cannot list {self.uri_for(prefix)}: {e.strerror or e}") from e

        for dirpath, dirnames, filenames in os.walk(top, onerror=fail):  # os.walk never follows symlinked dirs
            here = Path(dirpath)
            dirnames.sort()
            for name in sorted(filenames):
                path = here / name
                if path.is_symlink():
                    continue
                rel = path.relative_to(self.root).as_posix()
                try:
                    yield self._listed(safe_key(rel), path)
                except FileNotFoundError:  # deleted since the walk saw it
                    continue
                except ArtifactError as e:  # a file no key can name (a control character): not ours to touch
                    log.warning("skipping %s: %s", path, e)

    def _listed(self, key: str, path: Path) -> ListedObject:
        st = path.stat()
        modified = datetime.fromtimestamp(st.st_mtime, timezone.utc)
        return ListedObject(key=key, uri=self.uri_for(key), size_bytes=st.st_size, modified_at=modified)

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
