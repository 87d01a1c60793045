"""How ``farm tune`` and ``farm tune status`` print a search: the answer (JSON or a table of its trail), its stages,
why its failed jobs failed, and the exit status (1 when the answer misses the target)."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from farm.cli.output import json_text
from farm.cli.render import cell, err, out

#: The most jobs a budgeted search keeps for its stages still to come (explore, verify, answer and the verify job):
#: a search that ran within this many of its budget ran up to it.
_BUDGET_SLACK = 5


def finish(tune_id: int, result: Any, settings: Any, as_json: bool, wall_s: float | None) -> None:
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
        click.echo(json_text(data))
    else:
        print_trail(result, settings)
    if not result.done:  # a search under way (farm tune status): nothing is final, nothing is missed yet
        best = result.chosen
        so_far = (
            ""
            if best is None
            else f"; the best so far: {escape(best['recipe'])} (job {best['job_id']}), "
            + ("meets the target" if result.met else f"short of the target by {result.shortfall:.4g}")
        )
        err.print(f"tune {tune_id}: still searching{so_far}")
        return
    if result.chosen is None:
        err.print(f"tune {tune_id}: no recipe succeeded on the test split")
    elif not result.met:
        err.print(
            f"[red]tune {tune_id}: no recipe meets {settings.target.describe()}[/]; the closest, "
            f"{escape(result.chosen['recipe'])} (job {result.chosen['job_id']}), falls short by {result.shortfall:.4g}"
        )
        # The budget cut the search short (it ran up to it: what the stages keep for later stages is at most
        # _BUDGET_SLACK jobs): never a silent "no".
        if settings.budget_jobs is not None and result.jobs >= settings.budget_jobs - _BUDGET_SLACK:
            err.print(
                f"the search ran up to its budget ({result.jobs} of --budget-jobs {settings.budget_jobs}): a larger "
                "budget, or none (each runtime's search then takes up to layers + 2·log2(layers) + 4 jobs), "
                "may find one"
            )
        if result.chosen.get("simulated"):
            err.print(
                "its layers fell back to int8 from a simulated base, never to floating point: a tune at bits 8 "
                "keeps layers in floating point"
            )
    else:
        err.print(f"tune {tune_id}: `farm results query --tune {tune_id}`, `farm report {tune_id}`")
    if result.chosen is not None and result.fp32_faster is not None:
        from farm.jobs.tune_answer import over_fp32

        f = result.fp32_faster
        beside = over_fp32(result.chosen, f)
        how = (
            f"the answer runs at {times_text(beside)} its speed"
            if beside["side_by_side"]
            else f"{f['latency']['p50_ms']:.4g} vs {result.chosen['latency']['p50_ms']:.4g} ms p50"
        )
        err.print(
            f"[yellow]tune {tune_id}: {escape(f['recipe'])} (job {f['job_id']}, fp32 on {f['runtime']}) is faster than "
            f"the answer beyond the noise ({how}): no quantized recipe within the target beats plain fp32 there[/]"
        )
    if not result.met:
        sys.exit(1)


def print_trail(result: Any, settings: Any) -> None:
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
            escape(e["recipe"] + (" (sim)" if e.get("simulated") else "")),
            e["split"],
            metric_text(e[settings.metric], settings),
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
        from farm.jobs.tune_answer import chosen_json, fallback_words

        c = result.chosen
        fallback = ", ".join(c["fallback"]) or "none"
        word = "chosen" if result.met else "closest (misses the target)"
        estimate = " (a packed estimate)" if c.get("simulated") else ""
        size = "" if c.get("size_ratio") is None else f"size {cell(c['size_ratio'])} of fp32's{estimate}, "
        out.print(
            f"{word}: job {c['job_id']} [bold]{escape(c['recipe'])}[/] on {c['runtime']}, "
            f"{settings.metric} {metric_text(c[settings.metric], settings)}, {speedup_text(c)}, {size}"
            f"{fallback_words(c, short=True)}: {escape(fallback)}"
            + ("" if c.get("simulated") else f", timed {c.get('isolation')}")
        )
        others = [o for o in chosen_json(c, settings, result.trail)["over_fp32"] if o["runtime"] != c["runtime"]]
        if others and not c.get("simulated"):
            out.print("over fp32 elsewhere: " + "; ".join(f"{o['runtime']} {times_text(o)}" for o in others))


def answer_text(result: Any, settings: Any) -> str:
    """A tune's answer in a word or two (`farm tune list`): whether it met its target, and by how much it fell short
    where it did not; "searching" while it runs."""
    if not result.done:
        return "searching"
    if result.chosen is None:
        return "no recipe succeeded"
    value = metric_text(result.chosen[settings.metric], settings)
    return f"met ({value})" if result.met else f"missed by {result.shortfall:.4g} ({value})"


def state_of(state: str, jobs: Sequence[Any]) -> str:
    """The tune's state, from its sweep's and its jobs' (farm.store.expansion.sweep_jobs): a search whose answer
    stage ran, with a recipe that succeeded, is done whatever jobs of it failed. The sweep's state says "failed"
    then (a global recipe a runtime could not build: a model FX cannot trace for static), which read as a failed
    search; `farm tune status` lists why each failed."""
    from farm.jobs.tune_answer import answered

    found = any(j.role == "trial" and j.state == "succeeded" for j in jobs)
    if state == "failed" and answered(jobs) and found:
        failed = sum(1 for j in jobs if j.state == "failed")
        return f"done ({failed} job(s) failed)"
    return state


def metric_text(value: Any, settings: Any) -> str:
    """The metric with a digit more than its target has: a cosine of 0.9999779 against a target of 0.999977 is
    not "1" (4 significant digits at least); more where rounding would carry a miss up to the target (0.99989909
    against 0.9999 is 0.99989909, not "0.9999")."""
    if not isinstance(value, float) or settings.min_metric is None or not math.isfinite(value):
        return cell(value)
    target = settings.min_metric
    digits = max(4, len(f"{target:g}".lstrip("-0.").replace(".", "").split("e")[0]) + 1)
    text = f"{value:.{digits}g}"
    while digits < 17 and (float(text) >= target) != (value >= target):
        digits += 1
        text = f"{value:.{digits}g}"
    return text


def speedup_text(chosen: dict[str, Any]) -> str:
    """The answer's speedup over its runtime's fp32, timed side by side, with its 95 % interval."""
    if chosen.get("simulated"):
        return "simulated (fake quantization: no deployed speed)"
    if chosen.get("speedup") is None:
        return "speedup -"
    interval = chosen.get("speedup_ci")
    within = escape(f" [{cell(interval[0])}, {cell(interval[1])}]") if interval else ""
    return f"speedup {cell(chosen['speedup'])}{within} over fp32 on {chosen['runtime']} (side by side)"


def times_text(o: dict[str, Any]) -> str:
    """A speedup over one fp32 (:func:`farm.jobs.tune_answer.over_fp32`): with its interval when timed side by side,
    else marked as two jobs timed apart."""
    if o.get("speedup") is None:
        return "-"
    if not o["side_by_side"]:
        return f"{cell(o['speedup'])}x (jobs timed apart)"
    ci = o.get("speedup_ci")
    return f"{cell(o['speedup'])}x" + (escape(f" [{cell(ci[0])}, {cell(ci[1])}]") if ci else "") + " (side by side)"
