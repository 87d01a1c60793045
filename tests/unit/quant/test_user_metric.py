"""The user's own metric function (``metric: entrypoint:...`` / ``farm quantize --metric-fn``), and class-score-only
accuracy and agreement: an embedding or hidden state keeps cosine and SQNR but gets no argmax figures.

The metric functions are defined here and loaded as entrypoints (this module is put on the allowlist).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from farm.cli import cli
from farm.errors import ConfigError, QuantizationError
from farm.jobs.contract import JobResult, JobSpec
from farm.jobs.steps import run_job
from farm.quant.config import parse_method
from farm.quant.measure import fill_accuracy
from farm.quant.metrics import is_class_scores, load_metric_fn, user_metric
from farm.quant.reference import Reference
from tests.conftest import fast_benchmark

HERE = "tests.unit.quant.test_user_metric"
TOP1 = f"entrypoint:{HERE}:top1"
COSINE = f"entrypoint:{HERE}:mean_cosine"
TOKENS = "tokens:32?n_test=32&n_calibration=32"
CALLS: list[dict[str, Any]] = []


def top1(outputs: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor | None) -> float:
    """Accuracy against the labels, as the user would write it."""
    assert labels is not None
    CALLS.append({"shape": tuple(outputs.shape), "labels": labels is not None})
    return (outputs.argmax(-1) == labels).float().mean().item()


def mean_cosine(outputs: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Mean cosine with fp32's outputs, returned as a 0-d tensor; it scribbles on its inputs (copies, it must be)."""
    CALLS.append({"shape": tuple(outputs.shape), "labels": labels is not None})
    value = torch.nn.functional.cosine_similarity(outputs.double(), reference.double(), dim=-1).mean()
    reference.zero_()
    return value


def boom(outputs: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor | None) -> float:
    raise ValueError("shapes\ndo not match")


def not_finite(outputs: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor | None) -> float:
    return math.nan


@pytest.fixture(autouse=True)
def allow_this_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_ALLOWED_MODULES", HERE)
    CALLS.clear()


def job(model: str, dataset: str, method: str, metric: str | None, output: str | None = None) -> JobSpec:
    return JobSpec(model, dataset, parse_method(method, {}), benchmark=fast_benchmark(1), output=output, metric=metric)


# ----------------------------------------------------------------------------------------------- loading, calling


def test_a_module_off_the_allowlist_is_refused_like_a_model_entrypoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_ALLOWED_MODULES", "somewhere.else")
    with pytest.raises(ConfigError, match="not under FARM_ALLOWED_MODULES"):
        load_metric_fn(TOP1)
    monkeypatch.setenv("FARM_ALLOWED_MODULES", HERE)
    assert load_metric_fn(TOP1) is top1
    with pytest.raises(ConfigError, match="has no callable 'nope'"):
        load_metric_fn(f"entrypoint:{HERE}:nope")
    with pytest.raises(ConfigError, match="expected a metric function"):
        load_metric_fn(f"{HERE}:top1")


def test_the_function_gets_copies_and_its_value_is_checked() -> None:
    ref, out = torch.randn(8, 4), torch.randn(8, 4)
    kept = ref.clone()
    value = user_metric(mean_cosine, COSINE, out, ref, None)
    assert torch.equal(ref, kept)  # the shared fp32 outputs are untouched
    assert value == pytest.approx(torch.nn.functional.cosine_similarity(out, ref, dim=-1).mean().item(), abs=1e-6)
    for fn, words in [
        (boom, f"metric function {HERE}:boom raised ValueError: shapes do not match"),
        (not_finite, "returned nan, not a finite number"),
        (lambda *a: True, "returned bool, not a number"),
        (lambda *a: torch.ones(2), "returned Tensor, not a number"),
        (lambda *a: "0.9", None),  # a numeric string still reads as a number
    ]:
        if words is None:
            assert user_metric(fn, "f", out, ref, None) == pytest.approx(0.9)
            continue
        with pytest.raises(QuantizationError) as e:
            user_metric(fn, f"{HERE}:boom" if fn is boom else "f", out, ref, None)
        assert words in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------------ in a job


def test_a_job_stores_the_metric_with_the_labels(tmp_path: Path) -> None:
    result = run_job(job("farm:digits-mlp", "sklearn:digits", "dynamic", TOP1), tmp_path / "dyn")
    assert result.metric_name == TOP1
    assert result.metric == pytest.approx(result.accuracy)  # the user's top-1 is ours
    assert CALLS == [{"shape": (360, 10), "labels": True}]
    data = result.to_dict()
    assert data["metric"] == result.metric and data["metric_name"] == TOP1
    plain = run_job(job("farm:digits-mlp", "sklearn:digits", "fp32", None), tmp_path / "plain").to_dict()
    assert "metric" not in plain and "metric_name" not in plain  # jobs without one read as before
    assert "metric" not in job("m", "d", "fp32", None).to_dict()


def test_an_embedding_gets_cosine_and_the_metric_but_no_accuracy_or_agreement(tmp_path: Path) -> None:
    emb = run_job(job("farm:tiny-encoder", TOKENS, "dynamic", COSINE, output="embedding"), tmp_path / "emb")
    assert CALLS == [{"shape": (32, 64), "labels": False}]  # unlabelled: the function gets None
    assert emb.accuracy is None and emb.agreement is None and emb.accuracy_drop is None and emb.top5 is None
    assert emb.accuracy_kind == "none" and emb.health == "ok"
    assert emb.cosine is not None and emb.cosine > 0.95 and emb.sqnr_db is not None
    assert emb.metric == pytest.approx(emb.cosine, abs=1e-5)
    assert any("is not class scores" in w for w in emb.warnings)
    logits = run_job(job("farm:tiny-encoder", TOKENS, "dynamic", None), tmp_path / "logits")  # [B, 4]: class scores
    assert logits.agreement is not None and logits.accuracy_kind == "relative_to_fp32"
    assert not any("is not class scores" in w for w in logits.warnings)


@pytest.mark.parametrize(("fn", "error"), [("boom", QuantizationError), ("not_finite", QuantizationError)])
def test_a_metric_that_fails_fails_the_job_in_one_line(tmp_path: Path, fn: str, error: type[Exception]) -> None:
    with pytest.raises(error) as e:
        run_job(job("farm:digits-mlp", "sklearn:digits", "fp32", f"entrypoint:{HERE}:{fn}"), tmp_path / fn)
    assert f"metric function entrypoint:{HERE}:{fn}" in str(e.value) and "\n" not in str(e.value)


def test_a_metric_off_the_allowlist_fails_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_ALLOWED_MODULES", "")
    with pytest.raises(ConfigError, match="not allowed"):
        run_job(job("farm:digits-cnn", "sklearn:digits", "dynamic", TOP1), tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_cli_metric_fn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    args = ["quantize", "--model", "farm:digits-mlp", "--method", "fp32", "--batch-size", "1", "--isolation", "none"]
    target = tmp_path / "trial"
    monkeypatch.setenv("FARM_ALLOWED_MODULES", "elsewhere")
    refused = CliRunner().invoke(cli, [*args, "--output", str(target), "--metric-fn", TOP1])
    assert refused.exit_code == 2 and not target.exists() and not (tmp_path / "home").exists()
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: --metric-fn: entrypoint")
    assert "FARM_ALLOWED_MODULES" in lines[0]
    monkeypatch.setenv("FARM_ALLOWED_MODULES", HERE)
    ok = CliRunner().invoke(cli, [*args, "--output", str(target), "--metric-fn", TOP1, "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert data["metric_name"] == TOP1 and data["metric"] == pytest.approx(data["accuracy"])


# --------------------------------------------------------------------------------------------------- class scores


@pytest.mark.parametrize(
    ("shape", "num_classes", "output", "scores"),
    [
        ((8, 10), 10, None, True),
        ((8, 10), 10, "embedding", True),  # the class count says so, whatever its name
        ((8, 64), 10, None, True),  # the model's own classes (1000 classes on 10 folders): agreement, no accuracy
        ((8, 4), None, None, True),  # unknown count: the model's default output is its logits
        ((8, 4), None, "logits", True),
        ((8, 4), None, 0, True),
        ((8, 64), None, "embedding", False),
        ((8, 64), None, 1, False),
        ((8, 16, 64), None, None, False),  # a hidden state [batch, seq, dim]
        ((8, 1), None, None, False),  # one column: its argmax is always 0
    ],
)
def test_which_outputs_are_class_scores(
    shape: tuple[int, ...], num_classes: int | None, output: str | int | None, scores: bool
) -> None:
    assert is_class_scores(shape, num_classes, output) is scores


def _result() -> JobResult:
    return JobResult("m", "d", "static", {}, 8, None, None, None, None, "cpu", 0, 1)


def test_labelled_outputs_of_another_width_than_the_classes_get_no_accuracy() -> None:
    gen = torch.Generator().manual_seed(0)
    outputs = torch.randn(32, 16, generator=gen)
    labels = torch.randint(0, 10, (32,), generator=gen)
    ref = Reference(outputs, labels, True, 0.5, None, {}, 1, "cpu", "hw")
    result = _result()
    fill_accuracy(result, outputs + 0.01, ref, num_classes=10)
    assert result.accuracy is result.accuracy_fp32 is result.accuracy_drop is None
    assert result.agreement is not None  # its own top-1 still agrees or not with fp32's
    assert result.cosine is not None and result.cosine > 0.99 and result.health == "ok"
    scored = _result()
    fill_accuracy(scored, outputs + 0.01, ref, num_classes=16)
    assert scored.accuracy is not None and scored.agreement is not None and scored.accuracy_fp32 == 0.5


def test_a_hidden_state_is_compared_by_cosine_and_never_called_degenerate_for_its_argmax() -> None:
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(16, 8, 32, generator=gen)
    hidden[..., 3] += 50.0  # one dominant feature: every sample's argmax is the same, which means nothing here
    ref = Reference(hidden, torch.full((16,), -1), False, None, None, {}, 1, "cpu", "hw")
    result = _result()
    fill_accuracy(result, hidden * 1.001, ref)
    assert result.health == "ok" and result.agreement is None and result.accuracy is None
    assert result.cosine == pytest.approx(1.0, abs=1e-6)
