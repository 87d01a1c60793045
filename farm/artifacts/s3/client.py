"""The boto3 client of the S3 store, and the translation of its errors into the farm's.

A missing bucket or refused credentials become :class:`~farm.errors.ArtifactError` (one line, no secrets), an
unreachable or overloaded endpoint :class:`~farm.errors.TransientError` (callers retry with backoff).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore import exceptions as boto_errors
from botocore.config import Config
from s3transfer.exceptions import RetriesExceededError

from farm.errors import ArtifactError, FarmError, TransientError

AWS_HOSTS = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")

# What the server says -> what the caller does about it.
AUTH_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "403",
        "Forbidden",
    }
)
TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling", "RequestLimitExceeded"}
)
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
CREDENTIAL_ERRORS = (
    boto_errors.NoCredentialsError,
    boto_errors.PartialCredentialsError,
    boto_errors.CredentialRetrievalError,
)
TRANSIENT_ERRORS = (
    boto_errors.EndpointConnectionError,  # ConnectTimeoutError and ProxyConnectionError are subclasses
    boto_errors.HTTPClientError,  # ReadTimeoutError, ConnectionClosedError, ResponseStreamingError
    boto_errors.IncompleteReadError,
    RetriesExceededError,  # s3transfer gave up re-reading a download stream
)


def public_endpoint(url: str | None) -> str:
    """The endpoint without any userinfo, path or query, for messages."""
    if not url:
        return "AWS S3"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


def make_client(max_attempts: int, timeouts_s: tuple[float, float]) -> Any:
    """A boto3 S3 client: standard-mode retries, connect / read timeouts, path addressing off AWS.

    Args:
        max_attempts: attempts per request, retries included.
        timeouts_s: (connect, read) seconds.

    Returns:
        The client (boto3's own configuration chain supplies credentials and endpoint).
    """
    session = boto3.session.Session()
    options: dict[str, Any] = {
        "retries": {"mode": "standard", "max_attempts": max_attempts},
        "connect_timeout": timeouts_s[0],
        "read_timeout": timeouts_s[1],
        # sha256 is checked against our own digests; botocore's check of a composite checksum
        # that a server returns without its "-N" suffix (moto does) would be a false alarm.
        "response_checksum_validation": "when_required",
        # MinIO and moto have no DNS name per bucket. On AWS itself (the endpoint is only known
        # once a client exists) the client is made again with boto3's default addressing.
        "s3": {"addressing_style": "path"},
    }
    client = session.client("s3", config=Config(**options))
    host = urlsplit(client.meta.endpoint_url).hostname or ""
    if host.endswith(AWS_HOSTS):
        del options["s3"]
        client = session.client("s3", config=Config(**options))
    return client


def translate(e: Exception, action: str, *, bucket: str, url: str, endpoint: str) -> FarmError:
    """The farm's error for an SDK error; no credentials or endpoint userinfo in its message.

    Args:
        e: what boto3, botocore or s3transfer raised.
        action: what was being done, for the message (``HEAD s3://b/k``).
        bucket: the store's bucket.
        url: the store's ``s3://bucket/prefix``.
        endpoint: the endpoint without credentials.

    Returns:
        TransientError for what passes by retrying, ArtifactError otherwise.
    """
    if isinstance(e, boto_errors.ClientError):
        error = e.response.get("Error", {})
        code = str(error.get("Code") or "")
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code == "NoSuchBucket":
            return ArtifactError(f"S3 bucket '{bucket}' does not exist (endpoint {endpoint})")
        if code in AUTH_CODES:
            return ArtifactError(f"S3 rejected the credentials for {url}: {code}")
        if code in TRANSIENT_CODES or status >= 500:
            return TransientError(f"S3 at {endpoint} is unavailable ({code or status}) during {action}")
        message = " ".join(str(error.get("Message") or "").split())[:200]
        return ArtifactError(f"S3 {action} failed: {code or status}{': ' + message if message else ''}")
    if isinstance(e, CREDENTIAL_ERRORS):
        return ArtifactError(f"S3 rejected the credentials for {url}: {type(e).__name__}")
    if isinstance(e, boto_errors.SSLError):  # a certificate problem does not pass by retrying
        return ArtifactError(f"TLS with S3 at {endpoint} failed during {action}")
    if isinstance(e, TRANSIENT_ERRORS):
        return TransientError(f"S3 at {endpoint} did not answer ({type(e).__name__}) during {action}")
    return ArtifactError(f"S3 {action} failed: {type(e).__name__}")
