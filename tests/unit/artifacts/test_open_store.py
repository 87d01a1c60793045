"""open_store's URL forms, fetch_uri / object_digest on local files, and the layer's import rules."""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

import farm.artifacts
from farm.artifacts import LocalStore, fetch_uri, object_digest, open_store
from farm.errors import ConfigError


def test_paths_and_file_uris_open_a_local_store(tmp_path: Path) -> None:
    assert open_store(str(tmp_path / "a")).url == (tmp_path / "a").as_uri()
    assert open_store((tmp_path / "b").as_uri()).url == (tmp_path / "b").as_uri()
    assert open_store("file://localhost" + str(tmp_path / "c")).url == (tmp_path / "c").as_uri()


def test_none_reads_farm_artifacts_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_ARTIFACTS_URL", str(tmp_path / "env-store"))
    store = open_store()
    assert isinstance(store, LocalStore) and store.root == (tmp_path / "env-store").resolve()


def test_s3_urls_open_an_s3_store_without_credentials_in_its_url() -> None:
    store = open_store("s3://my-bucket/some/prefix/")
    assert type(store).__name__ == "S3Store"
    assert store.url == "s3://my-bucket/some/prefix"
    assert store.uri_for("jobs/k/model.pt") == "s3://my-bucket/some/prefix/jobs/k/model.pt"
    assert store.key_for("s3://my-bucket/some/prefix/jobs/k/model.pt") == "jobs/k/model.pt"
    assert open_store("s3://my-bucket").url == "s3://my-bucket"


@pytest.mark.parametrize(
    "url",
    ["gs://bucket/x", "http://minio:9000/bucket", "", "   ", "s3://B", "s3://bucket/a/../b", "file://host/x"],
)
def test_other_forms_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(url)
    assert "s3://" in str(info.value) or "file://" in str(info.value)


def test_credentials_in_an_s3_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as info:
        open_store("s3://AKIAEXAMPLE:hunter2secret@bucket/x")
    assert "hunter2secret" not in str(info.value) and "AKIAEXAMPLE" not in str(info.value)


def test_fetch_uri_copies_local_files_into_a_content_addressed_cache(tmp_path: Path) -> None:
    data = b"weights" * 100
    digest = hashlib.sha256(data).hexdigest()
    src = tmp_path / "w" / "model.pt"
    src.parent.mkdir()
    src.write_bytes(data)

    by_path = fetch_uri(str(src), tmp_path / "cache")
    by_uri = fetch_uri(src.as_uri(), tmp_path / "cache")

    assert by_path == by_uri == tmp_path / "cache" / digest[:16] / "model.pt"
    assert by_path.read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [digest[:16]]  # no staging left
    assert object_digest(str(src)) == digest


def test_fetch_uri_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    for uri in [str(tmp_path / "nope.pt"), (tmp_path / "nope.pt").as_uri()]:
        with pytest.raises(ConfigError, match="does not exist"):
            fetch_uri(uri, tmp_path / "cache")
    with pytest.raises(ConfigError, match="unsupported scheme"):
        fetch_uri("https://example.com/model.pt", tmp_path / "cache")


def test_importing_the_layer_loads_neither_boto3_nor_torch() -> None:
    code = "import sys, farm.artifacts; print(sorted(m for m in ('boto3', 'botocore', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_only_the_s3_module_imports_boto3_and_none_imports_torch() -> None:
    package = Path(farm.artifacts.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        in_s3 = path.relative_to(package).parts[0] in ("s3", "s3.py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top == "torch" or (top in ("boto3", "botocore", "s3transfer") and not in_s3):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []
