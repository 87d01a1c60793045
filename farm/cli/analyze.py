"""``farm results pareto / best / compare``: the configurations worth deploying."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from farm.cli.compact import varying
from farm.cli.output import TEXT_FORMATS, write_rows
from farm.cli.params import ID
from farm.cli.render import cell, out
from farm.metric_targets import METRICS

_X_DIRECTIONS = click.Choice(["min", "max"])
#: ``farm results best --metric``.
METRIC_NAMES = tuple(METRICS)
#: What ``compare`` shows beside accuracy where the rows have it, with its short table heading.
COMPARED_FIDELITY = {"cosine": "cos", "sqnr_db": "sqnr", "metric_value": "metric"}


def _rows(sweeps: list[int], where: str | None) -> tuple[Any, list[dict[str, Any]]]:
    from farm.store.migrate import open_database
    from farm.store.results import ResultsQuery, query

    q = ResultsQuery.parse(sweep=sweeps, where=where, cli=True)
    db = open_database(read_only=True)
    return db, query(db, q)


def _label(r: dict[str, Any]) -> str:
    if r.get("recipe"):  # names every non-default parameter (two QAT jobs differing in epochs differ here)
        return str(r["recipe"]) + (" (sim)" if r.get("simulated") else "")
    parts = [r["method"]]
    if r.get("bits") is not None:
        parts.append(f"int{r['bits']}" + (" (sim)" if r.get("simulated") else ""))
    for c in ("observer", "granularity"):
        if r.get(c):
            parts.append(str(r[c]))
    if r.get("calibration_size") is not None:
        parts.append(f"n={r['calibration_size']}")
    return " ".join(parts)


@click.command()
@click.option("--sweep", "sweep_ids", type=ID, multiple=True, required=True, help="Sweep(s) to search.")
@click.option("--x", "x", default="latency_p50_ms", show_default=True, help="First figure (a results_flat column).")
@click.option(
    "--y",
    "y",
    default="accuracy",
    show_default=True,
    help="Second figure: accuracy, agreement, cosine, sqnr_db, metric (your metric function) or any numeric column.",
)
@click.option("--x-direction", type=_X_DIRECTIONS, default="min", show_default=True)
@click.option("--y-direction", type=_X_DIRECTIONS, default="max", show_default=True)
@click.option("--where", help='Filter first (docs/query.md), e.g. "batch_size = 8".')
@click.option("--format", "fmt", type=click.Choice(TEXT_FORMATS), default="table", show_default=True)
def pareto(
    sweep_ids: tuple[int, ...], x: str, y: str, x_direction: str, y_direction: str, where: str | None, fmt: str
) -> None:
    """The non-dominated configurations per model (and per batch size for latency figures)."""
    from farm.analysis import pareto_front
    from farm.store.columns import COLUMN_KINDS, is_numeric, resolve_column

    x, y = resolve_column(_metric_column(x), source="--x"), resolve_column(_metric_column(y), source="--y")
    for option, name in (("--x", x), ("--y", y)):
        if not is_numeric(COLUMN_KINDS[name]):
            from farm.errors import ConfigError

            raise ConfigError(f"{option}: {name} is not a numeric column")
    from farm.analysis import SIMPLICITY, excluded_note

    _, rows = _rows(list(sweep_ids), where)
    fronts = pareto_front(rows, x, y, maximize_x=x_direction == "max", maximize_y=y_direction == "max")
    flat = [{"group": " ".join(map(str, k)), **r, "config": _label(r)} for k, front in fronts.items() for r in front]
    if fmt != "table":
        runtime = ["runtime"] if "runtime" in varying(flat) else []  # a column only where the rows span runtimes
        write_rows(flat, ["model", "batch_size", "job_id", "config", *runtime, x, y, "ties", "artifact_uri"], fmt)
        return
    _note(excluded_note(rows))
    if any(r["ties"] for r in flat):
        _note(
            "configurations whose 95 % intervals overlap on both figures tie: the front keeps the simplest "
            f"({SIMPLICITY}); 'ties' lists the jobs each one stands for"
        )
    if not flat:
        out.print(f"no succeeded job has both {x} and {y}")
    for key, front in fronts.items():
        title = f"{key[0]}" + (f", batch {key[1]}" if len(key) > 1 else "")
        table = Table(title=f"Pareto front: {escape(title)} ({x} {x_direction}, {y} {y_direction})", show_edge=False)
        tied = any(r["ties"] for r in front)
        for col in ("job", "config", x, y, "size ratio", *(["ties"] if tied else []), "artifact"):
            table.add_column(col)
        for r in front:
            ties = [", ".join(map(str, r["ties"])) or "-"] if tied else []
            table.add_row(
                str(r["job_id"]),
                escape(_label(r)),
                cell(r[x]),
                cell(r[y]),
                cell(r.get("size_ratio")),
                *ties,
                escape(r.get("artifact_uri") or "-"),
            )
        out.print(table)


@click.command()
@click.option("--sweep", "sweep_ids", type=ID, multiple=True, required=True, help="Sweep(s) to search.")
@click.option(
    "--metric",
    default="accuracy",
    show_default=True,
    metavar="|".join(METRIC_NAMES),
    help="What must stay good: accuracy (labels), or label-free agreement, cosine, sqnr_db, or metric (the sweep's "
    "metric function); higher is better for all.",
)
@click.option(
    "--max-accuracy-drop", type=float, help="Accuracy budget, a fraction: 0.01 is 1 point (--metric accuracy)."
)
@click.option(
    "--min-metric", type=float, help="The floor the metric must reach, e.g. --metric cosine --min-metric 0.99."
)
@click.option(
    "--by", default="latency_p50_ms", show_default=True, help="What to optimise: latency_p50_ms, size_bytes, ..."
)
@click.option("--where", help="Filter first (docs/query.md), e.g. \"batch_size = 8 AND device = 'cpu'\".")
@click.option(
    "--include-simulated",
    is_flag=True,
    help="Let simulated (fake-quantized, bits < 8) results compete; their size is an estimate. Never on latency.",
)
@click.option("--format", "fmt", type=click.Choice(TEXT_FORMATS), default="table", show_default=True)
def best(
    sweep_ids: tuple[int, ...],
    metric: str,
    max_accuracy_drop: float | None,
    min_metric: float | None,
    by: str,
    where: str | None,
    include_simulated: bool,
    fmt: str,
) -> None:
    """Per model, the best configuration that meets the target, with its artifact URI.

    The target is an accuracy budget (--max-accuracy-drop) or a floor on a metric (--min-metric): label-free
    metrics (agreement, cosine, sqnr_db, your metric function) rank models without labels and embedding models.
    Configurations whose 95 % intervals of the figure overlap are a tie, which the simplest recipe wins (no QAT,
    fewer calibration samples, a cheaper observer); results whose health is not ok never compete.
    """
    from farm.analysis import MAXIMISE, best_configs, excluded_note
    from farm.errors import ConfigError
    from farm.metric_targets import make_target
    from farm.store.columns import COLUMN_KINDS, is_numeric, resolve_column

    target = make_target(metric, min_metric, max_accuracy_drop)
    by = resolve_column(by, source="--by")
    if not is_numeric(COLUMN_KINDS[by]):
        raise ConfigError(f"--by: {by} is not a numeric column")
    _, rows = _rows(list(sweep_ids), where)
    choices = best_configs(rows, target=target, by=by, include_simulated=include_simulated)
    direction = "highest" if by in MAXIMISE else "lowest"
    spans = "runtime" in varying(rows)
    records = [_best_record(c, target, by, spans) for c in choices]
    if fmt != "table":
        write_rows(records, list(records[0]) if records else ["model"], fmt)
        return
    if not choices:
        out.print("no succeeded jobs match")
    _note(excluded_note(rows))
    for c, rec in zip(choices, records, strict=True):
        where_ = f"{rec['model']}" + (f", batch {rec['batch_size']}" if rec["batch_size"] is not None else "")
        if c.best is not None:
            out.print(
                f"[bold]{escape(where_)}[/]: {escape(rec['config'])} (job {rec['job_id']}): {by} "
                f"{_with_interval(c.best, by)}, {_target_figure(rec, target)}, {direction} {by} of "
                f"{c.candidates} {_within(target)}\n  artifact: {escape(rec['artifact_uri'] or '-')}"
            )
        elif c.closest_miss is not None:
            out.print(
                f"[bold]{escape(where_)}[/]: [yellow]no configuration {_miss_text(target)}[/]; closest: "
                f"{escape(rec['config'])} (job {rec['job_id']}) with {_miss_figure(rec, target)}, {by} {cell(rec[by])}"
            )
        else:
            wanted = "an accuracy drop" if target.max_accuracy_drop is not None else target.column
            out.print(f"[bold]{escape(where_)}[/]: [yellow]no job has both {escape(wanted)} and {by}[/]")
        for note in c.notes:
            out.print(f"  note: {escape(note)}")


def _best_record(c: Any, target: Any, by: str, spans: bool) -> dict[str, Any]:
    """One model's choice (or closest miss) as a record; the target's metric is a key of its own unless accuracy."""
    r = c.best or c.closest_miss or {}
    column = target.column if target.metric != "accuracy" else None
    return {
        "model": c.group[0],
        "batch_size": c.group[1] if len(c.group) > 1 else None,
        "found": c.best is not None,
        "config": _label(r) if r else None,
        **({"runtime": r.get("runtime")} if spans else {}),
        "job_id": r.get("job_id"),
        "accuracy": r.get("accuracy"),
        "accuracy_drop": r.get("accuracy_drop"),
        **({column: r.get(column)} if column else {}),
        **({"metric_name": r.get("metric_name")} if column == "metric_value" else {}),
        by: r.get(by),
        "tied_job_ids": [t["job_id"] for t in c.tied],
        "artifact_uri": r.get("artifact_uri"),
    }


def _target_figure(rec: dict[str, Any], target: Any) -> str:
    if target.max_accuracy_drop is not None:
        return f"accuracy {cell(rec['accuracy'])} (drop {rec['accuracy_drop']:+.4f})"
    return f"{target.metric} {_metric_cell(rec, target)}"


def _metric_cell(rec: dict[str, Any], target: Any) -> str:
    # A missing sqnr_db beside a cosine is an output identical to fp32's: its SQNR is infinite.
    value = rec.get(target.column)
    return "inf (identical to fp32)" if value is None and target.column == "sqnr_db" else cell(value)


def _within(target: Any) -> str:
    if target.max_accuracy_drop is not None:
        return f"within {target.max_accuracy_drop:g}"
    return f"with {target.metric} >= {target.min_metric:g}"


def _miss_text(target: Any) -> str:
    if target.max_accuracy_drop is not None:
        return f"is within an accuracy drop of {target.max_accuracy_drop:g}"
    return f"reaches {target.metric} >= {target.min_metric:g}"


def _miss_figure(rec: dict[str, Any], target: Any) -> str:
    if target.max_accuracy_drop is not None:
        return f"a drop of {rec['accuracy_drop']:.4f}"
    return f"{target.metric} {_metric_cell(rec, target)}"


def _metric_column(name: str) -> str:
    """A metric's name (``metric`` is the metric function's value) as the results_flat column that holds it."""
    from farm.metric_targets import METRICS

    info = METRICS.get(name.lower())
    return info.column if info is not None else name


@click.command()
@click.argument("sweep_a", type=ID)
@click.argument("sweep_b", type=ID)
@click.option("--where", help="Filter both sweeps first (docs/query.md).")
@click.option("--format", "fmt", type=click.Choice(TEXT_FORMATS), default="table", show_default=True)
def compare(sweep_a: int, sweep_b: int, where: str | None, fmt: str) -> None:
    """The same recipes in two sweeps side by side (two hardware pools, two releases), with deltas."""
    from farm.analysis import compare as match
    from farm.store.results import method_configs

    db, rows_a = _rows([sweep_a], where)
    _, rows_b = _rows([sweep_b], where)
    from farm.analysis import excluded_note

    configs = method_configs(db, [r["job_id"] for r in rows_a + rows_b])
    pairs = match(rows_a, rows_b, configs)
    # The fidelity figures, each only where some row has it (embedding models have cosine and SQNR, no accuracy).
    fidelity = [f for f in COMPARED_FIDELITY if any(r.get(f) is not None for r in rows_a + rows_b)]
    records = []
    for p in pairs:
        a, b = p.a or {}, p.b or {}
        records.append(
            {
                **{k: v for k, v in p.recipe.items() if k != "config"},
                "config": _label(p.a or p.b or {}),
                "accuracy_a": a.get("accuracy"),
                "accuracy_b": b.get("accuracy"),
                "accuracy_delta": p.delta("accuracy"),
                "latency_p50_ms_a": a.get("latency_p50_ms"),
                "latency_p50_ms_b": b.get("latency_p50_ms"),
                "latency_ratio_b_over_a": p.ratio("latency_p50_ms"),
                "speedup_a": a.get("speedup"),
                "speedup_b": b.get("speedup"),
                "size_bytes_delta": p.delta("size_bytes"),
                **{f"{f}_{side}": row.get(f) for f in fidelity for side, row in (("a", a), ("b", b))},
                "hardware_a": a.get("hardware"),
                "hardware_b": b.get("hardware"),
                "in": "both" if p.a and p.b else ("a only" if p.a else "b only"),
            }
        )
    if fmt != "table":
        write_rows(records, list(records[0]) if records else ["model"], fmt)
        return
    both = sum(1 for r in records if r["in"] == "both")
    out.print(f"sweep {sweep_a} vs sweep {sweep_b}: {both} matching rows, {len(records) - both} in one sweep only")
    _note(excluded_note(rows_a + rows_b))
    hw = {(r["hardware_a"], r["hardware_b"]) for r in records if r["in"] == "both"}
    for ha, hb in sorted(hw, key=str):
        out.print(f"  hardware: a = {escape(str(ha))}; b = {escape(str(hb))}")
    table = Table(show_edge=False, header_style="bold")
    cols = [
        "model",
        "config",
        "batch",
        "acc a",
        "acc b",
        "Δ acc",
        "p50 a",
        "p50 b",
        "b/a",
        "speedup a",
        "speedup b",
        *(f"{COMPARED_FIDELITY[f]} {side}" for f in fidelity for side in "ab"),
        "in",
    ]
    for c in cols:
        table.add_column(c)
    for r in records:
        table.add_row(
            escape(str(r["model"])),
            escape(r["config"]),
            cell(r["batch_size"]),
            cell(r["accuracy_a"]),
            cell(r["accuracy_b"]),
            "-" if r["accuracy_delta"] is None else f"{r['accuracy_delta']:+.4f}",
            cell(r["latency_p50_ms_a"]),
            cell(r["latency_p50_ms_b"]),
            "-" if r["latency_ratio_b_over_a"] is None else f"{r['latency_ratio_b_over_a']:.2f}x",
            cell(r["speedup_a"]),
            cell(r["speedup_b"]),
            *(cell(r[f"{f}_{side}"]) for f in fidelity for side in "ab"),
            r["in"],
        )
    out.print(table)


def _note(text: str | None) -> None:
    if text:
        out.print(f"[yellow]note: {escape(text)}[/]")


def _with_interval(row: dict[str, Any], figure: str) -> str:
    """``0.118 (95 % CI 0.117-0.120)`` where the figure has an interval, else the figure alone."""
    from farm.analysis import INTERVALS

    low_col, high_col = INTERVALS.get(figure, ("", ""))
    low, high = row.get(low_col), row.get(high_col)
    if low is None or high is None:
        return cell(row.get(figure))
    return f"{cell(row.get(figure))} (95 % CI {cell(low)}-{cell(high)})"
