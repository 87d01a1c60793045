"""Stage jobs (farm.jobs.stages): the calibration_sizes expander, adding a stage to a plan, and a two-stage sweep run
on this machine (``farm sweep run``'s path: farm.jobs.sweeps -> farm.jobs.local), stage 2 created from stage 1's
results through the one scheduling policy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.errors import ConfigError
from farm.jobs.stages import EXPANDERS, Stage, calibration_sizes, register, with_stage
from farm.spec.load import load_spec
from farm.store.expansion import InputJob

SPEC = """\
name: stages
models: [farm:digits-mlp]
methods: [fp32, {static: {calibration_size: [16, 32]}}]
benchmark: {batch_size: [1], max_time_s: 0.2, min_reps: 5, warmup_s: 0}
"""


def two_stage_plan():  # type: ignore[no-untyped-def]
    plan = load_spec(SPEC)
    trials = [j.key for j in plan.jobs if j.role == "trial"]
    return plan, with_stage(plan, "calibration_sizes", {"sizes": [8, 64]}, after=trials)


def inputs(plan, accuracies: dict[int, float]) -> list[InputJob]:  # type: ignore[no-untyped-def]
    out = []
    for i, job in enumerate(j for j in plan.jobs if j.role == "trial"):
        size = job.spec.method.params()["calibration_size"]
        figures = {"accuracy": accuracies[size]}
        out.append(
            InputJob(
                i + 2,
                job.key,
                "trial",
                "succeeded",
                job.spec.to_dict(),
                "cpu",
                job.reference_key,
                ("cpu", "all", None),
                figures,
            )
        )
    return out


def test_calibration_sizes_reruns_the_most_accurate_trial_at_the_given_sizes() -> None:
    plan, staged = two_stage_plan()
    stage = staged.jobs[-1]
    added = calibration_sizes(Stage(stage.key, "calibration_sizes", stage.params), inputs(plan, {16: 0.9, 32: 0.95}))
    assert [j.spec.method.params()["calibration_size"] for j in added] == [8, 64]
    assert all(j.spec.method.params()["observer"] == "minmax" and j.depends_on == (stage.key,) for j in added)
    assert {j.reference_key for j in added} == {plan.references[0].key}
    # The keys the planner gives the same jobs: a spec that asks for them later reuses their results.
    again = load_spec(SPEC.replace("[16, 32]", "[8, 64]"))
    assert {j.key for j in added} == {j.key for j in again.jobs if j.role == "trial"}


def test_a_tie_goes_to_fewer_calibration_samples() -> None:
    plan, staged = two_stage_plan()
    stage = staged.jobs[-1]
    chosen = calibration_sizes(Stage(stage.key, "x", {"sizes": [100]}), inputs(plan, {16: 0.9, 32: 0.9}))
    (job,) = chosen
    assert job.spec.method.params()["calibration_size"] == 100
    assert job.spec.seed == plan.jobs[1].spec.seed


def test_a_failed_input_is_skipped_however_good_its_figures() -> None:
    import dataclasses

    plan, staged = two_stage_plan()
    stage = staged.jobs[-1]
    given = inputs(plan, {16: 0.99, 32: 0.9})
    given[0] = dataclasses.replace(given[0], state="failed")  # the 16-sample trial, "best" by its stale figures
    (job,) = calibration_sizes(Stage(stage.key, "x", {"sizes": [100]}), given)
    assert job.spec.method.params()["calibration_size"] == 100
    assert job.key == calibration_sizes(Stage(stage.key, "x", {"sizes": [100]}), given[1:])[0].key


def test_no_succeeded_trial_adds_nothing_and_bad_sizes_are_refused() -> None:
    plan, staged = two_stage_plan()
    stage = staged.jobs[-1]
    assert calibration_sizes(Stage(stage.key, "x", {"sizes": [8]}), []) == []
    with pytest.raises(ConfigError, match="sizes"):
        calibration_sizes(Stage(stage.key, "x", {"sizes": "8"}), [])


def test_a_stage_waits_for_its_inputs_and_has_no_engine_spec() -> None:
    plan, staged = two_stage_plan()
    stage = staged.jobs[-1]
    assert len(staged.jobs) == len(plan.jobs) + 1 and stage.role == "stage"
    assert set(stage.depends_on) == {j.key for j in plan.jobs if j.role == "trial"}
    assert stage.payload()["stage"] == "calibration_sizes" and stage.columns()["method"] == "stage"
    assert (
        with_stage(plan, "calibration_sizes", {"sizes": [8, 64]}, after=list(stage.depends_on)).jobs[-1].key
        == stage.key
    )
    with pytest.raises(ConfigError, match="no stage expander"):
        with_stage(plan, "nope", {}, after=[])
    with pytest.raises(ConfigError, match="not in the plan"):
        with_stage(plan, "calibration_sizes", {}, after=["f" * 64])


def test_expanders_are_registered_explicitly_once_per_name() -> None:
    assert EXPANDERS["calibration_sizes"] is calibration_sizes
    with pytest.raises(ValueError, match="registered already"):
        register("calibration_sizes")(lambda stage, inputs: [])


@pytest.mark.slow  # five small jobs in worker processes
def test_a_two_stage_sweep_runs_locally_and_stage_two_comes_from_stage_one(sweep_home: Path) -> None:
    from farm.jobs.local_workers import artifacts_url
    from farm.jobs.sweeps import run_locally, start_local_run
    from farm.store.db import Database
    from farm.store.migrate import upgrade
    from tests.sweeps import query

    _, plan = two_stage_plan()
    db = Database()
    upgrade(db)
    run = start_local_run(db, plan, 2, artifacts_url())
    assert run.total == 4  # the reference, two trials, the stage: stage 2 does not exist yet
    assert run.warm  # its jobs load the engine: both pool processes start at once and import it
    stats = run_locally(db, run)
    db.dispose()
    jobs = query("SELECT * FROM jobs ORDER BY id")
    assert {j["role"] for j in jobs} == {"reference", "trial", "stage"}
    assert all(j["state"] == "succeeded" and j["queue"] == "local" for j in jobs), jobs
    assert sorted(j["calibration_size"] for j in jobs if j["role"] == "trial") == [8, 16, 32, 64]
    assert query("SELECT state FROM sweeps") == [{"state": "succeeded"}]
    assert (stats.succeeded, stats.failed) == (6, 0)
    assert stats.total == 6  # the stage's decision named the jobs it added: the run counted them

    # Running the same spec again: the jobs the stage added are still the sweep's (the plan names only the stage).
    db = Database()
    again = start_local_run(db, plan, 2, artifacts_url())
    db.dispose()
    assert (again.total, again.cached, again.to_run) == (6, 6, [])
    assert not again.warm  # nothing to run: no process imports torch for nothing
    assert len(query("SELECT * FROM sweep_jobs")) == 6
