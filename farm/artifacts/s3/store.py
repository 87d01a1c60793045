"""The S3 artifact store: upload with verification, verified download, listing, deletion.

How uploads are verified (the multipart problem). S3 offers a SHA256 "full object" checksum only for
single-request uploads; for a multipart upload its SHA256 is *composite*: the sha256 of the concatenated
binary sha256 digests of the parts (AWS shows it with a ``-<parts>`` suffix). So :meth:`S3Store.put_file`
does this:

1. One local pass over the file computes its whole-file sha256 and, when the file is at or above the
   multipart threshold, the sha256 of every part, cut exactly as s3transfer will cut them (same chunk size,
   adjusted by s3transfer's own ``ChunksizeAdjuster``), and from those the composite checksum.
2. The upload (s3transfer: one PutObject, or a multipart upload with parallel parts) is sent with
   ``ChecksumAlgorithm='SHA256'``: botocore hashes every request body and S3 rejects any part whose bytes
   arrive different from what was hashed. The whole-file sha256 goes in the object's metadata (``sha256``),
   where any later reader finds it.
3. ``HeadObject`` (``ChecksumMode=ENABLED``) must then show the local size, the local sha256 in the
   metadata, and a stored SHA256 checksum equal to the one computed in step 1 (the whole-file digest for
   a single PUT, the composite for multipart). The stored checksum is computed by the server from the bytes
   it holds, and the expected one from the bytes that were hashed locally, so a match proves the object is
   exactly the file that was hashed, even if the file changed between hashing and upload, without
   downloading it again. Anything else deletes the object and raises :class:`~farm.errors.ArtifactError`.

   A server that stores no checksum (older MinIO, some S3 clones) leaves only the per-request checks of
   step 2, the size and the metadata; a warning is logged once per store.

Downloads go to a temp file beside the destination, are hashed and compared with the sha256 given (or the
one in the object's metadata), then renamed into place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from botocore import exceptions as boto_errors
from s3transfer.exceptions import RetriesExceededError
from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.utils import ChunksizeAdjuster

from farm.artifacts.base import ArtifactMissing, ArtifactStore, ListedObject, StoredObject, safe_key
from farm.artifacts.files import b64_digest, check_sha256, multipart_digests, sha256_file
from farm.artifacts.s3.client import MISSING_CODES, make_client, public_endpoint, translate
from farm.artifacts.s3url import parse_s3_url
from farm.errors import ArtifactError, FarmError

log = logging.getLogger(__name__)

MiB = 1 << 20


class S3Store(ArtifactStore):
    """Objects under ``s3://bucket/prefix``; key ``a/b`` is the object ``prefix/a/b``.

    The boto3 client is created on first use (standard credential chain and endpoint settings), with
    standard-mode retries and connect / read timeouts. See the module docstring for how uploads are verified.

    Args:
        bucket: the bucket name.
        prefix: key prefix inside the bucket ("" for the whole bucket).
        max_attempts: attempts per request, retries included (botocore standard mode, backoff with jitter).
        connect_timeout_s: seconds to wait for a connection.
        read_timeout_s: seconds to wait for a response's bytes.
        multipart_threshold_bytes: files this big or bigger go up in parts.
        multipart_chunksize_bytes: part size (at least 5 MiB; grown by s3transfer to stay within 10,000 parts).
        max_concurrency: parallel part uploads / ranged downloads per transfer.

    Raises:
        ConfigError: a bad bucket name or prefix.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        max_attempts: int = 4,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        multipart_threshold_bytes: int = 8 * MiB,
        multipart_chunksize_bytes: int = 8 * MiB,
        max_concurrency: int = 8,
    ):
        prefix = prefix.strip("/")
        self.bucket, self.prefix = parse_s3_url(f"s3://{bucket}/{prefix}")
        self._max_attempts = max_attempts
        self._timeouts_s = (connect_timeout_s, read_timeout_s)
        self._transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=multipart_chunksize_bytes,
            max_request_concurrency=max_concurrency,
        )
        self._lock = threading.Lock()
        self._s3: Any = None
        self._bucket_seen = False
        self._warned_no_checksum = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3Store:
        """The store for ``s3://bucket[/prefix]``.

        Args:
            url: the store's URL.
            **options: passed to the constructor.

        Returns:
            The store.

        Raises:
            ConfigError: a malformed URL.
        """
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, **options)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    # -- client and errors ---------------------------------------------------------------------------------

    @property
    def _client(self) -> Any:
        with self._lock:
            if self._s3 is None:
                self._s3 = make_client(self._max_attempts, self._timeouts_s)
            return self._s3

    @property
    def endpoint(self) -> str:
        """The endpoint in use, without credentials or path (for messages)."""
        return public_endpoint(self._client.meta.endpoint_url)

    def _translate(self, e: Exception, action: str) -> FarmError:
        return translate(e, action, bucket=self.bucket, url=self.url, endpoint=self.endpoint)

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (boto_errors.BotoCoreError, boto_errors.ClientError, RetriesExceededError) as e:
            raise self._translate(e, action) from e

    @contextlib.contextmanager
    def _transfer(self, action: str) -> Iterator[TransferManager]:
        with self._errors(action), TransferManager(self._client, self._transfer_config) as manager:
            yield manager

    def _head(self, full_key: str) -> dict[str, Any]:
        """HeadObject; ArtifactMissing (after telling a missing key from a missing bucket) when absent."""
        uri = f"s3://{self.bucket}/{full_key}"
        try:
            with self._errors(f"HEAD {uri}"):
                head: dict[str, Any] = self._client.head_object(
                    Bucket=self.bucket, Key=full_key, ChecksumMode="ENABLED"
                )
        except ArtifactError as e:
            cause = e.__cause__
            if isinstance(cause, boto_errors.ClientError) and cause.response["Error"].get("Code") in MISSING_CODES:
                self._check_bucket()
                raise ArtifactMissing(f"{uri} does not exist") from None
            raise
        self._bucket_seen = True
        return head

    def _check_bucket(self) -> None:
        # HEAD answers 404 with no body for a missing key and a missing bucket alike.
        if self._bucket_seen:
            return
        try:
            with self._errors(f"HEAD s3://{self.bucket}"):
                self._client.head_bucket(Bucket=self.bucket)
        except ArtifactError as e:
            cause = e.__cause__
            if isinstance(cause, boto_errors.ClientError) and cause.response["Error"].get("Code") in MISSING_CODES:
                raise ArtifactError(f"S3 bucket '{self.bucket}' does not exist (endpoint {self.endpoint})") from None
            raise
        self._bucket_seen = True

    def _full(self, key: str) -> str:
        key = safe_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- the interface -------------------------------------------------------------------------------------

    def put_file(self, local_path: Path, key: str, *, sha256: str | None = None) -> StoredObject:
        """Upload a file (multipart when big) and verify the stored object; see the module docstring.

        See :meth:`ArtifactStore.put_file`.
        """
        key = safe_key(key)
        full, uri = self._full(key), self.uri_for(key)
        src = Path(local_path)
        if not src.is_file():
            raise ArtifactError(f"cannot upload {src}: not a file")
        size = src.stat().st_size
        config = self._transfer_config
        multipart = size >= config.multipart_threshold
        part_bytes = ChunksizeAdjuster().adjust_chunksize(config.multipart_chunksize, size) if multipart else None
        digest, composite, n_parts = multipart_digests(src, part_bytes)
        if sha256 is not None and check_sha256(sha256) != digest:
            raise ArtifactError(f"{src}: sha256 is {digest}, expected {check_sha256(sha256)}; not uploaded")

        extra = {"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": digest}}
        with self._transfer(f"upload to {uri}") as manager:
            manager.upload(str(src), self.bucket, full, extra_args=extra).result()

        head = self._head(full)
        problems = []
        if head.get("ContentLength") != size:
            problems.append(f"size {head.get('ContentLength')} != {size}")
        if head.get("Metadata", {}).get("sha256") != digest:
            problems.append("metadata sha256 differs")
        stored = head.get("ChecksumSHA256")
        if stored:
            value, _, parts_suffix = str(stored).partition("-")
            expected = composite if multipart else b64_digest(bytes.fromhex(digest))
            if value != expected or (parts_suffix and parts_suffix != str(n_parts)):
                problems.append(f"stored SHA256 checksum {stored} != expected {expected}")
        elif not self._warned_no_checksum:
            self._warned_no_checksum = True
            log.warning("S3 at %s stores no SHA256 checksums; uploads are verified by size and metadata", self.endpoint)
        if problems:
            with contextlib.suppress(FarmError):
                with self._errors(f"delete {uri}"):
                    self._client.delete_object(Bucket=self.bucket, Key=full)
            raise ArtifactError(f"upload to {uri} failed verification ({'; '.join(problems)}); object deleted")
        return StoredObject(key=key, uri=uri, sha256=digest, size_bytes=size)

    def get_file(self, key: str, dest_path: Path, *, sha256: str | None = None) -> Path:
        """Download an object and verify it against ``sha256``, else against its metadata ``sha256``.

        See :meth:`ArtifactStore.get_file`.
        """
        key = safe_key(key)
        full, uri = self._full(key), self.uri_for(key)
        expected = check_sha256(sha256) if sha256 is not None else None
        head = self._head(full)
        if expected is None:
            with contextlib.suppress(ArtifactError):
                expected = check_sha256(head.get("Metadata", {}).get("sha256", ""))
        dest = Path(dest_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f, self._transfer(f"download of {uri}") as manager:
                manager.download(self.bucket, full, f).result()
            size = tmp.stat().st_size
            if size != head.get("ContentLength"):
                raise ArtifactError(
                    f"{uri} failed verification: got {size} bytes, expected {head.get('ContentLength')}"
                )
            if expected is not None:
                digest = sha256_file(tmp)
                if digest != expected:
                    raise ArtifactError(f"{uri} failed verification: sha256 is {digest}, expected {expected}")
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest

    def exists(self, key: str) -> bool:
        """See :meth:`ArtifactStore.exists`."""
        try:
            self._head(self._full(key))
        except ArtifactMissing:
            return False
        return True

    def stored_sha256(self, key: str) -> str | None:
        """The sha256 the object's metadata records (set by :meth:`put_file`), or None.

        Args:
            key: the object's key.

        Returns:
            Its hex sha256, or None for an object uploaded by other means.

        Raises:
            ArtifactMissing: no such key.
            ArtifactError: unsafe key, missing bucket, refused credentials.
            TransientError: the endpoint could not be reached.
        """
        value = self._head(self._full(key)).get("Metadata", {}).get("sha256", "")
        try:
            return check_sha256(value)
        except ArtifactError:
            return None

    def content_digest(self, key: str) -> str:
        """A digest that changes when the object's bytes change, without downloading it.

        Args:
            key: the object's key.

        Returns:
            The hex sha256 from the object's metadata, or ``etag:<ETag>`` for an object uploaded by other
            means (an ETag is an MD5 only for single-part uploads, but it changes with the content).

        Raises:
            ArtifactMissing: no such key.
            ArtifactError: unsafe key, missing bucket, refused credentials.
            TransientError: the endpoint could not be reached.
        """
        head = self._head(self._full(key))
        try:
            return check_sha256(head.get("Metadata", {}).get("sha256", ""))
        except ArtifactError:
            return "etag:" + str(head.get("ETag", "")).strip('"')

    def delete_prefix(self, prefix: str) -> None:
        """See :meth:`ArtifactStore.delete_prefix`."""
        if not prefix:
            raise ArtifactError("refusing to delete an empty prefix (the whole store)")
        full = self._full(prefix)
        action = f"delete of {self.uri_for(prefix)}"
        with self._errors(action):
            self._delete_batch([full], action)
            # Each page holds at most 1000 keys, the most one DeleteObjects takes.
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full + "/")
            for page in pages:
                self._delete_batch([obj["Key"] for obj in page.get("Contents", [])], action)

    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        """See :meth:`ArtifactStore.list_objects`. Pages through ListObjectsV2 (1,000 keys a request); an object
        whose key is not a safe key (written by other means) is skipped with a warning."""
        if not prefix:
            raise ArtifactError("refusing to list an empty prefix; name one (for example 'jobs')")
        full = self._full(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        with self._errors(f"listing of {self.uri_for(prefix)}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
            for page in pages:
                for obj in page.get("Contents", []):
                    name = str(obj["Key"])
                    if name != full and not name.startswith(full + "/"):
                        continue  # jobs/abc/... under the string prefix jobs/ab
                    try:
                        key = safe_key(name[len(root) :])
                    except ArtifactError as e:
                        log.warning("skipping s3://%s/%s: %s", self.bucket, name, e)
                        continue
                    yield ListedObject(
                        key=key, uri=self.uri_for(key), size_bytes=int(obj["Size"]), modified_at=obj["LastModified"]
                    )

    def _delete_batch(self, keys: list[str], action: str) -> None:
        if not keys:
            return
        response = self._client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
        )
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise ArtifactError(
                f"S3 {action} failed for {len(errors)} object(s), e.g. {first.get('Key')}: {first.get('Code')}"
            )

    def uri_for(self, key: str) -> str:
        """``s3://bucket/prefix/key`` (keys are not percent-encoded, as in the AWS CLI).

        See :meth:`ArtifactStore.uri_for`.
        """
        return f"s3://{self.bucket}/{self._full(key)}"

    def key_for(self, uri: str) -> str:
        """See :meth:`ArtifactStore.key_for`."""
        root = self.url + "/"
        if not isinstance(uri, str) or not uri.startswith(root):
            raise ArtifactError(f"{uri!r} is outside the store {self.url}")
        return safe_key(uri[len(root) :])
