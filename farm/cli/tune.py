"""``farm tune``: the fastest (or smallest) recipe that meets an accuracy target, searched in stages fanned out over
local processes or the farm's workers; ``farm tune status ID`` and ``farm tune list``.

A tune is a sweep (its id is the tune id): the plan is farm.jobs.tune_plan's, the stages farm.jobs.tune_stages',
the answer farm.jobs.tune_answer's. This module parses, calls them, and renders.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from farm.cli import LazyGroup
from farm.cli.params import ID, POSITIVE_COUNT, PROCESSES, parse_model_output
from farm.cli.render import err, out
from farm.cli.tune_views import answer_text, finish, state_of
from farm.errors import ConfigError
from farm.metric_targets import METRICS

#: The metrics a tune targets (farm.jobs.tune_plan.TUNE_METRICS): all but a sweep's own metric function.
TUNE_METRICS = [name for name in METRICS if name != "metric"]


@click.group(cls=LazyGroup, invoke_without_command=True)
@click.option("--model", help="Model reference (farm:digits-cnn, entrypoint:pkg.mod:fn, ...).")
@click.option("--dataset", help="Dataset reference (default: the model's own, sklearn:digits for the digits models).")
@click.option(
    "--method",
    "methods",
    multiple=True,
    type=click.Choice(["dynamic", "static", "qat"]),
    help="The method whose layers the search falls back (repeatable: each is searched on every runtime that runs it).",
)
@click.option(
    "--runtime",
    "runtimes",
    multiple=True,
    help="Deploy runtime to search on (repeatable; default: torch and every CPU runtime installed; torch alone with "
    "--bits below 8).",
)
@click.option(
    "--bits",
    type=click.IntRange(2, 8),
    help="Bit-width of static and qat (default 8, real int8 kernels). 2-7 are simulated (fake quantization, torch "
    "only), for --objective size: the layers the search falls back go to int8, not floating point.",
)
@click.option("--metric", type=click.Choice(TUNE_METRICS), default="accuracy", show_default=True)
@click.option(
    "--model-output",
    "model_output",
    metavar="NAME|INDEX",
    help="The model output the metric is computed on: a dict key (embedding) or tuple index (0). [the logits]",
)
@click.option(
    "--min-metric", type=float, help="Target: the metric at least this (agreement, cosine, sqnr_db, accuracy)."
)
@click.option("--max-accuracy-drop", type=float, help="Target: accuracy at most this below fp32's (0.01 is 1 point).")
@click.option("--objective", type=click.Choice(["latency", "size"]), default="latency", show_default=True)
@click.option(
    "--batch-size", type=POSITIVE_COUNT, default=1, show_default=True, help="The batch size latency is measured at."
)
@click.option("--threads", type=POSITIVE_COUNT, help="Threads per job (default 1).")
@click.option("--jobs", "-j", type=PROCESSES, help="Jobs at once on this machine (default: cores / threads per job).")
@click.option("--submit", is_flag=True, help="Send the search to the farm instead (prints the tune id).")
@click.option(
    "--budget-jobs", type=POSITIVE_COUNT, help="At most this many jobs in all (below stage 1's size: refused)."
)
@click.option("--good-enough", is_flag=True, help="Stop after stage 1 when a global recipe meets the target.")
@click.option(
    "--trials",
    type=click.IntRange(min=0),
    help="Explore stage: this many recipes per search line asked of Optuna's multi-objective sampler (which of the "
    "most sensitive layers stay in floating point), beyond the per-line bound. [0: none]",
)
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.option(
    "--max-time-s",
    type=click.FloatRange(min=0.01),
    help="Timed budget of each side of a job's side-by-side timing (default 1.5 s; a sweep's is 3).",
)
@click.pass_context
def tune(ctx: click.Context, **options: Any) -> None:
    """Find the fastest (or smallest) recipe meeting a target: global recipes, per-layer sensitivity on a
    validation split, then the k most sensitive layers kept in floating point for several k at once.

    Exit status: 0 with an answer that meets the target, 1 when none does (the closest is printed with its
    shortfall), 2 on bad input (nothing is written).
    """
    if ctx.invoked_subcommand is not None:
        return
    if not options["model"] or not options["methods"]:
        raise ConfigError("farm tune needs --model and --method (and a target: --min-metric or --max-accuracy-drop)")
    if options["submit"] and options["jobs"]:
        raise ConfigError("-j/--jobs runs the search here; --submit sends it to the farm: give one")
    if options["dataset"] is None and not options["model"].startswith("farm:"):  # as farm quantize: no guess
        raise ConfigError("--dataset is required for models other than the built-in farm: ones")
    plan = _plan(options)
    if options["submit"]:
        _submit(plan)
        return
    _run_here(plan, options)


def _plan(o: dict[str, Any]) -> Any:
    """The checked plan of stage 1; every check of the input runs before anything is written."""
    import yaml

    from farm.jobs.tune_plan import TuneSettings, plan_tune, settings_of, tune_text

    settings = settings_of(
        TuneSettings(
            o["metric"],
            o["min_metric"],
            o["max_accuracy_drop"],
            o["objective"],
            o["budget_jobs"],
            o["good_enough"],
            o["trials"],
        ).to_dict(),
        source="farm tune",
    )
    text = tune_text(
        model=o["model"],
        dataset=o["dataset"],
        method=list(o["methods"]),
        runtimes=o["runtimes"],
        settings=settings,
        batch_size=o["batch_size"],
        threads=o["threads"],
        max_time_s=o["max_time_s"],
        output=parse_model_output(o["model_output"]),
        bits=o["bits"],
    )
    data = yaml.safe_load(text)
    if o["dataset"] is None:
        data.pop("dataset", None)
        text = yaml.safe_dump(data, sort_keys=False)
    plan = plan_tune(text, data, source="farm tune")
    labelled = _labelled(plan.references[0].spec.dataset) if settings.metric == "accuracy" else None
    if labelled is False:
        from farm.metric_targets import check_target

        check_target(settings.metric, settings.min_metric, settings.max_accuracy_drop, labelled, offered=TUNE_METRICS)
    return plan


def _labelled(dataset: str) -> bool | None:
    """Whether ``dataset`` has labels (None where the engine is not installed here: the workers find out)."""
    import importlib.util

    if dataset.startswith(("synthetic:", "tokens:")):
        return False
    if importlib.util.find_spec("torch") is None:
        return None
    from farm.zoo.data import load_dataset

    return load_dataset(dataset).labelled


def _submit(plan: Any) -> None:
    from farm.jobs import sweeps
    from farm.routing import Pools
    from farm.store.migrate import open_database
    from workers.broker import CeleryBroker

    broker = CeleryBroker()
    broker.check()  # before the database: an unreachable broker leaves nothing behind
    done = sweeps.submit(open_database(), broker, plan, Pools())
    err.print(
        f"tune {done.sweep_id} submitted: {done.total} stage-1 jobs ({done.cached} cached); the stages add the rest. "
        f"Follow it with `farm tune status {done.sweep_id}`"
    )
    click.echo(done.sweep_id)


def _run_here(plan: Any, o: dict[str, Any]) -> None:
    """Run the search with the local pool, a line per stage as it ends, then the answer."""
    from farm.cli.local_run import started_workers
    from farm.spec.load import check_runs_here

    check_runs_here(plan, source="farm tune")
    start = time.monotonic()
    with started_workers(plan, o["jobs"]) as (artifacts, starter):
        _run_started(plan, o, artifacts, starter, start)


def _run_started(plan: Any, o: dict[str, Any], artifacts_url: str, starter: Any, start: float) -> None:
    from farm.cli.local_run import stop_on_termination
    from farm.cli.progress import SweepProgress
    from farm.jobs import sweeps
    from farm.jobs.tune_answer import answer_of, settings_from_text, stage_counts
    from farm.store.expansion import sweep_head, sweep_jobs
    from farm.store.migrate import open_database

    settings = settings_from_text(plan.text)
    assert settings is not None  # plan_tune wrote the section
    db = open_database()
    run = sweeps.start_local_run(db, plan, o["jobs"], artifacts_url)
    err.print(
        f"tune {run.sweep_id}: {settings.target.describe()}, objective {settings.objective}; stage 1: "
        f"{run.total} jobs ({run.cached} cached) on {run.workers} worker process(es)"
    )
    reported: dict[str, int] = {}  # per stage, the jobs it had when its end was printed

    def on_update(stats: Any) -> None:
        progress.update(stats)
        counts = stage_counts(sweep_jobs(db, run.sweep_id, figures=False))  # after every job: no figures, no trail
        for name, (done, total) in counts.items():
            # The explore stage comes in batches: each batch's end is printed, with the stage's jobs so far.
            if total and done == total and total > reported.get(name, 0):
                reported[name] = total
                err.print(f"  stage {name}: {total} job(s) done")

    try:
        with stop_on_termination(), SweepProgress(run.stats) as progress:
            sweeps.run_locally(db, run, on_update=on_update, starter=starter)
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted:[/] {run.stats.cancelled} job(s) cancelled; `farm tune status {run.sweep_id}`")
        sys.exit(130)
    head = sweep_head(db, run.sweep_id)
    result = answer_of(sweep_jobs(db, run.sweep_id), settings, head.state)
    finish(run.sweep_id, result, settings, o["as_json"], time.monotonic() - start)


@tune.command()
@click.argument("tune_id", type=ID)
@click.option("--json", "as_json", is_flag=True, help="Print the stages, trail and answer as JSON.")
def status(tune_id: int, as_json: bool) -> None:
    """A tune's stage progress, its trail so far, and the answer once it is done."""
    from farm.jobs.tune_answer import answer_of, settings_from_text
    from farm.store.expansion import sweep_head, sweep_jobs
    from farm.store.migrate import open_database

    db = open_database(read_only=True, create=False)
    head = sweep_head(db, tune_id)
    settings = settings_from_text(head.spec_text)
    if settings is None:
        raise ConfigError(f"sweep {tune_id} is no tune (`farm tune list` lists them; `farm sweep status {tune_id}`)")
    jobs = sweep_jobs(db, tune_id)
    result = answer_of(jobs, settings, head.state)
    wall = (head.finished_at - head.created_at).total_seconds() if head.finished_at else None
    if not as_json:
        out.print(
            f"tune {tune_id} [bold]{escape(head.name)}[/]: {state_of(head.state, jobs)}, {settings.target.describe()}"
        )
    finish(tune_id, result, settings, as_json, wall)


@tune.command("list")
@click.option("--limit", type=POSITIVE_COUNT, default=50, show_default=True)
def list_tunes(limit: int) -> None:
    """List tunes (sweeps with a tune section), newest first."""
    from farm.jobs.tune_answer import answer_of, settings_from_text
    from farm.store.expansion import sweep_heads, sweep_jobs
    from farm.store.migrate import open_database

    db = open_database(read_only=True)
    table = Table(show_edge=False, header_style="bold")
    for col in ("id", "name", "state", "target", "answer", "objective", "created"):
        table.add_column(col)
    for head in sweep_heads(db, "tune:", limit):
        settings = settings_from_text(head.spec_text)
        if settings is None:
            continue
        jobs = sweep_jobs(db, head.id)
        # A failed sweep may be a search that ended with its answer (a job failed, the search went on).
        state = head.state if head.state != "failed" else state_of(head.state, jobs)
        table.add_row(
            str(head.id),
            escape(head.name),
            state,
            settings.target.describe(),
            answer_text(answer_of(jobs, settings, head.state), settings),
            settings.objective,
            f"{head.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)
