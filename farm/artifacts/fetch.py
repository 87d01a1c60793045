"""fetch_uri: bring one file (model weights given as ``s3://`` or a path) into a content-addressed cache;
object_digest: a digest of such a file without fetching it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from farm.artifacts.base import ArtifactMissing
from farm.artifacts.files import copy_atomic, sha256_file
from farm.artifacts.local import file_uri_path
from farm.artifacts.s3url import parse_s3_url
from farm.errors import ConfigError

HASH_DIR_CHARS = 16
"""Cache directories are named by the first 16 hex digits of the file's sha256 (the full digest is checked)."""


def fetch_uri(uri: str, dest_dir: Path) -> Path:
    """Download ``s3://bucket/key`` or copy ``file:///path`` / a local path into ``dest_dir``'s cache.

    The file lands at ``dest_dir/<first 16 hex of its sha256>/<file name>``, written through a temp
    directory and an atomic rename, so readers never see a partial file and two URIs with the same bytes
    share one copy. For an S3 object uploaded by QuantFarm (its metadata holds its sha256) a cached copy is
    re-hashed and reused without a download; otherwise the object is downloaded and hashed.

    Args:
        uri: ``s3://bucket/key``, ``file:///absolute/path`` or a local path.
        dest_dir: the cache directory; created when missing.

    Returns:
        The local path of the verified copy.

    Raises:
        ConfigError: the object or file does not exist, or the URI has another form.
        ArtifactError: a missing bucket, refused credentials, or a download that failed verification.
        TransientError: the S3 endpoint could not be reached; retry later.
    """
    dest_dir = Path(dest_dir)
    if urlsplit(uri).scheme.lower() == "s3":
        return _fetch_s3(uri, dest_dir)
    src = _local_source(uri)
    with _staging(dest_dir) as staging:
        staged = staging / src.name
        digest, _ = copy_atomic(src, staged)
        return _place(staged, dest_dir, digest)


def object_digest(uri: str) -> str:
    """A digest of the file a weights URI names that changes when its bytes change.

    Args:
        uri: ``s3://bucket/key``, ``file:///absolute/path`` or a local path.

    Returns:
        The hex sha256 (of a local file, or from an S3 object's ``sha256`` metadata), or ``etag:<ETag>`` for
        an S3 object uploaded without that metadata. Nothing is downloaded.

    Raises:
        ConfigError: the object or file does not exist, or the URI has another form.
        ArtifactError: a missing bucket or refused credentials.
        TransientError: the S3 endpoint could not be reached; retry later.
    """
    if urlsplit(uri).scheme.lower() == "s3":
        from farm.artifacts.s3 import S3Store

        bucket, key = parse_s3_url(uri)
        if not key:
            raise ConfigError(f"weights {uri} names a bucket, not an object")
        try:
            return S3Store(bucket).content_digest(key)
        except ArtifactMissing:
            raise ConfigError(f"weights {uri} does not exist") from None
    src = _local_source(uri)
    return sha256_file(src)


def _local_source(uri: str) -> Path:
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "file":
        src = file_uri_path(uri)
    elif not scheme or (len(scheme) == 1 and uri[1:2] == ":"):
        src = Path(uri).expanduser()
    else:
        raise ConfigError(f"weights {uri!r}: unsupported scheme {scheme!r}; expected s3://bucket/key or a path")
    if not src.is_file():
        raise ConfigError(f"weights {uri} does not exist")
    return src


def _fetch_s3(uri: str, dest_dir: Path) -> Path:
    from farm.artifacts.s3 import S3Store

    bucket, key = parse_s3_url(uri)
    if not key:
        raise ConfigError(f"weights {uri} names a bucket, not an object")
    store = S3Store(bucket)
    name = key.rsplit("/", 1)[-1]
    try:
        known = store.stored_sha256(key)
        if known:
            cached = dest_dir / known[:HASH_DIR_CHARS] / name
            if cached.is_file() and sha256_file(cached) == known:
                return cached
        with _staging(dest_dir) as staging:
            staged = store.get_file(key, staging / name, sha256=known)
            return _place(staged, dest_dir, known or sha256_file(staged))
    except ArtifactMissing:
        raise ConfigError(f"weights {uri} does not exist") from None


@contextlib.contextmanager
def _staging(dest_dir: Path) -> Iterator[Path]:
    # Inside dest_dir so that the final rename stays on one filesystem and is atomic.
    dest_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest_dir, prefix=".fetch-"))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _place(staged: Path, dest_dir: Path, digest: str) -> Path:
    final = dest_dir / digest[:HASH_DIR_CHARS] / staged.name
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, final)
    return final
