"""farm tune's planning, stages and answer as pure functions: stage 1 planned up front, each expander run on fake
results of the jobs it waits for (farm.store.expansion.InputJob), the budget, and the answer's choice."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import yaml

from farm.errors import ConfigError
from farm.jobs import tune_stages
from farm.jobs.stages import Stage, expander_named
from farm.jobs.tune_answer import choose
from farm.jobs.tune_plan import TuneSettings, budget_per_runtime, plan_tune, settings_of, tune_text
from farm.jobs.tune_spec import stage1_size
from farm.jobs.tune_timing import answer_rel_tol
from farm.store.expansion import InputJob

LAYERS = [
    ("conv1", "Conv2d", 500),
    ("conv2", "Conv2d", 4000),
    ("conv3", "Conv2d", 3000),
    ("fc1", "Linear", 100),
    ("fc2", "Linear", 10),
]
#: The metric each layer gives back when it alone is kept in floating point (conv2 hurts most when quantized).
GAIN = {"conv1": 0.2, "conv2": 3.0, "conv3": 1.0, "fc1": 0.5, "fc2": 0.1}


def plan_of(settings: TuneSettings, labelled: bool = True, **given: Any) -> Any:
    """Stage 1 of a tune of farm:digits-cnn (static, torch, batch 1) unless ``given`` says otherwise."""
    args: dict[str, Any] = {
        "model": "farm:digits-cnn",
        "dataset": "sklearn:digits",
        "method": "static",
        "runtimes": ["torch"],
        "batch_size": 1,
        "threads": 1,
        **given,
    }
    text = tune_text(settings=settings, **args)
    return plan_tune(text, yaml.safe_load(text), labelled=labelled)


def tune_plan(budget: int | None = None, good_enough: bool = False, runtimes: Sequence[str] = ("torch",)) -> Any:
    settings = TuneSettings("sqnr_db", min_metric=40.0, budget_jobs=budget, good_enough=good_enough)
    return plan_of(settings, runtimes=list(runtimes), max_time_s=0.2)


#: The stage expander that added each job :func:`run_chain` ran (by job key), as the store records it.
_ADDED_BY: dict[str, str] = {}


def as_input(job: Any, figures: dict[str, Any], i: int, state: str = "succeeded") -> InputJob:
    return InputJob(
        i,
        job.key,
        job.role,
        state,
        job.spec.to_dict() if hasattr(job.spec, "to_dict") else job.spec,
        job.device,
        job.reference_key,
        ("local", "all", None),
        figures,
        added_by=_ADDED_BY.get(job.key),
    )


def sqnr_of(job: Any, base: float = 37.0, per_layer: dict[str, float] | None = None) -> dict[str, Any]:
    """Fake figures: the base SQNR plus what each layer kept in fp gives back; slower with more fp layers."""
    layers = [r.name for r in job.spec.method.layers]
    gain = per_layer if per_layer is not None else GAIN
    value = base + sum(gain[n] for n in layers)
    p50 = 0.10 + 0.05 * len(layers)
    return {
        "sqnr_db": value,
        "cosine": 0.999,
        "health": "ok",
        "latency_p50_ms": p50,
        "latency_p50_ci_low_ms": p50 - 0.005,
        "latency_p50_ci_high_ms": p50 + 0.005,
        "size_bytes": 1000,
    }


def run_chain(
    plan: Any, figures: Callable[[Any], dict[str, Any]], reference: dict[str, Any] | None = None
) -> tuple[list[Any], list[str]]:
    """Run stage after stage as the scheduler would: every job succeeds with ``figures`` (the references with
    ``reference``, or none); returns (every planned job, the stages run in order)."""
    jobs = list(plan.jobs)

    def of(j: Any) -> dict[str, Any]:
        return figures(j) if j.role == "trial" else (reference or {}) if j.role == "reference" else {}

    results = {j.key: as_input(j, of(j), n) for n, j in enumerate(jobs, 1)}
    stage = jobs[-1]
    ran = []
    while stage is not None:
        ran.append(stage.expander)
        inputs = [results[k] for k in stage.depends_on if k in results]
        by = stage.expander
        added = expander_named(by)(Stage(stage.key, by, stage.params), inputs)
        stage = None
        for j in added:
            _ADDED_BY[j.key] = by
            jobs.append(j)
            results[j.key] = as_input(j, of(j), len(jobs))
            if j.role == "stage":
                stage = j
    return jobs, ran


@pytest.fixture(autouse=True)
def fixed_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tune_stages, "list_layers", lambda spec: list(LAYERS))


def test_stage_one_is_the_reference_the_global_recipes_and_the_sensitivity_stage() -> None:
    """One fp32 reference, on the test split: the validation-split jobs carry it to their split themselves
    (farm.jobs.fp32_reference.on_split), so torch's budget keeps a job for its verify."""
    plan = tune_plan()
    roles = [(j.role, j.spec.split) for j in plan.jobs]
    assert roles == [("reference", "test"), ("trial", "test"), ("trial", "test"), ("stage", "test")]
    globals_ = [j for j in plan.jobs if j.role == "trial"]
    assert sorted(j.spec.method.granularity for j in globals_) == ["per_channel", "per_tensor"]
    assert all(j.reference_key == plan.jobs[0].key for j in globals_)
    assert plan.jobs[-1].expander == "tune_sensitivity" and len(plan.jobs) == 4
    params = plan.jobs[-1].params
    assert params["references"] == {"test": plan.jobs[0].key, "validation": plan.jobs[0].key}
    assert "tune:" in plan.text
    # A tune of one method keeps the stage parameters (so the stage job's key) it had before several could be
    # searched: a tune stored then is resumed, not started again.
    assert params["method"] == "static" and "methods" not in params


def test_a_budget_below_stage_one_and_bad_targets_are_refused() -> None:
    with pytest.raises(ConfigError, match="below stage 1's 4 jobs"):
        tune_plan(budget=3)
    with pytest.raises(ConfigError, match="ranges"):
        settings_of({"metric": "cosine", "min_metric": 1.5})
    with pytest.raises(ConfigError, match="no labels"):
        plan_of(TuneSettings("accuracy", max_accuracy_drop=0.01), labelled=False, threads=None)


def test_a_runtime_that_runs_one_granularity_gets_one_global_recipe() -> None:
    """OpenVINO's dynamic int8 is per channel whatever a job asks: a tune plans its per-channel global only (the
    per-tensor one built the same model, a job of its budget spent twice); a fixed granularity plans one anywhere."""
    settings = TuneSettings("cosine", min_metric=0.99)
    plan = plan_of(settings, method="dynamic", runtimes=["torch", "openvino"], max_time_s=0.2)
    globals_ = sorted(
        (j.spec.method.runtime, j.spec.method.granularity)
        for j in plan.jobs
        if j.role == "trial" and j.spec.method.method == "dynamic"
    )
    assert globals_ == [("openvino", "per_channel"), ("torch", "per_channel"), ("torch", "per_tensor")]
    assert len(plan.jobs) == stage1_size(["torch", "openvino"], "dynamic") == 1 + 2 + (1 + 1) + 1
    with pytest.raises(ConfigError, match="below stage 1's 6 jobs"):
        plan_of(
            TuneSettings("cosine", min_metric=0.99, budget_jobs=5), method="dynamic", runtimes=["torch", "openvino"]
        )
    text = tune_text(
        model="farm:digits-cnn", dataset="sklearn:digits", method="static", runtimes=["torch", "openvino"],
        settings=settings, batch_size=1, threads=1,
    )  # fmt: skip
    data = yaml.safe_load(text)
    data["methods"] = [{"static": {"granularity": "per_tensor"}}]
    fixed = plan_tune(yaml.safe_dump(data), data, labelled=True)
    assert len(fixed.jobs) == stage1_size(["torch", "openvino"], "static", "per_tensor") == 1 + 1 + (1 + 1) + 1
    assert {j.spec.method.granularity for j in fixed.jobs if j.role == "trial" and j.spec.method.method != "fp32"} == {
        "per_tensor"
    }
    assert stage1_size(["torch", "openvino"], "static") == 1 + 2 + (2 + 1) + 1  # static runs either on OpenVINO


def test_the_search_ranks_layers_on_validation_and_falls_back_the_most_sensitive_k_at_once() -> None:
    jobs, ran = run_chain(tune_plan(), sqnr_of)
    assert ran == ["tune_sensitivity", "tune_candidates", "tune_refine", "tune_verify", "tune_answer"]
    sens = [j for j in jobs if j.role == "trial" and j.spec.split == "validation"]
    assert sorted(r.name for j in sens for r in j.spec.method.layers) == sorted(n for n, _, _ in LAYERS)
    assert all(j.reference_key == jobs[0].key for j in sens)  # the one fp32 reference, carried to validation
    # Base per channel (the better of the two globals: equal here, the first wins), k = 1, 2, 4 most sensitive,
    # screened (pinned): 5 layers allow torch 13 jobs, stage 1 (3), sensitivity (6) and candidates (3) leave one
    # for the verify job, which times the answer (k = 1: 37 + 3 = 40 meets) as the tune's benchmark says.
    cands = [j for j in jobs if j.role == "trial" and j.spec.split == "test" and j.spec.method.layers]
    fallbacks = [[r.name for r in j.spec.method.layers] for j in cands]
    assert fallbacks == [["conv2"], ["conv2", "conv3"], ["conv2", "conv3", "fc1", "conv1"], ["conv2"]]
    assert [j.spec.benchmark.isolation for j in cands] == ["pinned", "pinned", "pinned", "exclusive"]
    # A screened timing settles at the stability bar (5 %); the verify job's at the tune's own 2 %.
    assert [j.spec.benchmark.rel_tol for j in cands] == [0.05, 0.05, 0.05, 0.02]
    # The global int8 recipes only rank: they are screened (pinned); the fp32 reference keeps the tune's
    # benchmark (exclusive).
    globals_ = [j for j in jobs if j.role == "trial" and j.spec.split == "test" and not j.spec.method.layers]
    assert globals_ and all(j.spec.benchmark.isolation == "pinned" for j in globals_)
    assert all(j.spec.benchmark.rel_tol == 0.05 for j in globals_)
    assert jobs[0].spec.benchmark.isolation == "exclusive" and jobs[0].spec.benchmark.rel_tol == 0.02
    assert len([j for j in jobs if j.role != "stage"]) == budget_per_runtime(len(LAYERS))


EIGHT = [(f"l{i}", "Linear", 100 + i) for i in range(8)]
NAMES8 = [n for n, _, _ in EIGHT]


def test_the_candidate_the_answer_would_be_is_timed_again_as_the_tunes_benchmark_says() -> None:
    from farm.jobs.tune_answer import answer_of

    tune_stages.list_layers = lambda spec: list(EIGHT)  # type: ignore[assignment]  # fixture restores it
    # 37 + 0.7 k meets 40 from k = 5: candidates 1, 2, 4 miss; 8 layers make 18 jobs, 12 of them stage 1 and
    # sensitivity, 3 candidates: refine keeps one for the verify stage and tries two k's (5, 7) between 4 and 8.
    gain = {n: 0.7 for n, _, _ in EIGHT}
    jobs, ran = run_chain(tune_plan(), lambda j: sqnr_of(j, per_layer=gain))
    assert ran == ["tune_sensitivity", "tune_candidates", "tune_refine", "tune_verify", "tune_answer"]
    tested = [j for j in jobs if j.role == "trial" and j.spec.split == "test" and j.spec.method.layers]
    assert [(len(j.spec.method.layers), j.spec.benchmark.isolation) for j in tested] == [
        (1, "pinned"),
        (2, "pinned"),
        (4, "pinned"),
        (5, "pinned"),
        (7, "pinned"),
        (5, "exclusive"),  # the fastest that meets, once more: the verify stage's one job
    ]
    assert len([j for j in jobs if j.role != "stage"]) == budget_per_runtime(len(EIGHT))
    inputs = [as_input(j, sqnr_of(j, per_layer=gain) if j.role == "trial" else {}, n) for n, j in enumerate(jobs, 1)]
    answer = answer_of(inputs, SETTINGS)
    assert answer.met and answer.chosen is not None
    assert len(answer.chosen["fallback"]) == 5 and answer.chosen["isolation"] == "exclusive"


def test_candidates_that_take_the_last_jobs_are_timed_as_the_answer_is() -> None:
    from farm.jobs.tune_answer import answer_of

    five = [(f"l{i}", "Conv2d", 100 + i) for i in range(5)]
    tune_stages.list_layers = lambda spec: list(five)  # type: ignore[assignment]  # fixture restores it
    # --budget-jobs 13: stage 1 (4 with its stage job), the sensitivity and candidates stage jobs and the answer's
    # take 7, sensitivity gets 3 and the candidates k = 1, 2, 4 the last 3, so no verify job could follow: the
    # candidates are not screened but timed as the tune's benchmark says.
    gain = {n: 1.5 for n, _, _ in five}
    jobs, ran = run_chain(tune_plan(budget=13), lambda j: sqnr_of(j, per_layer=gain))
    assert len(jobs) <= 13 and len([j for j in jobs if j.role != "stage"]) == 8
    tested = [j for j in jobs if j.role == "trial" and j.spec.split == "test" and j.spec.method.layers]
    assert [(len(j.spec.method.layers), j.spec.benchmark.isolation) for j in tested] == [
        (1, "exclusive"),
        (2, "exclusive"),
        (4, "exclusive"),
    ]
    inputs = [as_input(j, sqnr_of(j, per_layer=gain) if j.role == "trial" else {}, n) for n, j in enumerate(jobs, 1)]
    answer = answer_of(inputs, SETTINGS)
    assert answer.met and answer.chosen is not None
    assert len(answer.chosen["fallback"]) == 2 and answer.chosen["isolation"] == "exclusive"


def test_refine_fans_out_the_ks_between_the_largest_failing_and_the_smallest_passing() -> None:
    flat16 = [(f"l{i}", "Linear", 100 + i) for i in range(16)]
    gain16 = {n: 0.31 for n, _, _ in flat16}  # k >= 10 passes: powers 1..8 fail, refine between 8 and 16
    tune_stages.list_layers = lambda spec: list(flat16)  # type: ignore[assignment]  # fixture restores it
    jobs, ran = run_chain(tune_plan(), lambda j: sqnr_of(j, per_layer=gain16))
    ks = [
        len(j.spec.method.layers)
        for j in jobs
        if j.role == "trial"
        and j.spec.split == "test"
        and j.spec.benchmark.isolation == "pinned"
        and j.spec.method.layers
    ]
    assert ks[:4] == [1, 2, 4, 8]
    refined = ks[4:]
    assert refined and all(8 < k < 16 for k in refined) and len(refined) <= math.log2(16)
    assert ran[-1] == "tune_answer"


@pytest.mark.parametrize("n_layers", [3, 5, 8, 16, 40])
def test_a_runtime_takes_at_most_layers_plus_two_log2_layers_plus_four_jobs(n_layers: int) -> None:
    layers = [(f"l{i}", "Linear", i + 1) for i in range(n_layers)]
    tune_stages.list_layers = lambda spec: list(layers)  # type: ignore[assignment]
    gain = {n: 0.35 for n, _, _ in layers}
    jobs, _ = run_chain(tune_plan(), lambda j: sqnr_of(j, per_layer=gain))
    engine_jobs = [j for j in jobs if j.role != "stage"]
    assert len(engine_jobs) <= budget_per_runtime(n_layers)


def test_budget_jobs_caps_sensitivity_to_the_layers_doing_the_most_work() -> None:
    jobs, _ = run_chain(tune_plan(budget=14), sqnr_of)
    validation = [j for j in jobs if j.role == "trial" and j.spec.split == "validation"]
    assert [j for j in validation if not j.spec.method.layers]  # the base itself, what the layers gain from
    sens = [j.spec.method.layers[0].name for j in validation if j.spec.method.layers]
    assert 1 <= len(sens) < len(LAYERS)
    assert sens == ["conv2", "conv3", "conv1"][: len(sens)]
    assert len(jobs) <= 14


@pytest.mark.parametrize("budget", [30, 32])
def test_a_binding_budget_is_spent_to_the_last_job(budget: int) -> None:
    # 16 layers where k >= 10 passes: unbounded, the search takes 32 jobs; a budget below that is spent exactly
    # (each stage keeps room only for the stage jobs still to come after it, not for every later stage).
    flat16 = [(f"l{i}", "Linear", 100 + i) for i in range(16)]
    gain16 = {n: 0.31 for n, _, _ in flat16}
    tune_stages.list_layers = lambda spec: list(flat16)  # type: ignore[assignment]  # fixture restores it
    jobs, ran = run_chain(tune_plan(budget=budget), lambda j: sqnr_of(j, per_layer=gain16))
    assert ran[-1] == "tune_answer" and len(jobs) == budget


def answer_for(jobs: list[Any], figures: Callable[[Any], dict[str, Any]]) -> Any:
    """The tune's answer once every job of ``jobs`` succeeded with ``figures`` (its trials')."""
    from farm.jobs.tune_answer import answer_of

    inputs = [as_input(j, figures(j) if j.role == "trial" else {}, n) for n, j in enumerate(jobs, 1)]
    return answer_of(inputs, SETTINGS)


def _global_answer_verified(jobs: list[Any]) -> None:
    """The global recipes were screened; the one that is the answer was timed again as the tune says."""

    tested = [j for j in jobs if j.role == "trial" and j.spec.split == "test" and j.spec.method.method != "fp32"]
    assert [j.spec.benchmark.isolation for j in tested] == ["pinned", "pinned", "exclusive"]
    assert not tested[-1].spec.method.layers and tested[-1].spec.method in (
        tested[0].spec.method,
        tested[1].spec.method,
    )
    answer = answer_for(jobs, lambda j: sqnr_of(j, base=45.0))
    assert answer.met and answer.chosen is not None
    assert (answer.chosen["stage"], answer.chosen["isolation"], answer.chosen["fallback"]) == (
        "verify",
        "exclusive",
        [],
    )


def test_good_enough_stops_after_stage_one_when_a_global_recipe_meets_the_target() -> None:
    jobs, ran = run_chain(tune_plan(good_enough=True), lambda j: sqnr_of(j, base=45.0))
    assert ran == ["tune_sensitivity", "tune_verify", "tune_answer"]
    assert not any(j.spec.split == "validation" and j.role == "trial" for j in jobs)
    _global_answer_verified(jobs)


def test_a_fastest_global_that_meets_the_target_leaves_nothing_to_search() -> None:
    jobs, ran = run_chain(tune_plan(), lambda j: sqnr_of(j, base=45.0))
    assert ran == ["tune_sensitivity", "tune_verify", "tune_answer"]
    _global_answer_verified(jobs)


def entry(
    job_id: int, p50: float, value: float, fallback: Sequence[str] = (), half: float = 0.005, **kw: Any
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "state": "succeeded",
        "fp32": False,
        "split": "test",
        "health": "ok",
        "fallback": list(fallback),
        "meets": value >= 40,
        "value": value,
        "sqnr_db": value,
        "latency": {"p50_ms": p50, "ci_low_ms": p50 - half, "ci_high_ms": p50 + half},
        "size_bytes": 100,
        **kw,
    }


SETTINGS = TuneSettings("sqnr_db", min_metric=40.0)


def test_the_answer_is_the_fastest_meeting_recipe() -> None:
    chosen, met = choose([entry(1, 0.10, 37), entry(2, 0.20, 41, ["a"]), entry(3, 0.15, 42, ["b"])], SETTINGS)
    assert met and chosen is not None and chosen["job_id"] == 3


def test_an_interval_tie_goes_to_the_simpler_recipe_and_never_to_one_slower_than_a_meeting_global() -> None:
    tied = [entry(1, 0.101, 41), entry(2, 0.100, 42, ["a"])]  # intervals overlap: the global (no fallback) wins
    chosen, _ = choose(tied, SETTINGS)
    assert chosen is not None and chosen["job_id"] == 1
    wide = [
        entry(1, 0.100, 41, half=0.001),
        entry(2, 0.099, 42, ["a"], half=0.001),
        entry(3, 0.105, 43, ["a", "b"], half=0.01),
    ]
    chosen, _ = choose(wide, SETTINGS)
    assert chosen is not None and chosen["job_id"] in (1, 2)
    assert chosen["latency"]["p50_ms"] <= 0.100


def test_screening_figures_give_way_once_a_candidate_was_verified() -> None:
    # A screened candidate reading faster than the verified one (a quieter moment) is not the answer once a
    # candidate was verified; before, it competes.
    screened = entry(5, 0.05, 42, ["conv2", "conv3"], isolation="pinned", stage="candidates")
    verified = entry(6, 0.16, 41, ["conv2"], isolation="exclusive", stage="verify")
    chosen, _ = choose([entry(1, 0.2, 41), screened, verified], SETTINGS)
    assert chosen is not None and chosen["job_id"] == 6
    chosen, _ = choose([entry(1, 0.2, 41), screened], SETTINGS)
    assert chosen is not None and chosen["job_id"] == 5
    # A verified candidate that no longer meets the target (a QAT retrained elsewhere) leaves the screened ones in.
    missed = entry(6, 0.16, 39.9, ["conv2"], isolation="exclusive", stage="verify")
    chosen, met = choose([entry(1, 0.2, 37), screened, missed], SETTINGS)
    assert met and chosen is not None and chosen["job_id"] == 5
    # Another runtime's candidates timed exclusively (they filled its bound) verified nothing: the screened ones
    # stay in, and the answer says how it was timed.
    filled = entry(7, 0.16, 41, ["conv2"], isolation="exclusive", stage="candidates", runtime="onnxruntime")
    chosen, met = choose([entry(1, 0.2, 37), screened, filled], SETTINGS)
    assert met and chosen is not None and (chosen["job_id"], chosen["isolation"]) == (5, "pinned")


@pytest.mark.parametrize("isolation", ["pinned", "none"])
def test_a_tune_timed_pinned_or_unisolated_throughout_verifies_nothing(isolation: str) -> None:
    tune_stages.list_layers = lambda spec: list(EIGHT)  # type: ignore[assignment]  # fixture restores it
    text = tune_text(model="farm:digits-cnn", dataset="sklearn:digits", method="static", runtimes=["torch"],
                     settings=SETTINGS, batch_size=1, threads=1, max_time_s=0.2)  # fmt: skip
    data = yaml.safe_load(text)
    data["benchmark"]["isolation"] = isolation
    text = yaml.safe_dump(data, sort_keys=False)
    jobs, ran = run_chain(
        plan_tune(text, data, labelled=True), lambda j: sqnr_of(j, per_layer={n: 0.7 for n in NAMES8})
    )
    assert ran[-2:] == ["tune_verify", "tune_answer"]
    tested = [j for j in jobs if j.role == "trial" and j.spec.split == "test" and j.spec.method.layers]
    assert tested and {j.spec.benchmark.isolation for j in tested} == {isolation}
    assert {j.spec.benchmark.rel_tol for j in tested} == {0.02}  # the answer's figures, settled as the tune asks
    assert len({j.key for j in tested}) == len(tested)  # screening timed them as the tune says: nothing twice


def test_when_no_recipe_meets_the_target_the_closest_is_verified() -> None:

    tune_stages.list_layers = lambda spec: list(EIGHT)  # type: ignore[assignment]  # fixture restores it
    figures = {n: 0.7 for n in NAMES8}
    jobs, ran = run_chain(tune_plan(), lambda j: sqnr_of(j, base=20.0, per_layer=figures))
    assert "tune_verify" in ran
    tested = [j for j in jobs if j.role == "trial" and j.spec.split == "test" and j.spec.method.layers]
    assert [j.spec.benchmark.isolation for j in tested[:-1]] == ["pinned"] * (len(tested) - 1)  # screened
    closest = max(tested[:-1], key=lambda j: len(j.spec.method.layers))  # 20 + 0.7 k: the most layers in fp32
    assert tested[-1].spec.benchmark.isolation == "exclusive" and tested[-1].spec.method == closest.spec.method
    answer = answer_for(jobs, lambda j: sqnr_of(j, base=20.0, per_layer=figures))
    assert not answer.met and answer.chosen is not None
    assert (answer.chosen["stage"], answer.chosen["isolation"]) == ("verify", "exclusive")


def test_when_none_meets_the_answer_is_the_closest_with_its_shortfall() -> None:
    from farm.jobs.tune_answer import answer_of

    chosen, met = choose([entry(1, 0.1, 37), entry(2, 0.2, 39.5, ["a"]), entry(3, 0.1, 38, state="failed")], SETTINGS)
    assert not met and chosen is not None and chosen["job_id"] == 2
    assert answer_of([], SETTINGS).chosen is None


def test_the_output_a_tune_measures_reaches_every_job() -> None:
    # A sentence encoder is tuned on its embedding, not its logits (farm tune --model-output embedding).
    encoder = {"model": "farm:tiny-encoder?dim=32&heads=4", "dataset": "tokens:16", "method": "dynamic"}
    plan = plan_of(TuneSettings("cosine", min_metric=0.999), labelled=False, output="embedding", **encoder)
    engine = [j for j in plan.jobs if j.role != "stage"]
    assert engine and all(j.spec.output == "embedding" for j in engine)
    assert all(j.spec.model == "farm:tiny-encoder?dim=32&heads=4" for j in engine)


def test_each_stage_hands_out_the_slowest_runtimes_jobs_first() -> None:
    """Longest processing time first: a stage's jobs are released slowest runtime first (by how long the previous
    stage's jobs took on each), so a pool does not end a stage with one process on a long job and the rest idle."""
    import dataclasses

    took = {"torch": 0.5, "onnxruntime": 0.2, "openvino": 3.0}
    plan = tune_plan(runtimes=("torch", "onnxruntime", "openvino"))
    jobs = list(plan.jobs)

    def ran(job: Any, n: int) -> InputJob:
        done = as_input(job, sqnr_of(job, base=36.0) if job.role == "trial" else {}, n)
        return dataclasses.replace(done, duration_s=took[job.spec.method.runtime] if job.role == "trial" else 0.0)

    results = {j.key: ran(j, n) for n, j in enumerate(jobs, 1)}
    stage, orders = jobs[-1], []
    while stage is not None:
        inputs = [results[k] for k in stage.depends_on if k in results]
        added = expander_named(stage.expander)(Stage(stage.key, stage.expander, stage.params), inputs)
        orders.append([j.spec.method.runtime for j in added if j.role == "trial"])
        stage = next((j for j in added if j.role == "stage"), None)
        for j in added:
            _ADDED_BY[j.key] = stage.expander
            jobs.append(j)
            results[j.key] = ran(j, len(jobs))
    assert len([o for o in orders if len(o) > 1]) >= 2  # sensitivity and candidates at least
    for order in orders:
        assert order == sorted(order, key=lambda r: -took[r])  # openvino's, then torch's, then onnxruntime's
        assert len(set(order)) in (0, 3) or len(order) == 1  # the verify stage adds one job
    # Stage 1 has no earlier stage to go by: the runtimes whose builds are known to take longest come first, and
    # a runtime's quantized recipes before its fp32 export.
    first = [(j.spec.method.runtime, j.spec.method.method) for j in plan.jobs if j.role == "trial"]
    assert first == [
        ("openvino", "static"),
        ("openvino", "static"),
        ("openvino", "fp32"),
        ("torch", "static"),
        ("torch", "static"),
        ("onnxruntime", "static"),
        ("onnxruntime", "static"),
        ("onnxruntime", "fp32"),
    ]


def test_where_a_global_meets_the_target_candidates_leave_its_verify_job_room() -> None:

    # Per tensor meets 40 (the bar, 0.10 ms); per channel misses (37) but is not clearly slower (0.09 ms): it is
    # the base searched. Five layers leave torch one job after k = 1, 2, 4: the verify job's, so the candidates
    # are screened, and the per-tensor global (still the fastest that meets) is timed again.
    def figures(job: Any) -> dict[str, Any]:
        f = sqnr_of(job)
        if not job.spec.method.layers and job.spec.method.granularity == "per_tensor":
            f.update(sqnr_db=40.5)
        elif not job.spec.method.layers:
            f.update(latency_p50_ms=0.09, latency_p50_ci_low_ms=0.085, latency_p50_ci_high_ms=0.095)
        return f

    jobs, ran = run_chain(tune_plan(), figures)
    assert ran[-2:] == ["tune_verify", "tune_answer"]
    tested = [j for j in jobs if j.role == "trial" and j.spec.split == "test" and j.spec.method.method != "fp32"]
    cands = [j for j in tested if j.spec.method.layers]
    assert [len(j.spec.method.layers) for j in cands] == [1, 2, 4]
    assert {j.spec.benchmark.isolation for j in cands} == {"pinned"}
    verified = tested[-1]
    assert verified.spec.benchmark.isolation == "exclusive" and not verified.spec.method.layers
    assert verified.spec.method.granularity == "per_tensor"
    assert len([j for j in jobs if j.role != "stage"]) <= budget_per_runtime(len(LAYERS))
    answer = answer_for(jobs, figures)
    assert answer.met and answer.chosen is not None
    assert (answer.chosen["stage"], answer.chosen["isolation"], answer.chosen["fallback"]) == (
        "verify",
        "exclusive",
        [],
    )


def test_a_budget_that_leaves_no_room_for_verify_ends_after_stage_one() -> None:
    # Stage 1 is 4 jobs; a budget of 5 has no room for a verify job and its stage job: the answer follows at once.
    jobs, ran = run_chain(tune_plan(budget=5, good_enough=True), lambda j: sqnr_of(j, base=45.0))
    assert ran == ["tune_sensitivity", "tune_answer"] and len(jobs) == 5
    jobs, ran = run_chain(tune_plan(budget=7, good_enough=True), lambda j: sqnr_of(j, base=45.0))
    assert ran == ["tune_sensitivity", "tune_verify", "tune_answer"] and len(jobs) == 7


def timed(p50: float, half: float, **figures: Any) -> dict[str, Any]:
    return {"health": "ok", "latency_p50_ms": p50, "latency_p50_ci_low_ms": p50 - half,
            "latency_p50_ci_high_ms": p50 + half, **figures}  # fmt: skip


def test_the_verify_job_is_timed_beside_every_other_runtimes_fp32_that_may_be_the_fastest() -> None:
    """ "Faster than fp32 on any runtime" rests on side-by-side timings: the verify job's ``benchmark.rivals`` names
    each other runtime whose fp32 p50 interval reaches the fastest fp32's (not one clearly slower)."""
    from farm.jobs.tune_answer import answer_of, chosen_json

    fp32 = {"onnxruntime": timed(0.50, 0.04), "openvino": timed(0.53, 0.04), "torch": timed(0.90, 0.05)}

    def figures(j: Any) -> dict[str, Any]:
        if j.spec.method.method == "fp32":
            return fp32[j.spec.method.runtime]
        return sqnr_of(j, base=40.5 if j.spec.method.runtime == "torch" else 37.0)  # torch's globals meet 40

    plan = tune_plan(runtimes=("torch", "onnxruntime", "openvino"))
    jobs, ran = run_chain(plan, figures, reference=fp32["torch"])
    assert ran[-2:] == ["tune_verify", "tune_answer"]
    verify = [j for j in jobs if _ADDED_BY.get(j.key) == "tune_verify" and j.role == "trial"]
    assert [(j.spec.method.runtime, j.spec.benchmark.rivals) for j in verify] == [
        ("torch", ("onnxruntime", "openvino"))
    ]
    assert verify[0].spec.benchmark.to_dict()["rivals"] == ["onnxruntime", "openvino"]  # part of its key
    # Its result carries the side-by-side speedups; the answer reports them beside the jobs timed apart.
    rivals = [
        {"runtime": "onnxruntime", "speedup": 1.2, "speedup_ci_low": 1.1, "speedup_ci_high": 1.3},
        {"runtime": "openvino", "speedup": 0.8, "speedup_ci_low": 0.7, "speedup_ci_high": 0.9},
    ]
    inputs = []
    for n, j in enumerate(jobs, 1):
        if j in verify:
            f = {**figures(j), "speedup": 3.0, "speedup_ci_low": 2.9, "speedup_ci_high": 3.1, "rivals": rivals}
        else:
            f = figures(j) if j.role == "trial" else fp32["torch"] if j.role == "reference" else {}
        inputs.append(as_input(j, f, n))
    answer = answer_of(inputs, SETTINGS)
    assert answer.chosen is not None and answer.chosen["stage"] == "verify"
    over = {o["runtime"]: o for o in chosen_json(answer.chosen, SETTINGS, answer.trail)["over_fp32"]}
    assert over["torch"] == {"runtime": "torch", "speedup": 3.0, "speedup_ci": [2.9, 3.1], "side_by_side": True}
    assert over["onnxruntime"]["speedup_ci"] == [1.1, 1.3] and over["onnxruntime"]["side_by_side"]
    # OpenVINO's fp32 is faster side by side (interval below 1), though the jobs timed apart overlap: say so.
    assert answer.fp32_faster is not None and answer.fp32_faster["runtime"] == "openvino"
    references = [e for e in answer.trail if e["reference"]]
    assert {(e["runtime"], e["fp32"], e["split"]) for e in references} == {("torch", True, "test")}


def test_an_fp32_timed_on_another_device_is_no_rival() -> None:
    """TensorRT's fp32 ran on the GPU: a CPU answer's process cannot time it where it ran, however fast it is."""
    from farm.jobs.tune_answer import fp32_rivals

    def fp32(runtime: str, device: str, p50: float) -> dict[str, Any]:
        lat = {"p50_ms": p50, "ci_low_ms": p50 * 0.95, "ci_high_ms": p50 * 1.05}
        return {"runtime": runtime, "device": device, "fp32": True, "state": "succeeded", "split": "test",
                "latency": lat}  # fmt: skip

    entries = [fp32("tensorrt", "cuda", 0.05), fp32("openvino", "cpu", 0.50), fp32("onnxruntime", "cpu", 0.52),
               fp32("torch", "cpu", 0.90)]  # fmt: skip
    assert fp32_rivals(entries, "torch", "cpu") == ("onnxruntime", "openvino")
    assert fp32_rivals(entries, "openvino", "cpu") == ("onnxruntime",)
    assert fp32_rivals(entries, "tensorrt", "cuda") == ()


def test_a_tune_planned_before_screening_settled_looser_verifies_at_its_screened_specs_rel_tol() -> None:
    # Its stage parameters carry no rel_tol; it screened at the tune's own, which its picked spec still holds.
    text = tune_text(model="farm:digits-cnn", dataset="sklearn:digits", method="static", runtimes=["torch"],
                     settings=SETTINGS, batch_size=1, threads=1)  # fmt: skip
    data = yaml.safe_load(text)
    data["benchmark"]["rel_tol"] = 0.01
    spec = plan_tune(yaml.safe_dump(data, sort_keys=False), data, labelled=True).jobs[0].spec
    assert answer_rel_tol({}, spec) == 0.01
    assert answer_rel_tol({"rel_tol": 0.03}, spec) == 0.03


# --- several methods ------------------------------------------------------------------------------------------


def two_methods(j: Any, static_p50: float = 0.10, static_base: float = 37.0) -> dict[str, Any]:
    """Static int8 faster than dynamic (0.10 against 0.20 ms) and 1 dB worse (37 against 38 dB) unless told."""
    if j.spec.method.method == "static":
        f = sqnr_of(j, base=static_base)
        shift = static_p50 - 0.10
    else:
        f = sqnr_of(j, base=38.0)
        shift = 0.10
    for k in ("latency_p50_ms", "latency_p50_ci_low_ms", "latency_p50_ci_high_ms"):
        f[k] += shift
    return f


def test_a_tune_of_several_methods_plans_each_ones_globals_on_the_runtimes_that_run_it() -> None:
    settings = TuneSettings("sqnr_db", min_metric=40.0)
    plan = plan_of(settings, method=["static", "qat"], runtimes=["torch", "openvino"], max_time_s=0.2)
    globals_ = sorted(
        (j.spec.method.runtime or "torch", j.spec.method.method)
        for j in plan.jobs
        if j.role == "trial" and j.spec.method.method != "fp32"
    )
    # OpenVINO runs static, not QAT: its QAT globals are not planned (and the tune is no error).
    assert globals_ == sorted([("openvino", "static")] * 2 + [("torch", "static")] * 2 + [("torch", "qat")] * 2)
    sizes = {"static": None, "qat": None}
    assert len(plan.jobs) == stage1_size(["torch", "openvino"], methods=sizes) == 1 + 4 + (2 + 1) + 1
    assert plan.jobs[-1].params["methods"] == ["static", "qat"]
    assert "static+qat" in yaml.safe_load(plan.text)["name"]
    # One order whatever the flags': the same search is the same tune (its spec text names it).
    again = plan_of(settings, method=["qat", "static"], runtimes=["torch", "openvino"], max_time_s=0.2)
    assert again.text == plan.text


@pytest.mark.parametrize(
    ("methods", "runtimes", "message"),
    [
        (["static", "static"], ["torch"], "--method static: give each"),
        (["dynamic", "qat"], ["torch", "tensorrt"], "runtime tensorrt runs none of dynamic, qat"),
        (["dynamic", "qat"], ["openvino"], r"no runtime asked \(openvino\) runs qat"),
        (["qat"], ["openvino"], "cannot run method 'qat'"),
    ],
)
def test_a_method_twice_or_a_runtime_that_runs_none_of_them_is_refused(
    methods: list[str], runtimes: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_of(TuneSettings("sqnr_db", min_metric=40.0), method=methods, runtimes=runtimes)


def test_a_spec_listing_a_method_twice_is_refused() -> None:
    text = tune_text(
        model="farm:digits-cnn", dataset="sklearn:digits", method="static", runtimes=["torch"],
        settings=TuneSettings("sqnr_db", min_metric=40.0), batch_size=1, threads=1,
    )  # fmt: skip
    data = yaml.safe_load(text)
    data["methods"] = ["static", {"static": {"granularity": "per_tensor"}}]
    with pytest.raises(ConfigError, match="static is listed twice"):
        plan_tune(yaml.safe_dump(data), data, labelled=True)


def test_each_method_is_its_own_line_and_the_faster_one_can_be_the_answer() -> None:
    """Dynamic scores higher globally (38 against 37 dB), static runs at half its latency: a search that fell back
    from the best-scoring global alone would never try static. Both lines are searched, each within its own bound,
    and the answer is static with its most sensitive layer in floating point (40 dB, 0.15 ms), not dynamic's."""
    from farm.jobs.tune_answer import answer_of

    settings = TuneSettings("sqnr_db", min_metric=40.0)
    plan = plan_of(settings, method=["dynamic", "static"], max_time_s=0.2)
    jobs, ran = run_chain(plan, two_methods)
    assert ran == ["tune_sensitivity", "tune_candidates", "tune_refine", "tune_verify", "tune_answer"]
    sens = [j for j in jobs if j.role == "trial" and j.spec.split == "validation"]
    assert sorted({j.spec.method.method for j in sens}) == ["dynamic", "static"]
    candidates = next(j for j in jobs if j.role == "stage" and j.expander == "tune_candidates")
    assert sorted(candidates.params["bases"]) == ["torch/dynamic", "torch/static"]
    assert set(candidates.params["layers"]) == {"dynamic", "static"}
    for method in ("dynamic", "static"):  # the torch fp32 reference counts in each line, as in a one-method tune
        mine = [j for j in jobs if j.role == "reference" or (j.role == "trial" and j.spec.method.method == method)]
        assert len(mine) <= budget_per_runtime(len(LAYERS))
    inputs = [as_input(j, two_methods(j) if j.role == "trial" else {}, n) for n, j in enumerate(jobs, 1)]
    chosen = answer_of(inputs, settings, "succeeded").chosen
    assert chosen is not None
    assert (chosen["method"], chosen["fallback"], chosen["sqnr_db"]) == ("static", ["conv2"], 40.0)


def test_a_method_another_beats_on_both_counts_on_the_same_runtime_is_not_searched() -> None:
    """Static both faster and scoring as well as dynamic on torch: falling dynamic's layers back can't win."""
    plan = plan_of(TuneSettings("sqnr_db", min_metric=40.0), method=["dynamic", "static"], max_time_s=0.2)
    jobs, _ = run_chain(plan, lambda j: two_methods(j, static_base=38.0))
    sens = [j for j in jobs if j.role == "trial" and j.spec.split == "validation"]
    assert sens and {j.spec.method.method for j in sens} == {"static"}
    later = [j for j in jobs if j.role == "trial" and j.spec.method.layers]
    assert {j.spec.method.method for j in later} == {"static"}


SIZE = TuneSettings("sqnr_db", min_metric=40.0, objective="size")


def simulated_sqnr(job: Any, base: float = 30.0) -> dict[str, Any]:
    """A simulated int4 recipe: each layer raised to int8 gives back its GAIN x 3; smaller with fewer int8 layers."""
    figures = sqnr_of(job, base=base, per_layer={n: 3 * g for n, g in GAIN.items()})
    return {**figures, "simulated": True, "size_bytes": 100 + 50 * len(job.spec.method.layers), "speedup": None}


def test_a_simulated_base_falls_its_layers_back_to_int8_not_to_floating_point() -> None:
    """A size search at int4 (NNCF's 4/8-bit mixed precision): the layers it falls back go to int8, every layer at
    int8 is a candidate of its own (unlike every layer in fp32, it may miss), and the answer says so."""
    from farm.jobs.tune_plan import info

    plan = plan_of(SIZE, bits=4)
    assert {j.spec.method.bits for j in plan.jobs if j.role == "trial"} == {4}
    jobs, ran = run_chain(plan, simulated_sqnr)
    assert ran[-1] == "tune_answer"
    raised = [j for j in jobs if j.role == "trial" and j.spec.method.layers]
    assert raised and all(r.bits == 8 and not r.skip for j in raised for r in j.spec.method.layers)
    sens = [j for j in raised if j.spec.split == "validation"]
    assert sorted(j.spec.method.layers[0].name for j in sens) == sorted(n for n, _, _ in LAYERS)
    tested = [j for j in raised if j.spec.split == "test"]
    assert [len(j.spec.method.layers) for j in tested] == [1, 2, 4, 5]  # k = 5: every layer at int8
    # Its latency is claimed nowhere: every candidate is screened, and no verify job times the answer again.
    assert {j.spec.benchmark.isolation for j in tested} == {"pinned"} and "tune_verify" in ran
    # 30 + 3 x (3.0 + 1.0) = 42 with conv2 and conv3 at int8 meets 40; 30 + 9 = 39 with conv2 alone does not.
    answer = answer_for(jobs, simulated_sqnr)
    assert answer.met and answer.chosen is not None
    assert answer.chosen["fallback"] == ["conv2", "conv3"] and answer.chosen["fallback_to"] == "int8"
    assert answer.chosen["simulated"] and "int8" in answer.chosen["recipe"]
    as_job = as_input(next(j for j in raised if len(j.spec.method.layers) == 5), {}, 1)
    assert (len(info(as_job)["fallback"]), info(as_job)["fallback_to"]) == (5, "int8")


def test_a_simulated_search_that_misses_even_at_int8_everywhere_refines_nothing_past_it() -> None:
    """Every layer at int8 missed too: nothing lies between it and a k that passed (there is none), so refine adds
    no job, nothing is verified, and the closest recipe is the answer, with its shortfall."""
    jobs, ran = run_chain(plan_of(SIZE, bits=4), lambda j: simulated_sqnr(j, base=20.0))  # at most 20 + 14.4
    tested = [j for j in jobs if j.role == "trial" and j.spec.split == "test" and j.spec.method.layers]
    assert [len(j.spec.method.layers) for j in tested] == [1, 2, 4, 5]
    assert ran == ["tune_sensitivity", "tune_candidates", "tune_refine", "tune_verify", "tune_answer"]
    answer = answer_for(jobs, lambda j: simulated_sqnr(j, base=20.0))
    assert not answer.met and answer.chosen is not None and len(answer.chosen["fallback"]) == 5


def test_a_simulated_line_spends_its_verify_room_on_refine_within_the_bound() -> None:
    """16 layers at int4: every power of two and every layer at int8 (5 candidates), then as many refinements as a
    real int8 line gets (the verify job's room is theirs), within layers + 2 log2(layers) + 4."""
    flat16 = [(f"l{i}", "Linear", 100 + i) for i in range(16)]
    tune_stages.list_layers = lambda spec: list(flat16)  # type: ignore[assignment]  # fixture restores it

    def figures(j: Any) -> dict[str, Any]:  # k >= 10 at int8 meets 40 dB
        return {**sqnr_of(j, base=37.0, per_layer={n: 0.31 for n, _, _ in flat16}), "simulated": True}

    low, _ = run_chain(plan_of(SIZE, bits=4), figures)
    real, _ = run_chain(plan_of(SIZE), lambda j: sqnr_of(j, per_layer={n: 0.31 for n, _, _ in flat16}))

    def ks(jobs: list[Any]) -> list[int]:
        return [len(j.spec.method.layers) for j in jobs if j.role == "trial" and j.spec.split == "test"]

    assert ks(low)[:7] == [0, 0, 1, 2, 4, 8, 16] and len(ks(low)) == len(ks(real))
    refined = ks(low)[7:]
    assert len(refined) == 3 and all(8 < k < 16 for k in refined), ks(low)
    trials = [j for j in low if j.role in ("trial", "reference")]
    assert len(trials) <= budget_per_runtime(16)
    assert {j.spec.benchmark.isolation for j in low if j.role == "trial" and j.spec.method.layers} == {"pinned"}


def test_a_simulated_answer_claims_no_speed_over_fp32() -> None:
    from farm.jobs.tune_answer import fallback_words, over_fp32

    fp32 = {"runtime": "torch", "latency": {"p50_ms": 1.0}}
    chosen = {"runtime": "torch", "speedup": None, "latency": {"p50_ms": 2.0}, "simulated": True}
    assert over_fp32(chosen, fp32)["speedup"] is None
    assert over_fp32({**chosen, "simulated": False}, fp32)["speedup"] == 0.5  # two jobs timed apart
    assert fallback_words({"fallback_to": "int8"}) == "layers at int8"
    assert fallback_words({"fallback_to": "fp32"}, short=True) == "layers in fp"
    assert fallback_words({"fallback_to": None, "simulated": True}) == "layers at int8"  # a simulated global
    assert fallback_words({"fallback_to": "fp32", "simulated": True}) == "layers in fp32"  # a tune from before
