"""An artifact store in an S3 bucket (AWS S3, MinIO, moto). The only package that imports boto3.

Configuration is boto3's own, so nothing secret ever passes through QuantFarm:

- credentials: the standard chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
  ``AWS_PROFILE`` and the shared files, an instance or container role). They are never stored on the
  store, logged, or put in an error message; :attr:`S3Store.url` is only ``s3://bucket/prefix``.
- endpoint: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (or ``endpoint_url`` in the shared config), which
  boto3 reads itself. When the endpoint is not AWS (MinIO, moto), path-style addressing is used
  (``http://host:9000/bucket/key``), since such servers rarely have a DNS name per bucket.

Errors are translated in :mod:`farm.artifacts.s3.client` and never leak upward: a missing bucket or refused
credentials become :class:`~farm.errors.ArtifactError` (one line, no secrets), an unreachable or overloaded
endpoint :class:`~farm.errors.TransientError` (callers retry with backoff). How uploads are verified:
:mod:`farm.artifacts.s3.store`.
"""

from farm.artifacts.s3.store import MiB, S3Store

__all__ = ["MiB", "S3Store"]
