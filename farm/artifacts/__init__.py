"""Artifact stores: where the bytes of models, manifests and references live (a directory, or S3 / MinIO).

``open_store()`` picks the store from ``FARM_ARTIFACTS_URL``; ``fetch_uri()`` brings one file (model weights
given as ``s3://`` or a path) into a local content-addressed cache. boto3 is imported only when an S3 URL
is used, and only by :mod:`farm.artifacts.s3`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from farm.artifacts.base import ArtifactMissing, ArtifactStore, StoredObject, safe_key
from farm.artifacts.fetch import fetch_uri, object_digest
from farm.artifacts.local import LocalStore, file_uri_path
from farm.errors import ConfigError
from farm.settings import Settings

__all__ = [
    "ArtifactMissing",
    "ArtifactStore",
    "LocalStore",
    "StoredObject",
    "check_store_url",
    "fetch_uri",
    "file_uri_path",
    "object_digest",
    "open_store",
    "safe_key",
]

ACCEPTED_FORMS = "a directory path, file:///absolute/path, or s3://bucket[/prefix]"


def open_store(url: str | None = None) -> ArtifactStore:
    """The artifact store a URL names.

    Args:
        url: a directory path, ``file:///absolute/path`` or ``s3://bucket[/prefix]``; None reads
            ``FARM_ARTIFACTS_URL`` (default ``$FARM_HOME/artifacts``).

    Returns:
        A :class:`LocalStore` or an :class:`~farm.artifacts.s3.S3Store` (its client is created on first use).

    Raises:
        ConfigError: any other form of URL, or a malformed one.
    """
    if url is None:
        url = Settings.from_env().artifacts_url
    url = url.strip()
    if not url:
        raise ConfigError(f"the artifact store URL is empty; expected {ACCEPTED_FORMS}")
    scheme = urlsplit(url).scheme.lower()
    if scheme == "s3":
        from farm.artifacts.s3 import S3Store

        return S3Store.from_url(url)
    if scheme == "file":
        return LocalStore(file_uri_path(url))
    if not scheme or (len(scheme) == 1 and url[1:2] == ":"):  # a path (a Windows drive letter is no scheme)
        return LocalStore(Path(url))
    raise ConfigError(f"unsupported artifact store URL scheme {scheme!r}; expected {ACCEPTED_FORMS}")


def check_store_url(url: str | None = None) -> str:
    """Refuse a malformed artifact store URL at start-up, connecting to nothing and importing no boto3.

    A command that runs jobs (``sweep run``, ``demo``, ``farm worker``) calls this before it writes anything:
    a bad FARM_ARTIFACTS_URL found only when the first job uploads would fail every job, over and over.

    Args:
        url: the URL; None reads ``FARM_ARTIFACTS_URL`` (default ``$FARM_HOME/artifacts``).

    Returns:
        The URL checked.

    Raises:
        ConfigError: an unknown scheme, or an ``s3://`` URL with an invalid bucket name, credentials, a query,
            or an empty, ``.`` or ``..`` segment in its prefix. The message starts with ``FARM_ARTIFACTS_URL``.
    """
    if url is None:
        url = Settings.from_env().artifacts_url
    try:
        if urlsplit(url.strip()).scheme.lower() == "s3":
            from farm.artifacts.s3url import parse_s3_url

            parse_s3_url(url.strip())
        else:
            open_store(url)
    except ConfigError as e:
        raise ConfigError(e.problems, source="FARM_ARTIFACTS_URL") from None
    return url
