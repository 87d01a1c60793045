"""The readable summary of one trial."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from farm.cli.render import fraction, human_bytes, number, out, percent


def print_trial(r: dict[str, Any]) -> None:
    """Print a trial result (``JobResult.to_dict()``) for a person."""
    out.print(f"[bold]{escape(r['model'])}[/] on [bold]{escape(r['dataset'])}[/] - {escape(_method_label(r))}")
    kind = "simulated (fake quantization)" if r["simulated"] else "real kernels"
    out.print(f"  figures from: {kind}; device {r['device']}, {r['threads']} thread(s); {escape(r['hardware'] or '?')}")

    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="dim")
    t.add_column()
    if r["accuracy"] is not None:
        note = " (agreement with fp32: no labels)" if r["accuracy_kind"] == "relative_to_fp32" else ""
        drop = number(r["accuracy_drop"], "+.4f")
        t.add_row("accuracy", f"{fraction(r['accuracy'])} vs fp32 {fraction(r['accuracy_fp32'])} (drop {drop}){note}")
    if r.get("top5") is not None:
        t.add_row("top-5", f"{fraction(r['top5'])} vs fp32 {fraction(r['top5_fp32'])}")
    sqnr = "inf (identical)" if r["sqnr_db"] is None and r["agreement"] == 1.0 else number(r["sqnr_db"], ".1f", " dB")
    t.add_row("fidelity", f"agreement {fraction(r['agreement'])}, SQNR {sqnr}, cosine {fraction(r['cosine'], 5)}")
    if r.get("metric_name") is not None:  # the user's own metric function (--metric-fn)
        t.add_row("metric", f"{number(r.get('metric'), '.6g')} ({escape(r['metric_name'])})")
    size_note = " (packed estimate)" if r["size_kind"] == "packed_estimate" else ""
    t.add_row(
        "size",
        f"{human_bytes(r['size_bytes'])}{size_note} vs fp32 {human_bytes(r['size_fp32_bytes'])} "
        f"(ratio {number(r['size_ratio'], '.3f')})",
    )
    if r["coverage"] is not None:
        t.add_row(
            "coverage",
            f"{percent(r['coverage'])} of parameters, {percent(r['coverage_macs'])} of MACs "
            f"({r['coverage_layers']}/{r['coverage_layers_total']} weight layers)",
        )
    t.add_row("peak memory", human_bytes(r["peak_memory_bytes"]))
    steps = ", ".join(f"{k} {v:.2f}s" for k, v in r["timings_s"].items())
    steps = escape(steps)
    t.add_row("time", f"{number(r['duration_s'], '.1f', 's')} ({steps})")
    out.print(t)

    lat = Table(title=None, show_edge=False, header_style="bold")
    for col in ("batch", "p50 ms", "p90 ms", "p99 ms", "iqr ms", "samples/s", "speedup", "reps"):
        lat.add_column(col, justify="right")
    for row in r["latency"]:
        lat.add_row(
            str(row["batch_size"]),
            number(row["latency_p50_ms"], ".3f"),
            number(row["latency_p90_ms"], ".3f"),
            number(row["latency_p99_ms"], ".3f"),
            number(row["latency_iqr_ms"], ".3f"),
            number(row["throughput"], ".1f"),
            "n/a (simulated)" if r["simulated"] else number(row["speedup"], ".2f", "x"),
            f"{row['reps']}{'' if row['stable'] else ' (unstable)'}",
        )
    out.print(lat)
    for w in r["warnings"]:
        out.print(f"[yellow]warning:[/] {escape(w)}")
    if r.get("artifact_uri"):
        out.print(f"artifact: {escape(r['artifact_uri'])}")


def _method_label(r: dict[str, Any]) -> str:
    c = r["config"]
    m = r["method"]
    if m in ("static", "qat"):
        extra = f"{c['observer']}, {c['granularity']}, {c['activation']}, {c['backend']}, n={c['calibration_size']}"
        if m == "qat":
            extra += f", {c['steps']} steps" if c.get("steps") else f", {c['epochs']} epoch(s)"
        return f"{m} int{c['bits']} ({extra})"
    if m == "dynamic":
        return f"dynamic int8 ({c['backend']})"
    if m in ("fp16", "bf16"):
        return f"{m} ({c['mode']})"
    return m
