"""``farm layers MODEL``: the layers a method would quantize, with their parameter and MAC shares: the names
per-layer rules select (``--layer`` of ``farm quantize``: :mod:`farm.cli.layer_rules`)."""

from __future__ import annotations

import json
from typing import Any

import click

from farm.errors import ConfigError

_METHODS = ("dynamic", "static", "qat", "fp16", "bf16")


@click.command()
@click.argument("model_ref", metavar="MODEL")
@click.option("--dataset", "dataset_ref", help="Dataset whose first sample counts MACs; default for farm: models.")
@click.option(
    "--method",
    type=click.Choice(_METHODS),
    help="Only the layers this method quantizes (or casts). [every layer dynamic or static/qat quantize]",
)
@click.option(
    "--model-output",
    "output_text",
    metavar="NAME|INDEX",
    help="The output compared (a dict key or tuple index): mark the layers it does not read, which a tune skips.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def layers(model_ref: str, dataset_ref: str | None, method: str | None, output_text: str | None, as_json: bool) -> None:
    """List MODEL's quantizable layers: the names per-layer rules select, with parameter and MAC shares.

    \b
    Examples:
      farm layers farm:digits-cnn
      farm layers farm:tiny-encoder --method dynamic --json
      farm layers torchvision:resnet18 --dataset imagefolder:/data/val --method static
      farm layers farm:tiny-encoder --method dynamic --model-output embedding
    """
    from farm.cli.params import parse_model_output
    from farm.jobs.contract import JobSpec
    from farm.quant.config import Fp32Config
    from farm.quant.layer_list import feeding, layer_table
    from farm.quant.measure import check_runs
    from farm.zoo.data import first_batch, load_dataset
    from farm.zoo.models import load_model
    from farm.zoo.refs import builtin_dataset, parse_dataset_ref, parse_model_ref

    parse_model_ref(model_ref)
    output = parse_model_output(output_text)
    if dataset_ref is None:
        if not model_ref.startswith("farm:"):
            raise ConfigError("--dataset is required for models other than the built-in farm: ones")
        dataset_ref = builtin_dataset(model_ref)
    parse_dataset_ref(dataset_ref)
    loaded = load_model(model_ref)
    if loaded.graph:
        raise ConfigError(f"{model_ref} is a serialized graph: it has no torch layers for rules to name")
    model = loaded.module.cpu().eval()
    example = first_batch(load_dataset(dataset_ref).test, 1)
    # A model that can't take the dataset's inputs is refused in one line, as farm quantize refuses it.
    check_runs(model, example, JobSpec(model_ref, dataset_ref, Fp32Config(), output=output))
    rows: dict[str, dict[str, Any]] = {}
    for m in (method,) if method else ("dynamic", "static"):  # qat quantizes the layers static does
        for info in layer_table(model, example, m):
            row = rows.setdefault(info.name, {**info.to_dict(), "methods": []})
            row["methods"] += ["static", "qat"] if m == "static" and not method else [m]
    ordered = [rows[n] for n, _ in model.named_modules() if n in rows]  # model order
    if output is not None:
        read = feeding(model, example, list(rows), output)
        for row in ordered:
            row["feeds_output"] = row["name"] in read
    total_params = sum(p.numel() for p in model.parameters())
    data = {"model": model_ref, "dataset": dataset_ref, "method": method, "output": output,
            "total_params": total_params, "layers": ordered}  # fmt: skip
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _print(data)


def _print(data: dict[str, Any]) -> None:
    from rich.table import Table

    from farm.cli.render import out

    rows = data["layers"]
    if not rows:
        what = data["method"] or "dynamic, static or qat"
        out.print(f"{data['model']}: {what} quantizes no layer of this model")
        return
    table = Table(show_edge=False, header_style="dim", pad_edge=False)
    columns = ("layer", "type", "params", "params %", "MACs", "MACs %") + (() if data["method"] else ("methods",))
    columns += ("feeds output",) if data["output"] is not None else ()
    for col in columns:
        table.add_column(col, no_wrap=col == "layer", justify="right" if col.startswith(("params", "MACs")) else "left")
    for r in rows:
        cells = [r["name"], r["type"], f"{r['params']:,}", f"{r['param_share']:.1%}", f"{r['macs']:,}",
                 f"{r['mac_share']:.1%}"]  # fmt: skip
        cells += [] if data["method"] else [" ".join(r["methods"])]
        cells += [] if data["output"] is None else ["yes" if r["feeds_output"] else "no"]
        table.add_row(*cells)
    out.print(table)
    params = sum(r["param_share"] for r in rows)
    macs = sum(r["mac_share"] for r in rows)
    out.print(
        f"{len(rows)} layers holding {params:.1%} of {data['total_params']:,} parameters and {macs:.1%} of the MACs. "
        "Rules select them by name (glob, re:REGEX) or type: --layer 'NAME:skip', layers: [{name: NAME, skip: true}]"
    )
    unread = [r["name"] for r in rows if r.get("feeds_output") is False]
    if unread:
        out.print(
            f"output {data['output']!r} does not read {', '.join(unread)}: quantizing them changes nothing it "
            "computes, an export of it drops them, and farm tune does not search them"
        )
