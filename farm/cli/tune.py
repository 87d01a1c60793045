"""``farm tune``: the fastest (or smallest) recipe that meets an accuracy target, searched in stages fanned out over
local processes or the farm's workers; ``farm tune status ID`` and ``farm tune list``.

A tune is a sweep (its id is the tune id): the plan is farm.jobs.tune_plan's, the stages farm.jobs.tune_stages',
the answer farm.jobs.tune_answer's. This module parses, calls them, and renders.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from farm.cli import LazyGroup
from farm.cli.params import ID, POSITIVE_COUNT, PROCESSES, parse_model_output
from farm.cli.render import cell, err, out
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
    help="Deploy runtime to search on (repeatable; default: torch and every CPU runtime installed).",
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
            o["metric"], o["min_metric"], o["max_accuracy_drop"], o["objective"], o["budget_jobs"], o["good_enough"]
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
    )
    data = yaml.safe_load(text)
    if o["dataset"] is None:
        data.pop("dataset", None)
        text = yaml.safe_dump(data, sort_keys=False)
    plan = plan_tune(text, data, source="farm tune")
    labelled = _labelled(plan.references[0].spec.dataset) if settings.metric == "accuracy" else None
    if labelled is False:
        from farm.metric_targets import check_target

        check_target(settings.metric, settings.min_metric, settings.max_accuracy_drop, labelled)
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
    from farm.spec.load import check_runtimes_available

    check_runtimes_available(plan, source="farm tune")
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
    reported: set[str] = set()

    def on_update(stats: Any) -> None:
        progress.update(stats)
        counts = stage_counts(sweep_jobs(db, run.sweep_id, figures=False))  # after every job: no figures, no trail
        for name, (done, total) in counts.items():
            if total and done == total and name not in reported:
                reported.add(name)
                err.print(f"  stage {name}: {total} job(s) done")

    try:
        with stop_on_termination(), SweepProgress(run.stats) as progress:
            sweeps.run_locally(db, run, on_update=on_update, starter=starter)
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted:[/] {run.stats.cancelled} job(s) cancelled; `farm tune status {run.sweep_id}`")
        sys.exit(130)
    head = sweep_head(db, run.sweep_id)
    result = answer_of(sweep_jobs(db, run.sweep_id), settings, head.state)
    _finish(run.sweep_id, result, settings, o["as_json"], time.monotonic() - start)


def _finish(tune_id: int, result: Any, settings: Any, as_json: bool, wall_s: float | None) -> None:
    """Print the answer (JSON or a table); exit 1 when it misses the target."""
    from farm.jobs.tune_answer import chosen_json

    chosen = chosen_json(result.chosen, settings, result.trail) if result.chosen is not None else None
    if as_json:
        data = {
            "tune_id": tune_id,
            "done": result.done,
            "target": settings.target.describe(),
            "met": result.met,
            "shortfall": result.shortfall,
            "chosen": chosen,
            "fp32_faster": None
            if result.fp32_faster is None
            else {k: result.fp32_faster[k] for k in ("recipe", "runtime", "latency", "job_id")},
            "stages": {k: {"done": d, "jobs": n} for k, (d, n) in result.stages.items()},
            "trail": result.trail,
            "jobs": result.jobs,
            "wall_s": None if wall_s is None else round(wall_s, 2),
        }
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        _print_trail(result, settings)
    if result.chosen is None:
        err.print(f"tune {tune_id}: no recipe succeeded on the test split")
    elif not result.met:
        err.print(
            f"[red]tune {tune_id}: no recipe meets {settings.target.describe()}[/]; the closest, "
            f"{escape(result.chosen['recipe'])} (job {result.chosen['job_id']}), falls short by {result.shortfall:.4g}"
        )
    else:
        err.print(f"tune {tune_id}: `farm tune status {tune_id}`, `farm results query --tune {tune_id}`")
    if result.chosen is not None and result.fp32_faster is not None:
        from farm.jobs.tune_answer import over_fp32

        f = result.fp32_faster
        beside = over_fp32(result.chosen, f)
        how = (
            f"the answer runs at {_times(beside)} its speed"
            if beside["side_by_side"]
            else f"{f['latency']['p50_ms']:.4g} vs {result.chosen['latency']['p50_ms']:.4g} ms p50"
        )
        err.print(
            f"[yellow]tune {tune_id}: {escape(f['recipe'])} (job {f['job_id']}, fp32 on {f['runtime']}) is faster than "
            f"the answer beyond the noise ({how}): no quantized recipe within the target beats plain fp32 there[/]"
        )
    if result.done and not result.met:
        sys.exit(1)


def _print_trail(result: Any, settings: Any) -> None:
    table = Table(show_edge=False, header_style="bold")
    # How each test-split figure was timed, where it varies: screened recipes pinned, the rest exclusively
    # (validation-split sensitivity jobs are always pinned: their latency ranks nothing).
    timed = len({e.get("isolation") for e in result.trail if e["split"] == "test"}) > 1
    columns = ["job", "stage", "runtime", "recipe", "split", settings.metric, "meets", "speedup", "p50 ms"]
    for col in [*columns, *(["timed"] if timed else []), "size", "state"]:
        table.add_column(col)
    chosen_id = result.chosen["job_id"] if result.chosen else None
    for e in result.trail:
        lat = e["latency"] or {}
        mark = " *" if e["job_id"] == chosen_id else ""
        table.add_row(
            f"{e['job_id']}{mark}",
            e["stage"],
            e["runtime"],
            escape(e["recipe"]),
            e["split"],
            _metric(e[settings.metric], settings),
            "yes" if e["meets"] else "",
            cell(e["speedup"]),
            cell(lat.get("p50_ms")),
            *([str(e.get("isolation") or "")] if timed else []),
            cell(e["size_ratio"]),
            e["state"],
        )
    out.print(table)
    stages = ", ".join(f"{k} {d}/{n}" for k, (d, n) in result.stages.items() if n)
    out.print(f"stages: {stages}{'' if result.done else ' (searching)'}")
    failed: dict[str, list[str]] = {}  # why each failed job failed, once per reason (a method a model can't take)
    for e in result.trail:
        if e["state"] == "failed":
            failed.setdefault(e.get("error") or "no error recorded", []).append(str(e["job_id"]))
    for why, ids in failed.items():
        out.print(f"[yellow]failed[/]: job {', '.join(ids)}: {escape(why)}")
    if result.chosen is not None:
        c = result.chosen
        fallback = ", ".join(c["fallback"]) or "none"
        word = "chosen" if result.met else "closest (misses the target)"
        out.print(
            f"{word}: job {c['job_id']} [bold]{escape(c['recipe'])}[/] on {c['runtime']}, "
            f"{settings.metric} {_metric(c[settings.metric], settings)}, {_speedup(c)}, "
            f"layers in fp: {escape(fallback)}, timed {c.get('isolation')}"
        )
        from farm.jobs.tune_answer import chosen_json

        others = [o for o in chosen_json(c, settings, result.trail)["over_fp32"] if o["runtime"] != c["runtime"]]
        if others:
            out.print("over fp32 elsewhere: " + "; ".join(f"{o['runtime']} {_times(o)}" for o in others))


def _state(state: str, result: Any) -> str:
    """The tune's state: a search that ended with an answer is done, whatever jobs of it failed (the sweep's state
    says "failed" then: a global recipe a runtime could not build, listed with its error under the trail)."""
    failed = sum(1 for e in result.trail if e["state"] == "failed")
    if state == "failed" and result.done and result.chosen is not None:
        return f"done ({failed} job(s) failed)"
    return state


def _metric(value: Any, settings: Any) -> str:
    """The metric with a digit more than its target has: a cosine of 0.9999779 against a target of 0.999977 is
    not "1" (4 significant digits at least)."""
    if not isinstance(value, float) or settings.min_metric is None:
        return cell(value)
    digits = len(f"{settings.min_metric:g}".lstrip("-0.").replace(".", "").split("e")[0])
    return f"{value:.{max(4, digits + 1)}g}"


def _speedup(chosen: dict[str, Any]) -> str:
    """The answer's speedup over its runtime's fp32, timed side by side, with its 95 % interval."""
    if chosen.get("speedup") is None:
        return "speedup -"
    interval = chosen.get("speedup_ci")
    within = escape(f" [{cell(interval[0])}, {cell(interval[1])}]") if interval else ""
    return f"speedup {cell(chosen['speedup'])}{within} over fp32 on {chosen['runtime']} (side by side)"


def _times(o: dict[str, Any]) -> str:
    """A speedup over one fp32 (:func:`farm.jobs.tune_answer.over_fp32`): with its interval when timed side by side,
    else marked as two jobs timed apart."""
    if o.get("speedup") is None:
        return "-"
    if not o["side_by_side"]:
        return f"{cell(o['speedup'])}x (jobs timed apart)"
    ci = o.get("speedup_ci")
    return f"{cell(o['speedup'])}x" + (escape(f" [{cell(ci[0])}, {cell(ci[1])}]") if ci else "") + " (side by side)"


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
    result = answer_of(sweep_jobs(db, tune_id), settings, head.state)
    wall = (head.finished_at - head.created_at).total_seconds() if head.finished_at else None
    if not as_json:
        out.print(
            f"tune {tune_id} [bold]{escape(head.name)}[/]: {_state(head.state, result)}, {settings.target.describe()}"
        )
    _finish(tune_id, result, settings, as_json, wall)


@tune.command("list")
@click.option("--limit", type=POSITIVE_COUNT, default=50, show_default=True)
def list_tunes(limit: int) -> None:
    """List tunes (sweeps with a tune section), newest first."""
    from farm.jobs.tune_answer import settings_from_text
    from farm.store.expansion import sweep_heads
    from farm.store.migrate import open_database

    table = Table(show_edge=False, header_style="bold")
    for col in ("id", "name", "state", "target", "objective", "created"):
        table.add_column(col)
    for head in sweep_heads(open_database(read_only=True), "tune:", limit):
        settings = settings_from_text(head.spec_text)
        if settings is None:
            continue
        table.add_row(
            str(head.id),
            escape(head.name),
            head.state,
            settings.target.describe(),
            settings.objective,
            f"{head.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)
