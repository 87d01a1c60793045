"""farm.jobs.policy: the one scheduling policy, decided from job states alone (no database, no broker)."""

from __future__ import annotations

from farm.jobs.policy import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED, Dependency, Waiter, verdict, worker_lost


def deps(**states: str) -> dict[int, Dependency]:
    return {int(k[1:]): Dependency(int(k[1:]), v, "trial", f"boom {k}") for k, v in states.items()}


def test_a_job_with_several_dependencies_is_released_only_when_all_succeeded() -> None:
    waiter = Waiter(10, (1, 2, 3))
    assert verdict([waiter], deps(j1=SUCCEEDED, j2=SUCCEEDED, j3=RUNNING)).wait == [10]
    assert verdict([waiter], deps(j1=SUCCEEDED, j2=PENDING, j3=SUCCEEDED)).wait == [10]
    assert verdict([waiter], deps(j1=SUCCEEDED, j2=SUCCEEDED, j3=SUCCEEDED)).release == [10]


def test_a_job_without_dependencies_is_released() -> None:
    assert verdict([Waiter(5)], {}).release == [5]


def test_one_failed_dependency_ends_the_job_even_while_others_still_run() -> None:
    (ending,) = verdict([Waiter(10, (1, 2))], deps(j1=RUNNING, j2=FAILED)).end
    assert (ending.id, ending.state, ending.reason) == (10, FAILED, "job 2 (trial) failed: boom j2")


def test_a_cancelled_dependency_cancels_and_a_failed_one_fails() -> None:
    answer = verdict([Waiter(10, (1,)), Waiter(11, (2,))], deps(j1=CANCELLED, j2=FAILED))
    assert {(e.id, e.state) for e in answer.end} == {(10, CANCELLED), (11, FAILED)}


def test_the_first_blocking_dependency_in_the_jobs_order_names_the_reason() -> None:
    (ending,) = verdict([Waiter(10, (2, 1))], deps(j1=FAILED, j2=CANCELLED)).end
    assert ending.state == CANCELLED and ending.reason.startswith("job 2 (trial) cancelled")


def test_a_missing_dependency_counts_as_failed() -> None:
    (ending,) = verdict([Waiter(10, (1, 7))], deps(j1=SUCCEEDED)).end
    assert ending.state == FAILED and "job 7" in ending.reason and "no longer exists" in ending.reason


def test_a_reference_is_named_as_the_fp32_reference() -> None:
    ref = {1: Dependency(1, FAILED, "reference", "model did not load")}
    (ending,) = verdict([Waiter(10, (1,))], ref).end
    assert ending.reason == "the fp32 reference (job 1) failed: model did not load"


def test_mixed_waiters_are_each_decided() -> None:
    answer = verdict(
        [Waiter(10, (1,)), Waiter(11, (1, 2)), Waiter(12, (3,))], deps(j1=SUCCEEDED, j2=RUNNING, j3=FAILED)
    )
    assert (answer.release, answer.wait, [e.id for e in answer.end]) == ([10], [11], [12])


def test_a_stage_waits_for_its_inputs_to_finish_however_they_ended() -> None:
    stage = Waiter(10, (1, 2, 3), role="stage")
    assert verdict([stage], deps(j1=SUCCEEDED, j2=FAILED, j3=RUNNING)).wait == [10]
    assert verdict([stage], deps(j1=SUCCEEDED, j2=FAILED, j3=CANCELLED)).release == [10]
    assert verdict([stage], deps(j1=FAILED, j2=FAILED, j3=FAILED)).release == [10]
    # The same dependencies end a trial: it needs every one to succeed.
    assert [e.id for e in verdict([Waiter(11, (1, 2, 3))], deps(j1=SUCCEEDED, j2=FAILED, j3=CANCELLED)).end] == [11]


def test_a_lost_worker_goes_again_until_the_limit() -> None:
    assert worker_lost(2, 3, "w").again
    gave_up = worker_lost(3, 3, "w1")
    assert (
        not gave_up.again and gave_up.reason == "its worker died 3 times while running it (last: w1); not retried again"
    )
