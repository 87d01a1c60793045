"""The summary of a tune's report agrees with the tune: its best configuration is the tune's answer (or the closest,
with its shortfall), the tune's stage jobs are no configuration, and the answer's speedup over the fastest fp32 of
any runtime says how it was timed.

The tunes are test_tune_report's fabricated ones (every stage added by the real expanders), with the rows of
results_flat a database would hold for them: stage jobs included, as a succeeded job with no batch size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest

from farm.jobs import tune_stages
from farm.jobs.tune_answer import answer_of
from farm.jobs.tune_plan import TuneSettings, info
from farm.report import SweepInfo, build_report
from farm.report.fmt import sig
from farm.report.sections import hardware, summary
from farm.report.tune_data import TuneInput
from farm.store.expansion import InputJob
from tests.unit.report.page import parse
from tests.unit.report.test_tune_report import LAYERS, WHEN, fabricated_tune

MODEL = "farm:digits-cnn"
FINGERPRINT = {"cpu_model": "Test CPU", "cpus": 2, "isa": ["avx2"]}


@pytest.fixture(autouse=True)
def fixed_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tune_stages, "list_layers", lambda spec: list(LAYERS))


def rows_of(jobs: Sequence[InputJob], drop: dict[int, float] | None = None) -> list[dict[str, Any]]:
    """The rows of results_flat for a fabricated tune (one batch size): a stage job's row has no batch size and no
    figure, as the view gives it; ``drop`` overrides some jobs' accuracy drop."""
    fp32 = [j.figures["latency_p50_ms"] for j in jobs if j.role != "stage" and info(j)["method"] == "fp32"]
    out = []
    for j in jobs:
        if j.role == "stage":
            out.append({"job_id": j.id, "model": MODEL, "method": "stage", "state": j.state, "batch_size": None,
                        "runtime": "torch", "split": "test"})  # fmt: skip
            continue
        what, f = info(j), j.figures
        accuracy_drop = (drop or {}).get(j.id, f.get("accuracy_drop", 0.0))
        p50 = f["latency_p50_ms"]
        out.append(
            {
                "job_id": j.id, "model": MODEL, "method": what["method"], "state": j.state, "batch_size": 1,
                "runtime": what["runtime"], "split": what["split"], "granularity": what["granularity"],
                "bits": None if what["method"] == "fp32" else 8, "observer": "minmax", "calibration_size": 256,
                "accuracy": 0.99 - accuracy_drop, "accuracy_drop": accuracy_drop, "sqnr_db": f.get("sqnr_db"),
                "latency_p50_ms": p50, "latency_p50_ci_low_ms": f.get("latency_p50_ci_low_ms"),
                "latency_p50_ci_high_ms": f.get("latency_p50_ci_high_ms"), "speedup": f.get("speedup"),
                "speedup_vs_best_fp32": min(fp32) / p50, "size_bytes": f.get("size_bytes"), "health": "ok",
                "simulated": False, "artifact_uri": j.artifact_uri, "isolation": what["isolation"],
            }
        )  # fmt: skip
    return out


def page_of(settings: TuneSettings, jobs: Sequence[InputJob], rows: Sequence[dict[str, Any]]) -> str:
    return build_report(rows, sweep=SweepInfo(7, "tune", "succeeded"), fingerprints={}, generated_at=WHEN,
                        tune=TuneInput(settings, jobs, "succeeded"))  # fmt: skip


def best_of(html: str) -> str:
    """The text of the summary's best configuration."""
    text = parse(html).section_text["summary"]
    return text[text.index("Best configuration per model") : text.index("Notes")]


def test_a_tune_that_met_no_target_says_so_in_the_summary_and_recommends_nothing_else() -> None:
    """sqnr_db >= 100: nothing meets it. Every recipe loses under a point of accuracy, so the plain sweep's rule
    would pick the fastest global recipe; the summary must name the tune's closest recipe and its shortfall."""
    settings, jobs = fabricated_tune(min_metric=100.0)
    result = answer_of(jobs, settings, "succeeded")
    chosen = result.chosen
    assert chosen is not None and not result.met and result.shortfall
    best = best_of(page_of(settings, jobs, rows_of(jobs)))
    assert f"no recipe meets sqnr_db >= 100; the closest, short by {sig(result.shortfall, 4)}" in best
    assert f"{chosen['recipe']} (job {chosen['job_id']})" in best
    others = {j.id for j in jobs} - {chosen["job_id"]}
    assert not [n for n in others if f"(job {n})" in best]  # no other recommendation


def test_a_tunes_stage_jobs_are_no_configuration_and_no_failure() -> None:
    """A stage job succeeds with no batch size and nothing measured: no phantom best-configuration row for it, and
    the hardware section does not count it among the jobs that did not succeed."""
    settings, jobs = fabricated_tune()
    rows = rows_of(jobs)
    stages = [j.id for j in jobs if j.role == "stage"]
    assert stages
    sweep = SweepInfo(7, "tune", "succeeded")
    for html in (summary(rows, sweep, WHEN, {}, 1), page_of(settings, jobs, rows)):
        assert "no configuration with an accuracy drop and a latency" not in html
    fingerprints = {j.id: FINGERPRINT for j in jobs if j.role != "stage"}
    assert "did not succeed" not in hardware(rows, fingerprints)
    failed = jobs[1]  # a real failure is still listed
    rows = [{**r, "state": "failed"} if r["job_id"] == failed.id else r for r in rows]
    del fingerprints[failed.id]
    assert f"1 job(s) recorded no fingerprint (they did not succeed): {failed.id}." in hardware(rows, fingerprints)


def test_a_met_tunes_best_configuration_is_its_verified_answer_not_a_screened_tie() -> None:
    """The candidate screened pinned (job 12) ties with the verify job that timed the same recipe (job 17): the
    tune answers with the verified one, and so must the summary (the global recipes here lose 2 points of accuracy,
    so the plain sweep's rule would have picked among those two, and called its pick "the simplest recipe")."""
    settings, jobs = fabricated_tune()
    chosen = answer_of(jobs, settings, "succeeded").chosen
    assert chosen is not None and chosen["stage"] == "verify"
    screened = next(j.id for j in jobs if j.added_by == "tune_candidates" and info(j)["fallback"] == chosen["fallback"])
    globals_ = {j.id: 0.02 for j in jobs if j.role == "trial" and j.added_by is None}
    best = best_of(page_of(settings, jobs, rows_of(jobs, drop=globals_)))
    assert f"{chosen['recipe']} (job {chosen['job_id']})" in best and "layers in fp32: conv2" in best
    assert f"(job {screened})" not in best and "simplest recipe" not in best and "no recipe meets" not in best
    assert "the tune's answer" in best


def with_figures(jobs: Sequence[InputJob], which: Any, **figures: Any) -> list[InputJob]:
    return [dataclasses.replace(j, figures={**j.figures, **figures}) if which(j) else j for j in jobs]


def is_fp32_on(runtime: str) -> Any:
    return lambda j: j.role != "stage" and info(j)["method"] == "fp32" and info(j)["runtime"] == runtime


def test_the_speedup_over_the_fastest_fp32_of_its_own_runtime_is_side_by_side() -> None:
    """onnxruntime's fp32 (0.8 ms) is the fastest; the answer runs on onnxruntime, whose verify job timed it side by
    side: the figure is that side-by-side one with its interval, never "timed apart"."""
    settings, jobs = fabricated_tune(runtimes=("torch", "onnxruntime"))
    chosen = answer_of(jobs, settings, "succeeded").chosen
    assert chosen is not None and chosen["runtime"] == "onnxruntime"
    lat = chosen["latency"]["p50_ms"]
    html = page_of(settings, jobs, rows_of(jobs))
    figure = (
        f"{sig(1 / lat)}× over the fastest fp32 of any runtime (onnxruntime's, side by side, 95 % interval "
        f"{sig(0.95 / lat)}–{sig(1.05 / lat)}×)"
    )
    page = parse(html)
    for text in (page.section_text["tune"], best_of(html)):
        assert figure in text and "timed apart" not in text


@pytest.mark.parametrize("rival", [True, False])
def test_the_speedup_over_another_runtimes_fastest_fp32_says_how_it_was_timed(rival: bool) -> None:
    """torch's fp32 (1.0 ms) is the fastest, onnxruntime's answer (0.25 ms) was timed beside it (a rival) or not:
    side by side with the rival's interval, else the two jobs' p50s divided, labelled timed apart."""
    settings, jobs = fabricated_tune(runtimes=("torch", "onnxruntime"))
    slow = dict(latency_p50_ms=1.2, latency_p50_ci_low_ms=1.15, latency_p50_ci_high_ms=1.25)
    jobs = with_figures(jobs, is_fp32_on("onnxruntime"), **slow)
    chosen = answer_of(jobs, settings, "succeeded").chosen
    assert chosen is not None and chosen["runtime"] == "onnxruntime"
    if rival:
        beside = {"runtime": "torch", "speedup": 3.9, "speedup_ci_low": 3.7, "speedup_ci_high": 4.1}
        jobs = with_figures(jobs, lambda j: j.id == chosen["job_id"], rivals=[beside])
    text = parse(page_of(settings, jobs, rows_of(jobs))).section_text["tune"]
    if rival:
        assert "3.90× over the fastest fp32 of any runtime (torch's, side by side, 95 % interval 3.70–4.10×)" in text
        assert "timed apart" not in text
    else:
        ratio = sig(1.0 / chosen["latency"]["p50_ms"])
        assert (
            f"{ratio}× over the fastest fp32 of any runtime (torch's, timed apart: the two jobs' p50s divided" in text
        )
        assert "side by side, 95 %" not in text.split("over the fastest fp32")[1]


def test_the_fastest_fp32_of_any_runtime_is_one_on_the_answers_device() -> None:
    """torch's fp32 (1.0 ms) ran on a GPU: no bar for onnxruntime's CPU answer, whose fastest fp32 is then its own
    runtime's (1.2 ms), side by side."""
    settings, jobs = fabricated_tune(runtimes=("torch", "onnxruntime"))
    slow = dict(latency_p50_ms=1.2, latency_p50_ci_low_ms=1.15, latency_p50_ci_high_ms=1.25)
    jobs = with_figures(jobs, is_fp32_on("onnxruntime"), **slow)
    jobs = [dataclasses.replace(j, device="cuda:0") if is_fp32_on("torch")(j) else j for j in jobs]
    text = parse(page_of(settings, jobs, rows_of(jobs))).section_text["tune"]
    assert "over the fastest fp32 of any runtime (onnxruntime's, side by side" in text and "(torch's" not in text


def test_an_fp32_faster_than_the_answer_is_said_in_the_summary_and_the_answer() -> None:
    settings, jobs = fabricated_tune(runtimes=("torch", "onnxruntime"))
    fast = dict(latency_p50_ms=0.1, latency_p50_ci_low_ms=0.09, latency_p50_ci_high_ms=0.11)
    jobs = with_figures(jobs, is_fp32_on("torch"), **fast)  # timed apart from the answer, clearly faster
    result = answer_of(jobs, settings, "succeeded")
    assert result.fp32_faster is not None
    html = page_of(settings, jobs, rows_of(jobs))
    warning = f"(job {result.fp32_faster['job_id']}, fp32 on torch) is faster than the answer beyond the noise"
    assert warning in best_of(html) and warning in parse(html).section_text["tune"]
