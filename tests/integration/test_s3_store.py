"""S3Store against a real S3 HTTP endpoint: moto's server mode (fixtures in conftest.py).

Everything goes over HTTP through boto3's standard configuration (AWS_ENDPOINT_URL and the credential
environment variables), as against MinIO in production.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import logging
import os
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farm.artifacts import fetch_uri, object_digest, open_store
from farm.artifacts.base import ArtifactMissing
from farm.artifacts.s3 import S3Store
from farm.errors import ArtifactError, ConfigError, TransientError

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _keys(client: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def _secret() -> str:
    return os.environ["AWS_SECRET_ACCESS_KEY"]


@contextlib.contextmanager
def _moto_checks_credentials(endpoint: str) -> Iterator[None]:
    """Turn on moto's IAM authentication (server-wide) for the block, through its /moto-api/reset-auth."""

    def reset(count: str) -> None:
        request = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(request, timeout=10).close()

    reset("0")
    try:
        yield
    finally:
        reset("inf")


@contextlib.contextmanager
def _always_503() -> Iterator[str]:
    """An HTTP endpoint that answers every request with S3's 503 SlowDown."""
    body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_round_trip_verified_with_sha256(s3_bucket: str, s3_client: Any, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    store = open_store(f"s3://{s3_bucket}/farm")

    obj = store.put_file(_write(tmp_path / "model.pt", data), "jobs/k1/model.pt")

    assert (obj.key, obj.sha256, obj.size_bytes) == ("jobs/k1/model.pt", _sha(data), len(data))
    assert obj.uri == f"s3://{s3_bucket}/farm/jobs/k1/model.pt"
    assert store.key_for(obj.uri) == "jobs/k1/model.pt"
    head = s3_client.head_object(Bucket=s3_bucket, Key="farm/jobs/k1/model.pt", ChecksumMode="ENABLED")
    assert head["Metadata"]["sha256"] == _sha(data)
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert store.exists("jobs/k1/model.pt") and not store.exists("jobs/k1/other.pt")

    out = store.get_file("jobs/k1/model.pt", tmp_path / "out" / "model.pt", sha256=obj.sha256)
    assert out.read_bytes() == data
    assert [p.name for p in out.parent.iterdir()] == ["model.pt"]  # no temp file left beside it


def test_put_dir_uploads_every_regular_file_sorted(s3_bucket: str, s3_client: Any, tmp_path: Path) -> None:
    src = tmp_path / "artifact"
    _write(src / "model.pt", b"model")
    _write(src / "manifest.json", b"{}")
    _write(src / "extra" / "notes.txt", b"n")
    secret = _write(tmp_path / "outside" / "secret", b"secret")
    (src / "link").symlink_to(secret)
    store = S3Store(s3_bucket, "farm")

    objs = store.put_dir(src, "jobs/k2")

    expected = ["jobs/k2/extra/notes.txt", "jobs/k2/manifest.json", "jobs/k2/model.pt"]
    assert [o.key for o in objs] == expected
    assert _keys(s3_client, s3_bucket) == [f"farm/{k}" for k in expected]
    assert [o.sha256 for o in objs] == [_sha(b"n"), _sha(b"{}"), _sha(b"model")]


def test_large_multipart_upload_is_verified_against_the_composite_checksum(
    s3_bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    data = os.urandom(20 * MiB + 123)
    store = S3Store(s3_bucket, "farm", multipart_threshold_bytes=5 * MiB, multipart_chunksize_bytes=5 * MiB)

    obj = store.put_file(_write(tmp_path / "big.pt", data), "jobs/big/model.pt", sha256=_sha(data))

    head = s3_client.head_object(Bucket=s3_bucket, Key="farm/jobs/big/model.pt", ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-5")  # 4 full parts of 5 MiB and a short fifth: really multipart
    parts = [hashlib.sha256(data[i : i + 5 * MiB]).digest() for i in range(0, len(data), 5 * MiB)]
    composite = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    assert head["ChecksumSHA256"].split("-")[0] == composite
    assert head["Metadata"]["sha256"] == obj.sha256 == _sha(data)
    out = store.get_file("jobs/big/model.pt", tmp_path / "big.out", sha256=obj.sha256)
    assert out.stat().st_size == len(data) and _sha(out.read_bytes()) == obj.sha256


@pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["single-put", "multipart"])
def test_a_file_changed_during_upload_fails_verification_and_is_deleted(
    s3_bucket: str, s3_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    import farm.artifacts.s3.store as s3_module

    src = _write(tmp_path / "model.pt", os.urandom(size))
    hashed = s3_module.multipart_digests

    def hash_then_change(path: Path, part_bytes: int | None) -> tuple[str, str, int]:
        result = hashed(path, part_bytes)
        with open(path, "r+b") as f:  # same size, one byte different: only the stored checksum can tell
            first = f.read(1)
            f.seek(0)
            f.write(bytes([first[0] ^ 0xFF]))
        return result

    monkeypatch.setattr(s3_module, "multipart_digests", hash_then_change)
    store = S3Store(s3_bucket, "farm", multipart_threshold_bytes=5 * MiB, multipart_chunksize_bytes=5 * MiB)

    with pytest.raises(ArtifactError, match="failed verification.*checksum"):
        store.put_file(src, "jobs/k/model.pt")

    assert _keys(s3_client, s3_bucket) == []


def test_corrupted_object_is_refused_on_download(s3_bucket: str, s3_client: Any, tmp_path: Path) -> None:
    store = S3Store(s3_bucket, "farm")
    obj = store.put_file(_write(tmp_path / "m.pt", b"good bytes"), "jobs/k/model.pt")
    dest = _write(tmp_path / "dest" / "model.pt", b"previous")

    # Overwritten behind the store's back, even keeping the metadata: the bytes no longer match.
    s3_client.put_object(
        Bucket=s3_bucket, Key="farm/jobs/k/model.pt", Body=b"evil bytes", Metadata={"sha256": obj.sha256}
    )
    with pytest.raises(ArtifactError, match="failed verification"):
        store.get_file("jobs/k/model.pt", dest, sha256=obj.sha256)
    with pytest.raises(ArtifactError, match="failed verification"):
        store.get_file("jobs/k/model.pt", dest)  # checked against the metadata's sha256

    assert dest.read_bytes() == b"previous"
    assert [p.name for p in dest.parent.iterdir()] == ["model.pt"]


def test_missing_key_and_missing_bucket(s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(ArtifactMissing, match="does not exist"):
        S3Store(s3_bucket, "farm").get_file("jobs/none/model.pt", tmp_path / "x")

    store = S3Store("farm-no-such-bucket", "farm")
    src = _write(tmp_path / "m.pt", b"m")
    for attempt in (lambda: store.put_file(src, "a"), lambda: store.exists("a"), lambda: store.get_file("a", src)):
        with pytest.raises(ArtifactError) as info:
            attempt()
        assert not isinstance(info.value, ArtifactMissing)
        assert "S3 bucket 'farm-no-such-bucket' does not exist (endpoint http://127.0.0.1:" in str(info.value)


def test_rejected_credentials_are_one_line_without_secrets(
    s3_bucket: str, s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    worker = boto3.session.Session().client("iam").create_user(UserName=f"w-{s3_bucket}")["User"]["UserName"]
    real_key = boto3.session.Session().client("iam").create_access_key(UserName=worker)["AccessKey"]
    src = _write(tmp_path / "m.pt", b"m")
    cases = [
        (os.environ["AWS_ACCESS_KEY_ID"], _secret(), "InvalidAccessKeyId"),  # unknown key id
        (real_key["AccessKeyId"], "a-wrong-secret-that-must-not-leak-42", "SignatureDoesNotMatch"),
        (real_key["AccessKeyId"], real_key["SecretAccessKey"], "AccessDenied"),  # valid, but no policy allows it
    ]
    with _moto_checks_credentials(s3_env):
        for key_id, secret, code in cases:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
            store = S3Store(s3_bucket, "farm", max_attempts=1)
            with pytest.raises(ArtifactError) as info:
                store.put_file(src, "jobs/k/model.pt")
            message = str(info.value)
            assert message == f"S3 rejected the credentials for s3://{s3_bucket}/farm: {code}"
            assert secret not in message and "\n" not in message
            with pytest.raises(ArtifactError, match="S3 rejected the credentials"):
                store.exists("jobs/k/model.pt")


def test_no_credentials_at_all(s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ArtifactError) as info:
        S3Store(s3_bucket, "farm", max_attempts=1).put_file(_write(tmp_path / "m", b"m"), "k")
    assert str(info.value) == f"S3 rejected the credentials for s3://{s3_bucket}/farm: NoCredentialsError"


def test_unreachable_endpoint_is_transient(s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    store = S3Store("farm-bucket", "farm", max_attempts=2, connect_timeout_s=2)
    src = _write(tmp_path / "m", b"m")
    for attempt in (lambda: store.put_file(src, "k"), lambda: store.exists("k"), lambda: store.get_file("k", src)):
        with pytest.raises(TransientError, match="did not answer.*EndpointConnectionError"):
            attempt()
    assert src.read_bytes() == b"m"


def test_overloaded_endpoint_is_transient(s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _always_503() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        store = S3Store("farm-bucket", "farm", max_attempts=1)
        with pytest.raises(TransientError, match=r"unavailable \(SlowDown\)"):
            store.put_file(_write(tmp_path / "m", b"m"), "k")
        with pytest.raises(TransientError, match=r"unavailable \(503\)"):
            store.exists("k")


def test_escaping_keys_are_rejected_and_percent_stays_literal(s3_bucket: str, s3_client: Any, tmp_path: Path) -> None:
    store = S3Store(s3_bucket, "farm")
    src = _write(tmp_path / "m", b"m")
    for key in ["../x", "/etc/passwd", "a/../../b", "a//b", "a\\b", "", "a/./b", "a\x00b"]:
        with pytest.raises(ArtifactError):
            store.put_file(src, key)
        with pytest.raises(ArtifactError):
            store.get_file(key, tmp_path / "out")
    with pytest.raises(ArtifactError):
        store.key_for(f"s3://{s3_bucket}/farm/../other/x")
    with pytest.raises(ArtifactError):
        store.key_for(f"s3://{s3_bucket}/farmer/x")  # a sibling prefix is outside the store
    with pytest.raises(ArtifactError, match="empty prefix"):
        store.delete_prefix("")

    obj = store.put_file(src, "%2e%2e/x")
    assert _keys(s3_client, s3_bucket) == ["farm/%2e%2e/x"]
    assert store.key_for(obj.uri) == "%2e%2e/x"


def test_delete_prefix_deletes_a_path_not_a_string_prefix(s3_bucket: str, s3_client: Any, tmp_path: Path) -> None:
    store = S3Store(s3_bucket, "farm")
    src = _write(tmp_path / "m", b"m")
    for key in ["jobs/ab", "jobs/ab/model.pt", "jobs/ab/x/y", "jobs/abc/model.pt"]:
        store.put_file(src, key)

    store.delete_prefix("jobs/ab")

    assert _keys(s3_client, s3_bucket) == ["farm/jobs/abc/model.pt"]
    store.delete_prefix("jobs/never-there")


def test_list_objects_lists_a_path_with_sizes_and_times(s3_bucket: str, s3_client: Any, tmp_path: Path) -> None:
    import time

    store = S3Store(s3_bucket, "farm")
    for key, size in [("jobs/ab/model.pt", 3), ("jobs/ab/x/y", 5), ("jobs/abc/model.pt", 7), ("other/z", 1)]:
        store.put_file(_write(tmp_path / "f", b"b" * size), key)
    s3_client.put_object(Bucket=s3_bucket, Key="farm/jobs/ab//odd", Body=b"?")  # no safe key names it: skipped

    listed = sorted(store.list_objects("jobs/ab"), key=lambda o: o.key)
    assert [(o.key, o.size_bytes) for o in listed] == [("jobs/ab/model.pt", 3), ("jobs/ab/x/y", 5)]
    assert listed[0].uri == f"s3://{s3_bucket}/farm/jobs/ab/model.pt"
    assert abs(listed[0].modified_at.timestamp() - time.time()) < 300
    assert {o.key for o in store.list_objects("jobs")} == {"jobs/ab/model.pt", "jobs/ab/x/y", "jobs/abc/model.pt"}
    assert list(store.list_objects("jobs/never")) == []
    with pytest.raises(ArtifactError):
        list(store.list_objects(""))
    with pytest.raises(ArtifactError, match="does not exist"):
        list(S3Store(f"{s3_bucket}-missing", "farm").list_objects("jobs"))


def test_fetch_uri_of_s3_objects(s3_bucket: str, s3_client: Any, tmp_path: Path) -> None:
    data = os.urandom(5000)
    obj = S3Store(s3_bucket, "weights").put_file(_write(tmp_path / "w.pt", data), "resnet/w.pt")
    cache = tmp_path / "cache"

    path = fetch_uri(obj.uri, cache)
    assert path == cache / obj.sha256[:16] / "w.pt" and path.read_bytes() == data
    assert fetch_uri(obj.uri, cache) == path  # a cache hit
    assert object_digest(obj.uri) == obj.sha256

    # An object uploaded by someone else (no sha256 metadata) is downloaded and hashed.
    s3_client.put_object(Bucket=s3_bucket, Key="public/other.pt", Body=b"other")
    other = fetch_uri(f"s3://{s3_bucket}/public/other.pt", cache)
    assert other == cache / _sha(b"other")[:16] / "other.pt" and other.read_bytes() == b"other"
    assert object_digest(f"s3://{s3_bucket}/public/other.pt").startswith("etag:")

    with pytest.raises(ConfigError, match=f"weights s3://{s3_bucket}/nope.pt does not exist"):
        fetch_uri(f"s3://{s3_bucket}/nope.pt", cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted([obj.sha256[:16], _sha(b"other")[:16]])


def test_url_and_logs_hold_no_credentials(
    s3_bucket: str, s3_env: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="farm")
    store = open_store(f"s3://{s3_bucket}/farm/")
    store.put_file(_write(tmp_path / "m", b"m"), "k")
    store.get_file("k", tmp_path / "back")

    assert store.url == f"s3://{s3_bucket}/farm"
    assert isinstance(store, S3Store) and store.endpoint == s3_env
    for text in (store.url, repr(store), caplog.text):
        assert _secret() not in text and os.environ["AWS_ACCESS_KEY_ID"] not in text
