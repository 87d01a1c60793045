"""The digest of a model's weights that goes into its jobs' keys: the keys change when the weights change.

Planning makes no network call of its own: a local file is hashed here, and the digest of an ``s3://`` object
comes from a function the caller passes (the CLI passes :func:`farm.artifacts.object_digest`, a HEAD request).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from farm.errors import ConfigError, Problem

RemoteDigest = Callable[[str], str]
"""``s3://bucket/key`` -> its digest (sha256 metadata or ``etag:<ETag>``); raises ConfigError when it is missing."""

_CHUNK_BYTES = 1 << 20


def weights_digest(weights: str, path: str, problems: list[Problem], remote: RemoteDigest | None) -> str | None:
    """The digest of one weights file, or None with a problem appended when it can't be had.

    Args:
        weights: a local path, ``file://`` URI or ``s3://`` URI.
        path: where the spec names it, for messages (``models[0].weights``).
        problems: where a missing file or object is reported.
        remote: the digest of an ``s3://`` object; None refuses S3 weights (planning stays offline).

    Returns:
        The hex sha256 of a local file, whatever ``remote`` answers for S3; None when a problem was appended.
    """
    if weights.startswith("s3://"):
        if remote is None:
            problems.append(Problem(path, f"{weights} is in S3, and this plan was made without reaching S3"))
            return None
        try:
            return remote(weights)
        except ConfigError as e:
            problems.extend(Problem(path, p.message) for p in e.problems)
            return None
    local = Path(weights.removeprefix("file://")).expanduser()
    if not local.is_file():
        problems.append(Problem(path, f"{weights} does not exist"))
        return None
    h = hashlib.sha256()
    with open(local, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()
