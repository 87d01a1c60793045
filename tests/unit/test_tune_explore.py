"""farm tune's explore stage (``--trials``): Optuna's multi-objective sampler asks which of the most sensitive layers
stay in floating point, run on fake results of the jobs each stage waits for (as tests/unit/test_tune_plan.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from farm.errors import ConfigError
from farm.jobs import tune_stages
from farm.jobs.stages import Stage, expander_named
from farm.jobs.tune_answer import choose, trail
from farm.jobs.tune_explore import MIN_SPACE
from farm.jobs.tune_plan import TuneSettings, settings_of
from tests.unit.test_tune_plan import LAYERS, plan_of, run_chain

pytest.importorskip("optuna")

MACS = {name: macs for name, _, macs in LAYERS}
#: What each layer gives back in floating point: conv2 alone misses 40.5, conv2 with conv3 (the k = 2 prefix) meets
#: it, and so does conv2 with fc1, a tenth of conv3's work: a recipe no prefix of the ranking reaches.
GAIN = {"conv1": 0.2, "conv2": 3.0, "conv3": 1.0, "fc1": 0.5, "fc2": 0.1}


@pytest.fixture(autouse=True)
def fixed_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tune_stages, "list_layers", lambda spec: list(LAYERS))


def figures(job: Any) -> dict[str, Any]:
    """Fake figures: 37 dB plus each fp layer's gain; every fp layer costs time in proportion to its work."""
    layers = [r.name for r in job.spec.method.layers]
    p50 = 0.10 + sum(MACS[n] for n in layers) / 10_000
    return {
        "sqnr_db": 37.0 + sum(GAIN[n] for n in layers),
        "health": "ok",
        "latency_p50_ms": p50,
        "latency_p50_ci_low_ms": p50 * 0.99,
        "latency_p50_ci_high_ms": p50 * 1.01,
        "size_bytes": 1000,
    }


def tune(trials: int | None, budget: int | None = None) -> Any:
    settings = TuneSettings("sqnr_db", min_metric=40.5, budget_jobs=budget, trials=trials)
    return plan_of(settings, max_time_s=0.2)


def fallbacks(jobs: list[Any], stage: str) -> list[frozenset[str]]:
    return [frozenset(r.name for r in j.spec.method.layers) for j in jobs if _added(j) == stage and j.role == "trial"]


def _added(job: Any) -> str | None:
    from tests.unit.test_tune_plan import _ADDED_BY

    return _ADDED_BY.get(job.key)


def test_explore_finds_a_faster_recipe_no_prefix_of_the_ranking_reaches() -> None:
    jobs, ran = run_chain(tune(trials=12), figures)
    assert ran[:3] == ["tune_sensitivity", "tune_candidates", "tune_refine"]
    assert ran[-2:] == ["tune_verify", "tune_answer"] and "tune_explore" in ran
    # The candidates: conv2 (misses), conv2+conv3 (meets), four layers; nothing between k = 1 and 2 to refine.
    assert fallbacks(jobs, "tune_candidates") == [
        {"conv2"},
        {"conv2", "conv3"},
        {"conv2", "conv3", "fc1", "conv1"},
    ]
    explored = fallbacks(jobs, "tune_explore")
    space = {"conv2", "conv3", "fc1", "conv1"}  # the ranking's first 2k (k = 2), at least MIN_SPACE
    assert len(space) >= MIN_SPACE
    assert explored and all(f <= space for f in explored)
    tried = [set(), *fallbacks(jobs, "tune_candidates")]
    assert len(set(explored)) == len(explored) and not any(f in tried for f in explored)  # each asked once
    # Each batch waits for the one before: the sampler learns from it.
    assert all(len(batch) <= 4 for batch in _batches(jobs))
    # The answer (verified, exclusive) is conv2+fc1: 40.5 dB at 0.51 ms, not the prefix's 41 dB at 0.80 ms.
    verified = [j for j in jobs if _added(j) == "tune_verify" and j.role == "trial"]
    assert [sorted(r.name for r in j.spec.method.layers) for j in verified] == [["conv2", "fc1"]]
    assert verified[0].spec.benchmark.isolation == "exclusive"


def _batches(jobs: list[Any]) -> list[list[Any]]:
    out: dict[str, list[Any]] = {}
    for j in jobs:
        if _added(j) == "tune_explore" and j.role == "trial":
            out.setdefault(j.depends_on[0], []).append(j)
    return list(out.values())


def test_without_trials_there_is_no_explore_stage_and_the_keys_are_as_before() -> None:
    _, ran = run_chain(tune(trials=None), figures)
    assert "tune_explore" not in ran
    # trials: 0 is no explore stage: the same stage jobs, the same keys (a stored tune is resumed).
    assert settings_of({"metric": "sqnr_db", "min_metric": 40.5, "trials": 0}).trials is None
    assert (
        tune(trials=None).jobs[-1].key
        == plan_of(settings_of({"metric": "sqnr_db", "min_metric": 40.5, "trials": 0}), max_time_s=0.2).jobs[-1].key
    )


def test_an_explore_stage_run_again_adds_the_same_jobs() -> None:
    jobs, _ = run_chain(tune(trials=4), figures)
    stage = next(j for j in jobs if j.role == "stage" and j.expander == "tune_explore")
    from tests.unit.test_tune_plan import as_input

    by_key = {j.key: as_input(j, figures(j) if j.role == "trial" else {}, n) for n, j in enumerate(jobs, 1)}
    inputs = [by_key[k] for k in stage.depends_on if k in by_key]
    first = expander_named("tune_explore")(Stage(stage.key, stage.expander, stage.params), inputs)
    again = expander_named("tune_explore")(Stage(stage.key, stage.expander, stage.params), inputs)
    assert [j.key for j in first] == [j.key for j in again] and len(first) > 1


def test_budget_jobs_caps_the_explore_trials_and_keeps_the_verify_jobs_room() -> None:
    unbounded, _ = run_chain(tune(trials=12), figures)
    counts = []
    for budget in range(12, len(unbounded) + 1):  # stage 1 (4 jobs with its stage job) up to no cap at all
        jobs, ran = run_chain(tune(trials=12, budget=budget), figures)
        assert len(jobs) <= budget and ran[-1] == "tune_answer", budget
        verified = [j for j in jobs if _added(j) == "tune_verify" and j.role == "trial"]
        plain, _ = run_chain(tune(trials=None, budget=budget), figures)
        if [j for j in plain if _exclusive(j)]:
            # Where a tune without trials times its answer as its benchmark says (verified, or candidates that
            # took the last jobs), one with them does too.
            assert [j for j in jobs if _exclusive(j)], budget
        counts.append(len(fallbacks(jobs, "tune_explore")))
        if counts[-1]:
            assert verified, budget  # explore trials are screened: the verify job kept its room
    # An explore stage keeps room for another only where one may follow: the unbounded run's budget allows every
    # trial it asked.
    assert counts == sorted(counts) and counts[0] == 0
    assert counts[-1] == len(fallbacks(unbounded, "tune_explore"))


def _exclusive(job: Any) -> bool:
    stages = ("tune_candidates", "tune_refine", "tune_verify")
    return job.role == "trial" and _added(job) in stages and job.spec.benchmark.isolation == "exclusive"


def test_a_failed_trial_is_told_as_failed_and_the_search_goes_on() -> None:
    def flaky(job: Any) -> dict[str, Any]:
        names = {r.name for r in job.spec.method.layers}
        return {} if names == {"conv2", "fc1"} else figures(job)  # no figures: a trial that failed to measure

    jobs, ran = run_chain(tune(trials=6), flaky)
    assert ran[-1] == "tune_answer"
    entries = trail([_as(j, flaky) for j in jobs], TuneSettings("sqnr_db", min_metric=40.5))
    pick, _ = choose([e for e in entries if e["split"] == "test" and not e["fp32"]], TuneSettings("sqnr_db", 40.5))
    assert pick is not None and pick["fallback"] != ["conv2", "fc1"]


def _as(job: Any, fn: Any) -> Any:
    from tests.unit.test_tune_plan import as_input

    return as_input(job, fn(job) if job.role == "trial" else {}, 0)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "4"])
def test_trials_must_be_a_whole_number_at_least_zero(bad: Any) -> None:
    with pytest.raises(ConfigError, match="tune.trials"):
        settings_of({"metric": "sqnr_db", "min_metric": 40.0, "trials": bad})


def test_every_stage_of_a_tune_is_found_by_name_in_a_fresh_process() -> None:
    """A farm worker's first stage job may be any stage (a resumed tune, another worker ran the ones before)."""
    import subprocess
    import sys

    from farm.jobs.tune_plan import STAGES

    for name in (s for s in STAGES if s != "global"):
        code = f"from farm.jobs.stages import expander_named\nexpander_named({name!r})"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (name, done.stderr)


def test_explore_trials_over_a_simulated_base_raise_layers_to_int8() -> None:
    settings = TuneSettings("sqnr_db", min_metric=40.5, objective="size", trials=4)
    jobs, ran = run_chain(plan_of(settings, bits=4), lambda j: {**figures(j), "simulated": True})
    explored = [j for j in jobs if _added(j) == "tune_explore" and j.role == "trial"]
    assert "tune_explore" in ran and explored
    assert all(r.bits == 8 and not r.skip for j in explored for r in j.spec.method.layers)


def test_a_worker_without_optuna_fails_the_explore_stage_saying_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """A farm worker installed without the engine extra: the stage job fails with the reason, not an import error."""
    import builtins

    real = builtins.__import__

    def no_optuna(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "optuna":
            raise ModuleNotFoundError("No module named 'optuna'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    with pytest.raises(ConfigError, match="needs Optuna on the worker"):
        run_chain(tune(trials=4), figures)


@pytest.mark.parametrize(
    ("runtimes", "bits", "trials"),
    [(("torch", "onnxruntime"), None, 6), (("torch",), 4, 6), (("torch", "onnxruntime"), None, 24)],
)
def test_a_budget_never_overspent_and_the_unbounded_runs_total_allows_every_trial(
    runtimes: tuple[str, ...], bits: int | None, trials: int
) -> None:
    """Two lines sharing a budget, and a simulated line (no verify job to keep room for): no budget is overspent,
    and a budget equal to the unbounded run's total asks every trial the unbounded run asked. At 24 trials the two
    lines end apart (onnxruntime's space runs out first): the line still exploring takes the whole share."""

    def settings(budget: int | None) -> TuneSettings:
        size = "size" if bits else "latency"
        return TuneSettings("sqnr_db", min_metric=40.5, objective=size, budget_jobs=budget, trials=trials)

    def of(j: Any) -> dict[str, Any]:
        out = {**figures(j), "simulated": bool(bits)}
        if trials > 6 and (j.spec.method.runtime or "torch") == "torch":
            # torch's layers give back less: its target needs 3 layers (space 5, onnxruntime's 4): it explores on.
            out["sqnr_db"] = 37.0 + 0.8 * (out["sqnr_db"] - 37.0)
        return out

    def chain(budget: int | None) -> list[Any]:
        return run_chain(plan_of(settings(budget), runtimes=list(runtimes), bits=bits, max_time_s=0.2), of)[0]

    unbounded = chain(None)
    asked = len(fallbacks(unbounded, "tune_explore"))
    assert asked > 0
    for budget in range(len(unbounded) - 8, len(unbounded) + 1):
        jobs = chain(budget)
        assert len(jobs) <= budget, budget
    assert len(fallbacks(chain(len(unbounded)), "tune_explore")) == asked
    if trials > 6:
        per_line = Counter(
            j.spec.method.runtime for j in unbounded if _added(j) == "tune_explore" and j.role == "trial"
        )
        assert per_line["torch"] == trials > per_line["onnxruntime"]


def test_explore_on_a_dynamic_line_asks_no_recipe_the_line_already_ran() -> None:
    """Dynamic's default granularity (per_tensor) is left out of its stored spec: the explore stage still reads the
    line's recipes (its base, candidates and refinements) and asks the sampler for new ones only."""

    def per_tensor_best(job: Any) -> dict[str, Any]:
        out = figures(job)
        return {**out, "sqnr_db": out["sqnr_db"] + 0.1 * (job.spec.method.granularity == "per_tensor")}

    settings = TuneSettings("sqnr_db", min_metric=40.5, trials=8)
    jobs, ran = run_chain(plan_of(settings, method="dynamic"), per_tensor_best)
    explored = [j for j in jobs if _added(j) == "tune_explore" and j.role == "trial"]
    assert "tune_explore" in ran and explored
    assert {j.spec.method.granularity for j in explored} == {"per_tensor"}
    keys = [j.key for j in jobs]
    assert len(keys) == len(set(keys)), "a recipe planned twice"
