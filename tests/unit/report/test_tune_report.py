"""The report of a tune (``farm tune``): the answer, each runtime's layer sensitivity and the search's trail.

Tunes are fabricated: stage 1 planned by farm.jobs.tune_plan, every later stage added by the real expanders
(farm.jobs.tune_stages) from fake figures, as farm.store.expansion.sweep_jobs would return the jobs. One test
goes through the database: a submitted tune (nothing run) is told from a plain sweep by ``farm report``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from farm.jobs import tune_stages
from farm.jobs.stages import Stage, expander_named
from farm.jobs.tune_answer import answer_of
from farm.jobs.tune_plan import TuneSettings, plan_tune, tune_text
from farm.jobs.tune_spec import stage1_size
from farm.report import SweepInfo, build_report
from farm.report.fmt import sig
from farm.report.tune_data import TuneInput, tune_view
from farm.store.expansion import InputJob
from tests.unit.report.page import parse

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
#: The model's quantizable layers (name, class, MACs): what farm.quant.layer_list would list.
LAYERS = [
    ("conv1", "Conv2d", 500),
    ("conv2", "Conv2d", 4000),
    ("conv3", "Conv2d", 3000),
    ("fc1", "Linear", 100),
    ("fc2", "Linear", 10),
]
#: SQNR (dB) each layer gives back when it alone stays in floating point: conv2 hurts most when quantized.
GAIN = {"conv1": 0.2, "conv2": 3.0, "conv3": 1.0, "fc1": 0.5, "fc2": 0.1}
BY_LOSS = sorted(GAIN, key=lambda n: -GAIN[n])


@pytest.fixture(autouse=True)
def fixed_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tune_stages, "list_layers", lambda spec: list(LAYERS))


def figures_of(job: Any, gain: dict[str, float] = GAIN) -> dict[str, Any]:
    """Fake figures: SQNR 37 dB per tensor, 37.4 per channel, plus what each fp32 layer gives back; slower with
    every layer in floating point."""
    if job.role == "reference":
        return figures_of_reference()
    method = job.spec.method
    if method.method == "fp32":  # exported to another runtime
        return {**figures_of_reference(), "latency_p50_ms": 0.8, "latency_p50_ci_low_ms": 0.75}
    layers = [r.name for r in method.layers]
    sqnr = 37.0 + (0.4 if method.granularity == "per_channel" else 0.0) + sum(gain[n] for n in layers)
    # onnxruntime: faster, a little less faithful (its ranking is the same, its answer needs two layers).
    ort = getattr(method, "runtime", "torch") == "onnxruntime"
    sqnr -= 1.0 if ort else 0.0
    p50 = (0.05 if ort else 0.2) + 0.1 * len(layers)
    return {
        "sqnr_db": sqnr,
        "cosine": 0.999,
        "accuracy_drop": 0.001,
        "health": "ok",
        "latency_p50_ms": p50,
        "latency_p50_ci_low_ms": p50 - 0.01,
        "latency_p50_ci_high_ms": p50 + 0.01,
        "speedup": 1.0 / p50,
        "speedup_ci_low": 0.95 / p50,
        "speedup_ci_high": 1.05 / p50,
        "size_bytes": 10_000 + 7_500 * len(layers),
        "size_ratio": (10_000 + 7_500 * len(layers)) / 40_000,
    }


def figures_of_reference() -> dict[str, Any]:
    return {"latency_p50_ms": 1.0, "latency_p50_ci_low_ms": 0.95, "latency_p50_ci_high_ms": 1.05,
            "size_bytes": 40_000, "speedup": 1.0, "health": "ok"}  # fmt: skip


def as_input(job: Any, n: int, added_by: str | None, figures: Callable[[Any], dict[str, Any]]) -> InputJob:
    """A planned job as sweep_jobs returns it once it succeeded."""
    stage = job.role == "stage"
    spec = job.payload() if stage else job.spec.to_dict()
    uri = None if stage or job.role == "reference" else f"file:///artifacts/{n}/model.pt"
    figs = {} if stage else figures(job)
    return InputJob(n, job.key, job.role, "succeeded", spec, job.device, job.reference_key, ("local", "all", None),
                    figs, uri, None, None, None, added_by)  # fmt: skip


def fabricated_tune(
    min_metric: float = 40.0,
    figures: Callable[[Any], dict[str, Any]] = figures_of,
    runtimes: Sequence[str] = ("torch",),
    methods: Sequence[str] = ("static",),
    trials: int | None = None,
    bits: int | None = None,
) -> tuple[TuneSettings, list[InputJob]]:
    """A finished tune of sqnr_db >= ``min_metric``: every stage run by the real expanders (``bits`` below 8: a size
    search)."""
    objective = "size" if bits is not None and bits < 8 else "latency"
    settings = TuneSettings("sqnr_db", min_metric=min_metric, objective=objective, trials=trials)
    text = tune_text(model="farm:digits-cnn", dataset="sklearn:digits", method=list(methods),
                     runtimes=list(runtimes), settings=settings, batch_size=1, threads=1, bits=bits)  # fmt: skip
    plan = plan_tune(text, yaml.safe_load(text), labelled=True)
    jobs = [as_input(j, n, None, figures) for n, j in enumerate(plan.jobs, 1)]
    by_key = {j.key: j for j in jobs}
    stage: Any = plan.jobs[-1]
    while stage is not None:
        inputs = [by_key[k] for k in stage.depends_on if k in by_key]
        added = expander_named(stage.expander)(Stage(stage.key, stage.expander, stage.params), inputs)
        stage, name = None, stage.expander
        for planned in added:
            job = as_input(planned, len(jobs) + 1, name, figures)
            jobs.append(job)
            by_key[job.key] = job
            stage = planned if planned.role == "stage" else stage
    return settings, jobs


def report(settings: TuneSettings, jobs: Sequence[InputJob], state: str = "succeeded") -> str:
    return build_report([], sweep=SweepInfo(7, "tune", state), fingerprints={}, generated_at=WHEN,
                        tune=TuneInput(settings, jobs, state))  # fmt: skip


def test_a_tune_of_two_methods_has_a_sensitivity_chart_per_method_each_from_its_own_base() -> None:
    """Dynamic int8 here scores 1 dB more and runs 0.3 ms slower than static: both lines are searched, and each
    chart measures its layers from its own method's base recipe; the fallback is marked on the answer's line only."""

    def two(job: Any) -> dict[str, Any]:
        f = figures_of(job)
        if job.role == "trial" and job.spec.method.method == "dynamic":
            f = {**f, "sqnr_db": f["sqnr_db"] + 1.0}
            for k in ("latency_p50_ms", "latency_p50_ci_low_ms", "latency_p50_ci_high_ms"):
                f[k] += 0.3
        return f

    settings, jobs = fabricated_tune(figures=two, methods=("dynamic", "static"))
    view = tune_view(TuneInput(settings, jobs, "succeeded"))
    by_line = {s.runtime: s for s in view.sensitivities}
    assert set(by_line) == {"torch (dynamic)", "torch (static)"}
    assert by_line["torch (static)"].base == pytest.approx(37.4)
    assert by_line["torch (dynamic)"].base == pytest.approx(38.4)
    chosen = answer_of(jobs, settings).chosen
    assert chosen is not None and chosen["method"] == "static" and chosen["fallback"] == ["conv2"]  # 40.4 dB, 0.3 ms
    assert [x.name for x in by_line["torch (static)"].layers if x.fallback] == ["conv2"]
    assert not [x.name for x in by_line["torch (dynamic)"].layers if x.fallback]
    html = report(settings, jobs)
    assert "Layer sensitivity on torch (dynamic)" in html and "Layer sensitivity on torch (static)" in html
    legend = parse(html).svg_text["trail"]  # the two methods' points on torch told apart by their markers
    assert {"torch (dynamic)", "torch (static)"} <= set(legend) and "torch" not in legend


def test_the_sensitivity_chart_has_one_bar_per_layer_sorted_by_loss_with_the_fallback_marked() -> None:
    settings, jobs = fabricated_tune()
    view = tune_view(TuneInput(settings, jobs, "succeeded"))
    (s,) = view.sensitivities
    assert [x.name for x in s.layers] == BY_LOSS
    # Against the all-quantized per-channel recipe on the validation split (37.4 dB): what each layer gives back.
    assert s.base == pytest.approx(37.4) and s.base_split == "validation"
    assert [x.loss for x in s.layers] == pytest.approx([GAIN[n] for n in BY_LOSS])
    chosen = answer_of(jobs, settings).chosen
    assert chosen is not None and chosen["fallback"] == ["conv2"]  # 40.4 dB, the fastest that meets 40
    assert [x.name for x in s.layers if x.fallback] == ["conv2"]

    page = parse(report(settings, jobs))
    texts = page.svg_text["sensitivity"]
    ticks = [t for t in texts if t in GAIN]
    assert ticks == BY_LOSS  # one labelled bar per layer, the most sensitive on top
    assert [t for t in texts if re.fullmatch(r"[+-]\d\S*", t)] == [f"{GAIN[n]:+.3g}" for n in BY_LOSS]
    assert "kept in fp32 by the answer" in texts
    html = report(settings, jobs)
    sensitivity = html[html.index('<section id="sensitivity">') : html.index('<section id="trail">')]
    assert "<pattern" in sensitivity  # the hatch of the fallen-back layer's bar
    assert "test split only" not in page.section_text["sensitivity"]


def test_a_validation_split_base_is_what_the_losses_are_measured_from() -> None:
    settings, jobs = fabricated_tune()
    base = next(
        j
        for j in jobs
        if j.role == "trial" and j.spec.get("split") == "validation" and not j.spec["method"].get("layers")
    )
    jobs = [dataclasses.replace(j, figures={**j.figures, "sqnr_db": 36.9}) if j is base else j for j in jobs]
    (s,) = tune_view(TuneInput(settings, jobs, "succeeded")).sensitivities
    assert s.base_split == "validation" and s.base == pytest.approx(36.9)
    assert [x.loss for x in s.layers] == pytest.approx([GAIN[n] + 0.5 for n in BY_LOSS])


def test_the_trail_marks_the_chosen_point_and_the_answer_names_it() -> None:
    settings, jobs = fabricated_tune()
    result = answer_of(jobs, settings, "succeeded")
    chosen = result.chosen
    assert chosen is not None and result.met
    page = parse(report(settings, jobs))
    trail = page.svg_text["trail"]
    assert f"chosen: {chosen['recipe']}" in trail
    assert sum(t.startswith(("chosen:", "closest")) for t in trail) == 1
    assert {"global", "candidates", "target: sqnr_db >= 40"} <= set(trail)
    assert any(t.startswith("fp32 on torch (1") for t in trail)
    answer = page.section_text["tune"]
    assert chosen["recipe"] in answer and f"job {chosen['job_id']}" in answer
    assert "sqnr_db >= 40, objective latency" in answer and "done" in answer
    lat = chosen["latency"]["p50_ms"]
    assert f"{sig(1 / lat)}× over fp32 on torch (95 % interval {sig(0.95 / lat)}–{sig(1.05 / lat)}×)" in answer
    assert "layers in fp32conv2" in answer and "No recipe meets" not in answer
    assert page.section_ids[:4] == ["summary", "tune", "sensitivity", "trail"]


def test_a_simulated_answer_is_labelled_raised_to_int8_and_claims_no_speed() -> None:
    settings, jobs = fabricated_tune(figures=lambda j: {**figures_of(j), "simulated": j.role != "reference"}, bits=4)
    result = answer_of(jobs, settings, "succeeded")
    assert result.met and result.chosen is not None and result.chosen["fallback_to"] == "int8"
    page = parse(report(settings, jobs))
    answer = page.section_text["tune"]
    assert "layers at int8conv2" in answer and "none: simulated" in answer and "a packed estimate" in answer
    assert "× over fp32" not in answer and "none claimed: simulated" in answer and " ms" not in answer
    notes = " ".join(page.section_text["sensitivity"].split())
    assert "alone at int8" in notes and "keeps at int8" in notes and "rather than int8" in notes


def test_the_explore_stages_trials_are_drawn_on_the_trail_in_their_own_colour() -> None:
    pytest.importorskip("optuna")
    settings, jobs = fabricated_tune(trials=3)
    explored = [j for j in jobs if j.added_by == "tune_explore" and j.role == "trial"]
    assert len(explored) == 3
    page = parse(report(settings, jobs))
    assert "explore" in page.svg_text["trail"]  # its legend entry: the trail draws its points
    assert "explore 3/3" in page.section_text["tune"]


def test_a_failed_tune_says_how_far_the_closest_recipe_falls_short() -> None:
    settings, jobs = fabricated_tune(min_metric=100.0)
    result = answer_of(jobs, settings, "succeeded")
    assert result.chosen is not None and not result.met and result.shortfall
    page = parse(report(settings, jobs))
    answer = page.section_text["tune"]
    assert (
        f"No recipe meets sqnr_db >= 100: the closest, {result.chosen['recipe']} (job {result.chosen['job_id']}), "
        f"falls short by {sig(result.shortfall, 4)}." in answer
    )
    assert "closest" in answer and "chosen" not in answer
    from farm.report.svg import label

    assert label(f"closest (misses): {result.chosen['recipe']}", 60) in page.svg_text["trail"]
    # The closest recipe's fallback layers are marked as its, and a target far off every figure is named, not drawn.
    assert "kept in fp32 by the closest recipe" in page.svg_text["sensitivity"]
    assert "target: sqnr_db >= 100 (off the chart)" in page.svg_text["trail"]


def test_a_tune_still_searching_and_hostile_layer_names(monkeypatch: pytest.MonkeyPatch) -> None:
    evil = "<b>x</b>$a^2$"
    layers = {evil: 3.0, "fc": 0.5}

    def figures(job: Any) -> dict[str, Any]:
        return figures_of(job, layers)

    monkeypatch.setattr(tune_stages, "list_layers", lambda spec: [(evil, "Linear", 10), ("fc", "Linear", 5)])
    settings, jobs = fabricated_tune(figures=figures)
    html = report(settings, jobs[: stage1_size(["torch"])], state="running")  # nothing after stage 1 ran yet
    page = parse(html)
    assert "searching" in page.section_text["tune"]
    assert "not reached its sensitivity stage yet" in page.section_text["sensitivity"]
    html = report(settings, jobs)
    assert "<b>x</b>" not in html
    page = parse(html)
    assert evil in page.svg_text["sensitivity"] and evil in page.section_text["tune"]


def test_a_tune_across_runtimes_draws_a_sensitivity_chart_per_runtime_and_each_fp32() -> None:
    settings, jobs = fabricated_tune(runtimes=("torch", "onnxruntime"))
    view = tune_view(TuneInput(settings, jobs, "succeeded"))
    assert [s.runtime for s in view.sensitivities] == ["torch", "onnxruntime"]
    assert all([x.name for x in s.layers] == BY_LOSS for s in view.sensitivities)
    chosen = view.answer.chosen
    assert chosen is not None and chosen["runtime"] == "onnxruntime" and chosen["fallback"] == ["conv2", "conv3"]
    marked = {s.runtime: [x.name for x in s.layers if x.fallback] for s in view.sensitivities}
    assert marked == {"torch": [], "onnxruntime": ["conv2", "conv3"]}  # only on the chosen recipe's runtime
    page = parse(report(settings, jobs))
    assert page.svg_labels["sensitivity"] == ["Layer sensitivity on torch", "Layer sensitivity on onnxruntime"]
    trail = page.svg_text["trail"]
    assert {"fp32 on torch (1.00 ms)", "fp32 on onnxruntime (0.800 ms)", "torch", "onnxruntime"} <= set(trail)


def test_farm_report_tells_a_tune_from_a_plain_sweep(sweep_home: Path, tmp_path: Path) -> None:
    from farm.jobs import sweeps
    from farm.report import write_report
    from farm.routing import Pools
    from farm.store.migrate import open_database
    from tests.sweeps import TOY_DATA, TOY_MLP
    from tests.unit.test_sweep_operations import FakeBroker

    settings = TuneSettings("cosine", min_metric=0.999)
    text = tune_text(model=TOY_MLP, dataset=TOY_DATA, method="dynamic", runtimes=["torch"], settings=settings,
                     batch_size=1, threads=1)  # fmt: skip
    db = open_database()
    tune = sweeps.submit(db, FakeBroker(), plan_tune(text, yaml.safe_load(text)), Pools())
    plain = sweeps.submit(db, FakeBroker(), sweeps.load_plan(str(_spec(tmp_path)), False, Pools()), Pools())
    tuned = parse(write_report(db, tune.sweep_id, tmp_path / "t.html").read_text())
    assert tuned.section_ids[:4] == ["summary", "tune", "sensitivity", "trail"]
    assert "cosine >= 0.999" in tuned.section_text["tune"] and "No answer" in tuned.section_text["tune"]
    page = parse(write_report(db, plain.sweep_id, tmp_path / "p.html").read_text())
    assert "tune" not in page.section_ids and "trail" not in page.section_ids


def _spec(tmp_path: Path) -> Path:
    from tests.sweeps import TOY_DATA, TOY_MLP, write_spec

    return write_spec(tmp_path, f"name: plain\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\nmethods: [fp32]\n")
