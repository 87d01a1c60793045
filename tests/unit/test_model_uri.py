"""The artifact URI a job reports is the file a user deploys, not any model-like file it also kept."""

from __future__ import annotations

from types import SimpleNamespace

from farm.jobs.execute import model_uri


def _obj(uri: str) -> SimpleNamespace:
    return SimpleNamespace(uri=uri)


def test_a_tensorrt_job_reports_its_engine_not_the_onnx_graph_it_was_built_from() -> None:
    stored = [("model", _obj("s3://b/j/1/model.onnx")), ("model", _obj("s3://b/j/1/model.plan"))]
    result = SimpleNamespace(artifact={"file": "model.plan"})
    assert model_uri(result, stored) == "s3://b/j/1/model.plan"


def test_without_a_named_file_the_first_model_file_is_reported() -> None:
    stored = [("manifest", _obj("file:///a/manifest.json")), ("model", _obj("file:///a/model.pt"))]
    assert model_uri(SimpleNamespace(artifact=None), stored) == "file:///a/model.pt"
    assert model_uri(SimpleNamespace(artifact={}), [("manifest", _obj("x"))]) is None
