"""Live progress on stderr for a running trial or a local sweep.

Rich redraws the line from its own thread (10 times a second) while the step runs, so the clock ticks through a
long step. Rich freezes a task's clock and spinner once it reaches its total, for good: a trial's step that
reaches 100 % (calibration done) would stop the clock for every step after it (a 22 s benchmark showing
0:00:02). The columns here ignore "finished" and count from the start of the display.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn
from rich.progress_bar import ProgressBar
from rich.text import Text

from farm.cli.render import err

_STEPS = {
    "load": "loading model and data",
    "reference": "fp32 reference",
    "calibrate": "calibrating",
    "train": "fine-tuning",
    "evaluate": "evaluating",
    "benchmark": "benchmarking",
    "save": "saving artifact",
}


class _Clock(ProgressColumn):
    """Time since the task started, still ticking after the task reached its total (TimeElapsedColumn stops)."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        return Text(str(timedelta(seconds=int(elapsed))), style="progress.elapsed")


class _Spinner(SpinnerColumn):
    """A spinner that keeps spinning while the display runs, whatever the task's fraction."""

    def render(self, task: Task) -> Any:
        return self.spinner.render(task.get_time())


class _Bar(BarColumn):
    """The step's bar, pulsing while the step's fraction is unknown (a benchmark runs until its figure settles)."""

    def render(self, task: Task) -> ProgressBar:
        if task.fields.get("fraction") is not None:
            return super().render(task)
        return ProgressBar(
            total=None,
            width=None if self.bar_width is None else max(1, self.bar_width),
            pulse=True,
            animation_time=task.get_time(),
            style=self.style,
            pulse_style=self.pulse_style,
        )


class StepProgress:
    """A one-line progress display: the current step, its fraction done (a pulsing bar when unknown), the clock.

    Args:
        title: what runs (the method's label).
        get_time: the clock (default: rich's monotonic clock); tests pass their own.
    """

    def __init__(self, title: str, *, get_time: Callable[[], float] | None = None) -> None:
        self._progress = Progress(
            _Spinner(),
            TextColumn("[bold]{task.fields[title]}[/] {task.description}"),
            _Bar(),
            TextColumn("{task.fields[percent]:>4}"),
            _Clock(),
            console=err,
            transient=True,
            get_time=get_time,
        )
        self._task = self._progress.add_task("starting", total=1.0, title=title, fraction=None, percent="")

    def __enter__(self) -> StepProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def update(self, step: str, fraction: float | None) -> None:
        """Show ``step`` (a name from the engine's progress callback) and its fraction done, None when unknown."""
        self._progress.update(
            self._task,
            description=_STEPS.get(step, step),
            completed=fraction or 0.0,
            fraction=fraction,
            percent="" if fraction is None else f"{fraction:.0%}",
        )

    def line(self) -> str:
        """The display's line as plain text, as it would be drawn now."""
        return _line(self._progress)


class SweepProgress:
    """A live bar for a sweep: done / failed / remaining, the clock and ETA (on a terminal only).

    Args:
        stats: the run's RunStats (its totals grow as stages add jobs).
        get_time: the clock (default: rich's monotonic clock); tests pass their own.
    """

    def __init__(self, stats: object, *, get_time: Callable[[], float] | None = None) -> None:
        from rich.progress import MofNCompleteColumn, TimeRemainingColumn

        from farm.cli.render import interactive

        self._progress = Progress(
            TextColumn("[bold]sweep[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            _Clock(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
            disable=not interactive(),
            get_time=get_time,
        )
        total = getattr(stats, "to_run", 0)
        self._task = self._progress.add_task("run", total=max(total, 1), detail="")

    def __enter__(self) -> SweepProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def update(self, stats: object) -> None:
        """Show the run's counts; the total follows jobs that stages added."""
        done = getattr(stats, "done", 0)
        failed = getattr(stats, "failed", 0)
        to_run = getattr(stats, "to_run", 0)
        detail = f"[red]{failed} failed[/] " if failed else ""
        self._progress.update(
            self._task, total=max(to_run, 1), completed=done, detail=f"{detail}{to_run - done} remaining"
        )

    def line(self) -> str:
        """The display's line as plain text, as it would be drawn now."""
        return _line(self._progress)


def _line(progress: Progress) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=120, color_system=None).print(progress.make_tasks_table(progress.tasks))
    return buffer.getvalue().strip()
