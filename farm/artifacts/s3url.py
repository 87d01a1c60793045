"""Parsing ``s3://bucket[/key]`` URLs. Standard library only, so that checking a URL never imports boto3."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from farm.artifacts.base import safe_key
from farm.errors import ArtifactError, ConfigError

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket[/key-or-prefix]`` into (bucket, key), checking both.

    Args:
        url: the URL.

    Returns:
        (bucket, key); the key is "" when absent and otherwise passes :func:`safe_key`.

    Raises:
        ConfigError: not an ``s3://`` URL, a bad bucket name, credentials or a query in the URL, or an
            unsafe key. The URL is echoed only when it cannot hold credentials.
    """
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ConfigError(f"{url!r} is not an s3:// URL")
    if "@" in parts.netloc:
        raise ConfigError(
            "an s3:// URL must not hold credentials; use the AWS credential chain (AWS_ACCESS_KEY_ID ...)"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"s3 URL {url!r} must not have a query or fragment")
    bucket = parts.netloc
    if not _BUCKET.match(bucket) or ".." in bucket or _IP_ADDRESS.match(bucket):
        raise ConfigError(f"s3 URL {url!r}: {bucket!r} is not a valid bucket name (3-63 of a-z 0-9 . -)")
    # One leading "/" separates the bucket, one trailing "/" may end a prefix; any other empty segment
    # ("s3://bucket//x", "s3://bucket/a//b") is refused by safe_key, as are "." and "..".
    key = parts.path.removeprefix("/")
    key = key[:-1] if key.endswith("/") else key
    if key:
        try:
            key = safe_key(key)
        except ArtifactError as e:
            raise ConfigError(f"s3 URL {url!r}: {e}") from None
    return bucket, key
