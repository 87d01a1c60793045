"""LocalStore: round trips, sha256 verification, atomic writes, and keys that try to leave the store."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from farm.artifacts import LocalStore, safe_key
from farm.artifacts.base import MAX_KEY_BYTES, ArtifactMissing
from farm.errors import ArtifactError, NotFound

ESCAPES = [
    "../x",
    "/etc/passwd",
    "a/../../b",
    "a//b",
    "a\\b",
    "..\\..\\x",
    "",
    ".",
    "..",
    "a/./b",
    "a/",
    "a\x00b",
    "a\nb",
    "x" * (MAX_KEY_BYTES + 1),
]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.name.endswith(".part")]


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_round_trip_with_sha256(store: LocalStore, tmp_path: Path) -> None:
    data = os.urandom(3000)
    src = _write(tmp_path / "src" / "model.pt", data)

    obj = store.put_file(src, "jobs/abc/model.pt")

    assert (obj.key, obj.sha256, obj.size_bytes) == ("jobs/abc/model.pt", _sha(data), 3000)
    assert obj.uri == (store.root / "jobs" / "abc" / "model.pt").as_uri()
    assert obj.uri.startswith("file:///")
    assert store.key_for(obj.uri) == "jobs/abc/model.pt"
    assert store.exists("jobs/abc/model.pt") and not store.exists("jobs/abc/other.pt")
    out = store.get_file("jobs/abc/model.pt", tmp_path / "out" / "m.pt", sha256=obj.sha256)
    assert out.read_bytes() == data
    assert _leftovers(tmp_path) == []


def test_put_refuses_a_file_that_does_not_match_the_given_sha256(store: LocalStore, tmp_path: Path) -> None:
    src = _write(tmp_path / "a.bin", b"new bytes")
    store.put_file(_write(tmp_path / "old.bin", b"old bytes"), "k/a.bin")

    with pytest.raises(ArtifactError, match="sha256"):
        store.put_file(src, "k/a.bin", sha256=_sha(b"something else"))

    assert (store.root / "k" / "a.bin").read_bytes() == b"old bytes"  # the old object is untouched
    assert _leftovers(store.root) == []


def test_get_detects_a_corrupted_object_and_leaves_dest_alone(store: LocalStore, tmp_path: Path) -> None:
    obj = store.put_file(_write(tmp_path / "a.bin", b"good bytes"), "a.bin")
    (store.root / "a.bin").write_bytes(b"evil bytes")  # behind the store's back
    dest = _write(tmp_path / "dest.bin", b"previous")

    with pytest.raises(ArtifactError, match="failed verification"):
        store.get_file("a.bin", dest, sha256=obj.sha256)

    assert dest.read_bytes() == b"previous"
    assert _leftovers(tmp_path) == []


def test_get_of_a_missing_key_is_artifact_missing(store: LocalStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactMissing) as info:
        store.get_file("nope/model.pt", tmp_path / "x")
    assert isinstance(info.value, ArtifactError) and isinstance(info.value, NotFound)


@pytest.mark.parametrize("key", ESCAPES)
def test_escaping_keys_are_rejected_everywhere(store: LocalStore, tmp_path: Path, key: str) -> None:
    src = _write(tmp_path / "payload", b"x")
    with pytest.raises(ArtifactError):
        safe_key(key)
    with pytest.raises(ArtifactError):
        store.put_file(src, key)
    with pytest.raises(ArtifactError):
        store.get_file(key, tmp_path / "out")
    with pytest.raises(ArtifactError):
        store.exists(key)
    with pytest.raises(ArtifactError):
        store.uri_for(key)
    with pytest.raises(ArtifactError):
        store.delete_prefix(key)
    with pytest.raises(ArtifactError):
        store.put_dir(tmp_path, key) if key else safe_key(key)
    # Nothing was written anywhere near the store.
    assert not (tmp_path / "x").exists() and not (tmp_path / "b").exists()
    assert not store.root.exists() or list(store.root.rglob("*")) == []


def test_percent_encoding_stays_literal_and_inside(store: LocalStore, tmp_path: Path) -> None:
    obj = store.put_file(_write(tmp_path / "p", b"pct"), "%2e%2e/%2E%2E/x")

    assert (store.root / "%2e%2e" / "%2E%2E" / "x").read_bytes() == b"pct"
    assert "%252e%252e" in obj.uri  # the URI encodes the literal '%'
    assert store.key_for(obj.uri) == "%2e%2e/%2E%2E/x"


def test_safe_key_normalises_unicode_to_one_spelling() -> None:
    assert safe_key("jobs/cafe\u0301/m.pt") == "jobs/caf\u00e9/m.pt"
    assert safe_key("jobs/abc/model.pt") == "jobs/abc/model.pt"
    assert safe_key("x" * MAX_KEY_BYTES) == "x" * MAX_KEY_BYTES


def test_symlink_inside_root_cannot_redirect_reads_or_writes(store: LocalStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _write(outside / "secret", b"secret")
    store.root.mkdir(parents=True)
    (store.root / "link").symlink_to(outside, target_is_directory=True)
    src = _write(tmp_path / "payload", b"evil")

    with pytest.raises(ArtifactError, match="outside the store"):
        store.put_file(src, "link/planted")
    with pytest.raises(ArtifactError, match="outside the store"):
        store.get_file("link/secret", tmp_path / "stolen")
    with pytest.raises(ArtifactError, match="outside the store"):
        store.exists("link/secret")
    assert not (outside / "planted").exists()
    assert not (tmp_path / "stolen").exists()

    store.delete_prefix("link")  # removes the link itself, never what it points to
    assert not (store.root / "link").exists() and (outside / "secret").read_bytes() == b"secret"


def test_put_dir_uploads_regular_files_sorted_and_skips_symlinks(store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "artifact"
    _write(src / "model.pt", b"model")
    _write(src / "manifest.json", b"{}")
    _write(src / "sub" / "b.txt", b"b")
    _write(src / "sub" / "a.txt", b"a")
    secret = _write(tmp_path / "outside" / "secret", b"secret")
    (src / "link_to_file").symlink_to(secret)
    (src / "link_to_dir").symlink_to(secret.parent, target_is_directory=True)

    objs = store.put_dir(src, "jobs/k1")

    assert [o.key for o in objs] == [
        "jobs/k1/manifest.json",
        "jobs/k1/model.pt",
        "jobs/k1/sub/a.txt",
        "jobs/k1/sub/b.txt",
    ]
    assert [o.sha256 for o in objs] == [_sha(b"{}"), _sha(b"model"), _sha(b"a"), _sha(b"b")]
    stored = sorted(p.relative_to(store.root).as_posix() for p in store.root.rglob("*") if p.is_file())
    assert stored == [o.key for o in objs]
    assert not any(p.is_symlink() for p in store.root.rglob("*"))


def test_delete_prefix_is_a_path_prefix(store: LocalStore, tmp_path: Path) -> None:
    src = _write(tmp_path / "f", b"f")
    for key in ("jobs/ab/model.pt", "jobs/ab/sub/x", "jobs/abc/model.pt", "jobs/a"):
        store.put_file(src, key)

    store.delete_prefix("jobs/ab")

    assert not store.exists("jobs/ab/model.pt") and not store.exists("jobs/ab/sub/x")
    assert store.exists("jobs/abc/model.pt") and store.exists("jobs/a")
    store.delete_prefix("jobs/never-there")  # nothing to delete is fine
    with pytest.raises(ArtifactError, match="empty prefix"):
        store.delete_prefix("")
    assert store.exists("jobs/abc/model.pt")


def test_key_for_rejects_uris_outside_the_store(store: LocalStore) -> None:
    sibling = store.root.parent / (store.root.name + "-evil") / "x"
    for uri in [
        sibling.as_uri(),
        "file:///etc/passwd",
        store.root.as_uri() + "/a/../../etc/passwd",
        store.root.as_uri() + "/a/%2E%2E/%2E%2E/etc",
        "s3://bucket/x",
        "file://otherhost" + store.root.as_posix() + "/x",
        store.root.as_uri(),
    ]:
        with pytest.raises(ArtifactError):
            store.key_for(uri)


def test_url_is_the_root_as_a_file_uri(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "a" / ".." / "store")
    assert store.url == (tmp_path / "store").resolve().as_uri()
