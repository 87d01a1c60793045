"""What a new user hit first (issue 12, item 6): a mistyped command, a budget of 1, a frozen clock, a sweep id.

Each test fails without its fix: click suggests nothing for lazily imported commands; the budget's message said
"between 0 and 1" while refusing 1; rich stops a task's clock for good once a step reaches 100 %; and
``farm sweep run`` named its sweep only in the line that scrolled away above the results table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from farm.cli.progress import StepProgress, SweepProgress
from farm.jobs.local import RunStats
from tests.sweeps import TOY_DATA, TOY_MLP, describe, farm, write_spec


def one_error_line(args: tuple[str, ...]) -> str:
    result = farm(*args)
    assert result.exit_code == 2, describe(result)
    assert "Traceback" not in result.stdout + result.stderr and result.stdout == ""
    (line,) = result.stderr.splitlines()
    return line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("sweeep",), "No such command 'sweeep'. Did you mean 'sweep'?"),
        (("resluts", "query"), "No such command 'resluts'. Did you mean 'results'?"),
        (("sweep", "stauts", "1"), "No such command 'stauts'. Did you mean 'status'?"),
        (("results", "paretto"), "No such command 'paretto'. Did you mean 'pareto'?"),
    ],
)
def test_a_mistyped_command_is_told_the_nearest_one(args: tuple[str, ...], expected: str) -> None:
    assert one_error_line(args).startswith(f"Error: {expected}")


def test_a_command_like_nothing_gets_no_suggestion() -> None:
    line = one_error_line(("xyzzy",))
    assert line.startswith("Error: No such command 'xyzzy'.") and "Did you mean" not in line


def test_a_budget_of_1_is_refused_saying_what_is_allowed_and_what_1_means(sweep_home: Path) -> None:
    line = one_error_line(("results", "best", "--sweep", "1", "--max-accuracy-drop", "1"))
    assert "from 0 up to, not including, 1" in line
    assert "1 is a drop of 100 points, which every configuration passes" in line
    assert "for 1 point(s) write 0.01" in line
    assert "between 0 and 1" not in line  # what the old message said while refusing 1
    negative = one_error_line(("results", "best", "--sweep", "1", "--max-accuracy-drop", "-0.1"))
    assert negative.endswith("got -0.1") and "points" not in negative


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_trial_clock_keeps_ticking_after_a_step_reached_100_percent() -> None:
    # What farm.jobs.steps.timed_step reports: each step at 0.0 when it starts and 1.0 when it ends.
    clock = Clock()
    progress = StepProgress("static int8", get_time=clock)
    progress.update("load", 0.0)
    clock.now = 2.0
    progress.update("load", 1.0)  # rich marks the task finished here, and froze its clock for good
    assert "100%" in progress.line() and progress.line().endswith("0:00:02")
    progress.update("benchmark", 0.0)  # a 20 s ResNet-18 step
    clock.now = 22.0
    line = progress.line()
    assert "benchmarking" in line and line.endswith("0:00:22"), line


def test_a_step_without_a_fraction_shows_none() -> None:
    clock = Clock()
    progress = StepProgress("static int8", get_time=clock)
    progress.update("calibrate", 1.0)
    progress.update("benchmark", None)
    clock.now = 5.0
    line = progress.line()
    assert "benchmarking" in line and line.endswith("0:00:05") and "%" not in line, line  # not a 0 % that stays


def test_the_sweep_bar_follows_jobs_a_stage_added_and_its_clock_ticks() -> None:
    clock = Clock()
    stats = RunStats(total=3, cached=0)
    progress = SweepProgress(stats, get_time=clock)
    stats.succeeded = 3
    progress.update(stats)
    stats.total = 6  # a stage added three jobs
    progress.update(stats)
    clock.now = 40.0
    line = progress.line()
    assert "3/6" in line and "3 remaining" in line and "0:00:40" in line, line


def test_sweep_run_names_its_sweep_at_the_end_and_a_second_spec_is_sweep_2(
    sweep_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After `farm demo` (sweep 1) the README's own sweep is 2: the run says so where its output ends.
    from farm.jobs import sweeps

    def not_run(db: Any, run: Any, on_update: Any = None, starter: Any = None) -> Any:
        return run.stats  # the jobs stay pending: what is printed is under test, not the pool

    monkeypatch.setattr(sweeps, "run_locally", not_run)
    for sweep_id, name in ((1, "first"), (2, "second")):
        spec = write_spec(tmp_path, f"name: {name}\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\nmethods: [fp32]\n")
        result = farm("sweep", "run", str(spec))
        assert result.exit_code == 0, describe(result)
        hint = (
            f"sweep {sweep_id}: `farm sweep status {sweep_id}`, `farm results query --sweep {sweep_id}`, "
            f"`farm report {sweep_id}`"
        )
        assert hint in " ".join(result.stderr.split()), result.stderr
