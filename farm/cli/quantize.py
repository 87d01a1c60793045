"""``farm quantize``: one trial on this machine."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from farm.cli.output import json_text
from farm.cli.params import SEED, parse_model_output
from farm.errors import ConfigError, Problem
from farm.quant.bench_config import BenchmarkConfig
from farm.quant.config import (
    ACTIVATIONS,
    BACKENDS,
    FLOAT_METHODS,
    GRANULARITIES,
    METHODS,
    OBSERVERS,
    OPTIMIZERS,
    RUNTIME_NAMES,
    STATIC_MODES,
    MethodConfig,
    parse_method,
    public_methods,
    resolve_device,
)

# CLI option name -> method parameter name
_PARAM_OPTIONS = {
    "bits": "bits",
    "calibration_size": "calibration_size",
    "observer": "observer",
    "percentile": "percentile",
    "granularity": "granularity",
    "activation": "activation",
    "backend": "backend",
    "mode": "mode",
    "epochs": "epochs",
    "steps": "steps",
    "lr": "lr",
    "optimizer": "optimizer",
    "runtime": "runtime",
    "provider": "provider",
}


class BatchSizes(click.ParamType):
    """One or more batch sizes: ``8`` or ``1,8,32``."""

    name = "N[,N...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(int(v) for v in str(value).replace(" ", "").split(",") if v)
        except ValueError:
            self.fail(f"{value!r} is not a batch size or a comma-separated list of them", param, ctx)


@click.command()
@click.option(
    "--model", "model_ref", required=True, help="Model reference, e.g. farm:digits-cnn or torchvision:resnet18."
)
@click.option("--dataset", "dataset_ref", help="Dataset reference; default sklearn:digits for the built-in models.")
@click.option("--weights", type=click.Path(dir_okay=False), help="State-dict file to load into the model.")
@click.option(
    "--method",
    required=True,
    type=click.Choice([c.method for c in public_methods()]),
    help="Quantization method (see `farm methods`).",
)
@click.option("--bits", type=int, help="Bit-width of integer methods: 8 real int8, 2-7 simulated.")
@click.option("--calibration-size", type=int, help="Calibration samples (static, qat).")
@click.option("--observer", type=click.Choice(OBSERVERS), help="Activation range observer.")
@click.option("--percentile", type=float, help="Percentile kept by the percentile observer, e.g. 99.99.")
@click.option("--granularity", type=click.Choice(GRANULARITIES), help="Weight scales per channel or per tensor.")
@click.option("--activation", type=click.Choice(ACTIVATIONS), help="Activation scheme.")
@click.option("--backend", type=click.Choice(BACKENDS), help="Quantized engine.")
@click.option("--mode", type=click.Choice(STATIC_MODES), help="static: fx (trace) or eager (QuantStub in the model).")
@click.option("--epochs", type=int, help="qat: passes over the train split.")
@click.option("--steps", type=int, help="qat: optimizer steps (overrides --epochs).")
@click.option("--lr", type=float, help="qat: learning rate.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), help="qat: optimizer.")
@click.option(
    "--runtime",
    metavar="|".join(RUNTIME_NAMES),
    help="Deploy and time the model on this runtime (exported for all but torch; see `farm methods`). [torch]",
)
@click.option("--provider", help="onnxruntime execution provider, e.g. CUDAExecutionProvider. [the device's default]")
@click.option("--param", "extra", multiple=True, metavar="KEY=VALUE", help="Any other method parameter.")
@click.option(
    "--layer",
    "layer_rules",
    multiple=True,
    metavar="SELECTOR:ACTION[,ACTION]",
    help="A per-layer rule, repeatable (later wins): 'fc:skip', 'type=Linear:granularity=per_channel', "
    "'re:layer[34][.].*:bits=4'; selectors and actions in docs/methods.md, layer names from `farm layers MODEL`.",
)
@click.option("--layers-file", type=click.Path(dir_okay=False), help="YAML list of per-layer rules (a spec's layers:).")
@click.option(
    "--batch-size",
    "batch_sizes",
    type=BatchSizes(),
    multiple=True,
    help="Benchmark batch sizes: repeat the option or give a list (--batch-size 1,8,32). [1, 8]",
)
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads for the whole trial.")
@click.option(
    "--isolation",
    default="exclusive",
    show_default=True,
    metavar="exclusive|pinned|none",
    help="While timing: exclusive (other farm jobs on this host pause; own cores), pinned (own cores) or none.",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    help="Where to evaluate and time (fp methods; default cuda for fp16, else cpu); for qat, where to fine-tune.",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Calibration sampling and fine-tuning seed.")
@click.option("--output", type=click.Path(file_okay=False), help="Artifact directory. [FARM_HOME/trials/...]")
@click.option(
    "--model-output",
    "model_output",
    metavar="NAME|INDEX",
    help="The model output metrics are computed on: a dict key (embedding) or tuple index (0). [the logits]",
)
@click.option(
    "--metric-fn",
    "metric_fn",
    metavar="entrypoint:PKG.MOD:FN",
    help="Your metric: FN(outputs, reference_outputs, labels_or_None) -> float, higher is better; stored as metric "
    "(module in FARM_ALLOWED_MODULES).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the summary.")
def quantize(
    model_ref: str,
    dataset_ref: str | None,
    weights: str | None,
    method: str,
    extra: tuple[str, ...],
    batch_sizes: tuple[tuple[int, ...], ...],
    threads: int,
    isolation: str,
    device: str | None,
    seed: int,
    output: str | None,
    model_output: str | None,
    metric_fn: str | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Run one quantization trial on this machine and write its artifact.

    \b
    Examples:
      farm quantize --model farm:digits-cnn --method static
      farm quantize --model farm:digits-cnn --method qat --bits 4 --epochs 2 --json
      farm quantize --model torchvision:resnet18 --dataset imagefolder:/data/val --method static --batch-size 8
      farm quantize --model farm:tiny-encoder --dataset tokens:32 --method dynamic --model-output embedding
    """
    from farm.zoo.refs import parse_dataset_ref, parse_model_ref

    parse_model_ref(model_ref)
    if dataset_ref is None:
        if not model_ref.startswith("farm:"):
            raise ConfigError("--dataset is required for models other than the built-in farm: ones")
        from farm.zoo.refs import builtin_dataset

        dataset_ref = builtin_dataset(model_ref)
    parse_dataset_ref(dataset_ref)
    from farm.cli.layer_rules import rules_from_options, with_rules

    rules = rules_from_options(options.pop("layer_rules", ()), options.pop("layers_file", None))
    config = with_rules(build_config(method, options, extra, device), rules)
    bench_device = "auto" if device is None or method == "qat" else device
    sizes = tuple(dict.fromkeys(b for group in batch_sizes for b in group))
    bench = BenchmarkConfig(batch_sizes=sizes or (1, 8), threads=threads, device=bench_device, isolation=isolation)
    problems = bench.problems()
    if problems:
        raise ConfigError([Problem(_option(p.path), p.message) for p in problems])
    _check_runtime(config, bench_device)
    if weights is not None and not Path(weights).is_file():
        raise ConfigError(f"--weights: {weights} does not exist")

    if metric_fn is not None:  # refused here, before anything is written: bad syntax, not allowlisted, no import
        from farm.quant.metrics import load_metric_fn

        try:
            load_metric_fn(metric_fn)
        except ConfigError as e:
            raise ConfigError([Problem("--metric-fn", p.message) for p in e.problems]) from None
    target = Path(output) if output else _default_output(model_ref, config)
    _check_output(target)
    from farm.jobs.contract import JobSpec

    selected = parse_model_output(model_output)
    spec = JobSpec(
        model_ref, dataset_ref, config, weights=weights, seed=seed, benchmark=bench, output=selected, metric=metric_fn
    )
    result = _run(spec, target, show_progress=not as_json)
    if as_json:
        click.echo(json_text(result))
    else:
        from farm.cli.summary import print_trial

        print_trial(result)


def build_config(method: str, options: dict[str, Any], extra: tuple[str, ...], device: str | None) -> MethodConfig:
    """The method config from the CLI options that were given.

    Raises:
        ConfigError: every problem, named by its CLI option.
    """
    given = {_PARAM_OPTIONS[k]: v for k, v in options.items() if k in _PARAM_OPTIONS and v is not None}
    problems: list[Problem] = []
    if method in FLOAT_METHODS and "bits" in given:
        problems.append(Problem("--bits", f"{method} is a floating-point method and takes no bit-width"))
        given.pop("bits")
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(Problem("--param", f"expected KEY=VALUE, got {item!r}"))
            continue
        given[key.strip().replace("-", "_")] = _parse_value(value)
    if method == "qat" and device is not None:
        given["device"] = device
    fields = {f.name for f in dataclasses.fields(METHODS[method])}  # the parameters, not the ClassVars
    for name in list(given):
        if name not in fields:
            option = _option(name) if name in _PARAM_OPTIONS.values() else f"--param {name}"
            problems.append(
                Problem(option, f"method {method} takes no {name} (it takes: {', '.join(sorted(fields)) or 'nothing'})")
            )
            given.pop(name)
    try:
        config = parse_method(method, given)
    except ConfigError as e:
        problems.extend(Problem(_option(p.path), p.message) for p in e.problems)
        config = None
    if problems or config is None:
        raise ConfigError(problems)
    return config


def _option(path: str) -> str:
    return f"--{path.replace('_', '-')}" if path and not path.startswith("-") else path


def _parse_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _default_output(model_ref: str, config: MethodConfig) -> Path:
    from farm.runtimes.registry import short_name
    from farm.settings import farm_home

    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{model_ref}-{config.method}")
    bits = getattr(config, "bits", None)
    if bits is not None:
        slug += f"-int{bits}"
    if config.runtime != "torch":
        slug += f"-{short_name(config.runtime)}"
    return farm_home() / "trials" / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_output(target: Path) -> None:
    """Refuse an output directory that holds something other than an earlier artifact."""
    if target.exists():
        if not target.is_dir():
            raise ConfigError(f"--output {target} exists and is not a directory")
        if any(target.iterdir()) and not (target / "manifest.json").exists():
            raise ConfigError(f"--output {target} exists, is not empty, and holds no earlier artifact; choose another")


def _run(spec: Any, target: Path, *, show_progress: bool) -> dict[str, Any]:
    """Run the trial in a scratch directory beside ``target``; move it into place only on success."""
    from farm.cli.render import interactive
    from farm.jobs.steps import run_job
    from farm.quant.pinning import pinned_for

    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]  # removed again on failure
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    # Cores of its own for the trial (unless isolation none): no other farm job on this host runs on them.
    pinning = pinned_for(spec.benchmark.threads) if spec.benchmark.isolation != "none" else contextlib.nullcontext()
    try:
        with pinning:
            if show_progress and interactive():
                from farm.cli.progress import StepProgress

                with StepProgress(spec.method.label()) as progress:
                    result = run_job(spec, scratch, progress=progress.update)
            else:
                result = run_job(spec, scratch)
        result.artifact_uri = str(target.resolve())
        _install(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        for folder in created:  # innermost first: nothing half-written is left behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return result.to_dict()


def _install(scratch: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(scratch, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(scratch, target)


def _check_runtime(config: MethodConfig, bench_device: str) -> None:
    """Refuse, before anything is written, a runtime that can't run on the device or isn't installed here.

    Raises:
        ConfigError: the device problem (named by its option), or the extra that installs the runtime.
    """
    from farm.runtimes.registry import unavailable

    if config.runtime != "torch":  # torch's own device rules are checked where the job runs, as before
        try:
            resolve_device(config, bench_device)
        except ConfigError as e:
            raise ConfigError([Problem(_option(p.path), p.message) for p in e.problems]) from None
    why = unavailable(config.runtime)
    if why is not None:
        raise ConfigError(Problem("--runtime", why))
