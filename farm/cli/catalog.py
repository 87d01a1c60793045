"""``farm methods`` and ``farm models``: what a trial or sweep can ask for."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from farm.cli.render import out
from farm.quant.config import parameter_specs, public_methods


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def methods(as_json: bool) -> None:
    """List the quantization methods and their parameters."""
    data: list[dict[str, Any]] = [
        {
            "method": cls.method,
            "version": cls.version,
            "summary": cls.summary,
            "bits_axis": cls.integer,
            "calibration_axis": cls.calibrated,
            "parameters": parameter_specs(cls),
        }
        for cls in public_methods()
    ]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for m in data:
        out.print(f"[bold]{m['method']}[/] - {m['summary']}")
        if not m["parameters"]:
            out.print("  (no parameters)\n")
            continue
        t = Table(show_edge=False, header_style="dim", pad_edge=False)
        for col in ("parameter", "type", "default", "allowed", "meaning"):
            # Nothing is cut to "…": a parameter name is what the reader types, so it never wraps either.
            t.add_column(col, no_wrap=col == "parameter", overflow="fold")
        for p in m["parameters"]:
            t.add_row("  " + p["name"], p["type"], _show(p["default"]), _allowed(p), p["help"])
        out.print(t)
        out.print()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models(as_json: bool) -> None:
    """List model and dataset references (torchvision's classification models included)."""
    from farm.zoo.models import builtin_models, torchvision_models
    from farm.zoo.refs import DATASET_SCHEMES, MODEL_SCHEMES

    data: dict[str, Any] = {
        "model_schemes": MODEL_SCHEMES,
        "builtin": builtin_models(),
        "torchvision": torchvision_models(),
        "dataset_schemes": DATASET_SCHEMES,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    out.print("[bold]Models[/] (--model / models: in a sweep)")
    for scheme, text in MODEL_SCHEMES.items():
        out.print(f"  [cyan]{scheme}:[/] {text}")
    for ref, text in data["builtin"].items():
        out.print(f"    {ref} - {text}")
    out.print(f"    torchvision: {', '.join(data['torchvision'])}")
    out.print("\n[bold]Datasets[/] (--dataset / dataset: in a sweep)")
    for scheme, text in DATASET_SCHEMES.items():
        out.print(f"  [cyan]{scheme}:[/] {text}")


def _show(value: Any) -> str:
    return "-" if value is None else str(value)


def _allowed(p: dict[str, Any]) -> str:
    if p["choices"]:
        return ", ".join(p["choices"])
    lo, hi = p["min"], p["max"]
    if lo is not None and hi is not None:
        return f"{lo:g}..{hi:g}"
    if lo is not None:
        return f">= {lo:g}"
    return ""
