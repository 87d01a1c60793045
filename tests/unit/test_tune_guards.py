"""What a tune refuses before anything is written, and what its answer says when plain fp32 is faster."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from farm.analysis import succeeded
from farm.errors import ConfigError
from farm.jobs.tune_answer import fp32_faster
from farm.jobs.tune_plan import TuneSettings, plan_tune, tune_text
from farm.quant.config import parse_method

SETTINGS = TuneSettings("sqnr_db", min_metric=40.0)


def spec(**changes: Any) -> dict[str, Any]:
    text = tune_text(
        model="farm:digits-cnn",
        dataset="sklearn:digits",
        method="static",
        runtimes=("torch",),
        settings=SETTINGS,
        batch_size=1,
        threads=1,
    )
    data = yaml.safe_load(text)
    data.update(changes)
    return data


def plan(data: dict[str, Any]) -> Any:
    return plan_tune(yaml.safe_dump(data), data, labelled=True)


def test_a_grid_axis_or_include_in_a_tune_spec_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="include: not part of a tune"):
        plan(spec(include=[{"model": "farm:digits-mlp", "method": "static"}]))
    with pytest.raises(ConfigError, match="bits: not part of a tune"):
        plan(spec(bits=[4, 8]))


def test_a_scalar_runtime_is_one_runtime() -> None:
    planned = plan(spec(runtime="torch"))
    assert {j.spec.method.runtime for j in planned.jobs} == {"torch"}


def test_a_latency_search_over_simulated_bits_is_refused() -> None:
    with pytest.raises(ConfigError, match="simulated"):
        plan(spec(methods=[{"static": {"bits": 4}}]))


@pytest.mark.parametrize("bits", [1, 0, -4])
def test_bits_out_of_range_is_refused_for_its_range_not_sent_to_bits_8(bits: int) -> None:
    """Not "use bits 8, or --objective size": following that advice would fail on the range next."""
    with pytest.raises(ConfigError, match="bits: must be at least 2") as refused:
        plan(spec(methods=[{"static": {"bits": bits}}]))
    assert "simulated" not in str(refused.value)


def entry(job_id: int, p50: float, half: float, *, fp32: bool) -> dict[str, Any]:
    lat = {"p50_ms": p50, "ci_low_ms": p50 - half, "ci_high_ms": p50 + half}
    return {"job_id": job_id, "fp32": fp32, "state": "succeeded", "split": "test", "latency": lat}


def test_the_answer_says_when_plain_fp32_is_faster_beyond_the_noise() -> None:
    chosen = entry(3, 1.6, 0.05, fp32=False)
    fast_fp32 = entry(1, 1.39, 0.02, fp32=True)
    assert fp32_faster([fast_fp32, entry(2, 5.0, 0.1, fp32=True), chosen], chosen, SETTINGS) == fast_fp32
    overlapping = entry(1, 1.55, 0.06, fp32=True)  # within the noise: no claim
    assert fp32_faster([overlapping, chosen], chosen, SETTINGS) is None
    size = TuneSettings("sqnr_db", min_metric=40.0, objective="size")
    assert fp32_faster([fast_fp32, chosen], chosen, size) is None


def test_validation_rows_never_compete_in_rankings() -> None:
    rows = [
        {"job_id": 1, "state": "succeeded", "health": "ok", "split": "test"},
        {"job_id": 2, "state": "succeeded", "health": "ok", "split": "validation"},
        {"job_id": 3, "state": "succeeded", "health": "ok"},  # before the view had a split
    ]
    assert [r["job_id"] for r in succeeded(rows)] == [1, 3]


def test_eager_static_refuses_a_skip_rule_it_could_not_run() -> None:
    with pytest.raises(ConfigError, match="mode eager"):
        parse_method("static", {"mode": "eager", "layers": [{"name": "fc", "skip": True}]})
    parse_method("static", {"mode": "eager", "layers": [{"name": "fc", "granularity": "per_tensor"}]})


def test_validation_jobs_are_timed_briefly_their_latency_ranks_nothing() -> None:
    from farm.jobs.tune_timing import validation_spec

    planned = plan(spec())
    assert {j.spec.split for j in planned.jobs} == {"test"}  # one fp32 reference: sensitivity carries it over
    test = next(j for j in planned.jobs if j.role == "reference")
    validation = type(test)(test.key, "trial", validation_spec(test.spec), test.device, None, None)  # a stage's
    assert validation.spec.benchmark.max_time_s <= 0.1 < test.spec.benchmark.max_time_s
    assert validation.spec.benchmark.warmup_s <= 0.02 < test.spec.benchmark.warmup_s
    # Not exclusive (pinned holds the lock shared): the test-split jobs' timing is what exclusivity protects.
    assert (validation.spec.benchmark.isolation, test.spec.benchmark.isolation) == ("pinned", "exclusive")


def test_a_size_search_below_8_bits_runs_on_torch_alone_by_default() -> None:
    """int4 is simulated in torch: the runtimes installed here that run int8 only are not asked unless named (and
    then refused, by name)."""
    size = TuneSettings("sqnr_db", min_metric=30.0, objective="size")
    common: dict[str, Any] = {
        "model": "farm:digits-cnn", "dataset": "sklearn:digits", "method": "static", "settings": size,
        "batch_size": 1, "threads": 1, "bits": 4,
    }  # fmt: skip
    data = yaml.safe_load(tune_text(runtimes=(), **common))
    assert data["methods"] == [{"static": {"bits": 4}}] and "runtime" not in data
    planned = plan(data)
    assert {j.spec.method.runtime or "torch" for j in planned.jobs if j.role != "stage"} == {"torch"}
    named = yaml.safe_load(tune_text(runtimes=("onnxruntime",), **common))
    with pytest.raises(ConfigError, match="runs int8 only"):
        plan(named)
    assert yaml.safe_load(tune_text(runtimes=(), **{**common, "bits": 8}))["methods"] == ["static"]
    assert (
        "@int4" in data["name"]
        and "@int" not in yaml.safe_load(tune_text(runtimes=(), **{**common, "bits": 8}))["name"]
    )


def test_simulated_and_real_methods_in_one_size_search_are_refused() -> None:
    """A packed estimate against a file's size is no comparison to choose by; bits that are no integer are the
    method's own problem, not a simulated search's."""
    size = {**spec()["tune"], "objective": "size"}
    with pytest.raises(ConfigError, match="static below 8 bits is simulated and dynamic is not"):
        plan(spec(methods=["dynamic", {"static": {"bits": 4}}], tune=size))
    with pytest.raises(ConfigError, match="bits") as refused:
        plan(spec(methods=[{"static": {"bits": "4"}}]))
    assert "simulated" not in str(refused.value)
    with pytest.raises(ConfigError, match="no deployed latency"):  # 4.0 is 4 bits, as the method reads it
        plan(spec(methods=[{"static": {"bits": 4.0}}]))
