"""Planning with weights in S3 (moto's server): offline by default, and keyed as before with the S3 digest."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from farm.artifacts import object_digest
from farm.errors import ConfigError, Problem
from farm.spec.load import load_spec

# Keys of this spec with the object below (plain put_object: digest etag:<md5>), computed before planning took
# its digest function from the caller: the same inputs must keep the same keys (results are reused by key).
GOLDEN = {
    "reference": "4078329192093086b4a2c3c0ed9a116b947d976bf48ff4fd9c7c188d74ad3de4",
    "trial": "b9e349c13dabdec66fd2cc1a6897fde01d340b6ddc6ef02363803471206a67da",
}
GOLDEN_BUCKET = "farm-golden"


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every address this process connects a socket to from now on."""
    seen: list[Any] = []
    real = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        seen.append(address)
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


def test_planning_s3_weights_is_offline_unless_the_caller_passes_the_s3_digest(
    s3_client: Any, connects: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("farm.spec.plan.ENGINE_VERSION", "1")  # GOLDEN was recorded under engine version 1
    s3_client.create_bucket(Bucket=GOLDEN_BUCKET)
    try:
        s3_client.put_object(Bucket=GOLDEN_BUCKET, Key="w.pt", Body=b"weights-bytes")
        text = f"name: s\nmodels:\n  - {{ref: 'farm:digits-cnn', weights: 's3://{GOLDEN_BUCKET}/w.pt'}}\n"
        text += "methods: [fp32, dynamic]\n"
        connects.clear()

        with pytest.raises(ConfigError) as e:
            load_spec(text)
        assert e.value.problems == [
            Problem(
                "models[0].weights", f"s3://{GOLDEN_BUCKET}/w.pt is in S3, and this plan was made without reaching S3"
            )
        ]
        assert connects == []  # no HTTP request: nothing was even connected

        plan = load_spec(text, remote_digest=object_digest)
        assert connects  # the check above is real: the S3 digest does reach the server
        assert {j.role: j.key for j in plan.jobs} == GOLDEN
        assert {j.weights_digest for j in plan.jobs} == {"etag:28196e8a0209fe8684d45bd2bb75f209"}
    finally:
        s3_client.delete_object(Bucket=GOLDEN_BUCKET, Key="w.pt")
        s3_client.delete_bucket(Bucket=GOLDEN_BUCKET)
