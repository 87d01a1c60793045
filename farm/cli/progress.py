"""Live progress on stderr for a running trial."""

from __future__ import annotations

from types import TracebackType

from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

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


class StepProgress:
    """A one-line progress display: the current step and its fraction done."""

    def __init__(self, title: str):
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[title]}[/] {task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        self._task = self._progress.add_task("starting", total=1.0, title=title)

    def __enter__(self) -> StepProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def update(self, step: str, fraction: float | None) -> None:
        self._progress.update(self._task, description=_STEPS.get(step, step), completed=fraction or 0.0)


class SweepProgress:
    """A live bar for a sweep: done / failed / remaining and ETA (on a terminal only)."""

    def __init__(self, stats: object):
        from rich.progress import MofNCompleteColumn, TimeRemainingColumn

        from farm.cli.render import interactive

        self._progress = Progress(
            TextColumn("[bold]sweep[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
            disable=not interactive(),
        )
        total = getattr(stats, "to_run", 0)
        self._task = self._progress.add_task("run", total=max(total, 1), detail="")

    def __enter__(self) -> SweepProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def update(self, stats: object) -> None:
        done = getattr(stats, "done", 0)
        failed = getattr(stats, "failed", 0)
        remaining = getattr(stats, "to_run", 0) - done
        detail = f"[red]{failed} failed[/] " if failed else ""
        self._progress.update(self._task, completed=done, detail=f"{detail}{remaining} remaining")
