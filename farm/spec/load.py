"""load_spec: parse, check and expand a spec, reporting every problem at once; read_spec_text: a spec file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import ValidationError

from farm.errors import ConfigError, Problem
from farm.quant.config import METHODS
from farm.routing import Pools
from farm.runtimes.registry import unavailable
from farm.spec.checks import check_dataset, check_filters, check_methods, check_models, check_output
from farm.spec.expand import expand, product_bound
from farm.spec.plan import Plan
from farm.spec.schema import SweepSpec, parse_text, pydantic_problems
from farm.spec.weights import RemoteDigest

DEFAULT_JOB_LIMIT = 10_000
# Past this multiple of the limit, a spec is refused from its axis lengths alone, before expansion.
_EARLY_LIMIT_FACTOR = 10


def read_spec_text(path: str | Path) -> str:
    """The spec file's text.

    Raises:
        ConfigError: the file does not exist or can't be read.
    """
    p = Path(path)
    try:
        return p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"spec file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"spec file {p} can't be read: {e}") from None


def load_spec(
    text: str,
    *,
    source: str = "spec",
    limit: int | None = DEFAULT_JOB_LIMIT,
    pools: Pools | None = None,
    remote_digest: RemoteDigest | None = None,
) -> Plan:
    """Parse, validate and expand a spec.

    Planning makes no network call of its own: weights in S3 are keyed by ``remote_digest``'s answer, which
    the caller chooses (the CLI passes :func:`farm.artifacts.object_digest`); without it they are a problem.

    Args:
        text: YAML or JSON.
        source: the file name, for messages.
        limit: refuse a spec expanding past this many jobs (None: no limit).
        pools: the worker pools a farm submission routes to; a named (non-default) pool becomes part of the
            keys of the jobs it measures.
        remote_digest: the digest of an ``s3://`` weights object; None refuses S3 weights.

    Returns:
        The plan.

    Raises:
        ConfigError: listing every problem with its path.
    """
    data = parse_text(text, source)
    if isinstance(data, dict) and "tune" in data:
        raise ConfigError(
            "a spec with a tune: section is a search: plan it with farm.jobs.tune_plan.plan_tune "
            "(farm sweep run / submit and farm tune do)",
            source=source,
        )
    problems: list[Problem] = []
    spec: SweepSpec | None = None
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        problems.extend(pydantic_problems(e))
    # The values pydantic leaves loosely typed (references, method parameters) are checked here, whether or
    # not the structure was valid, so that one run reports everything.
    raw = data if isinstance(data, dict) else {}
    default_dataset = raw.get("dataset", "sklearn:digits")
    default_output = raw.get("output")
    check_output(default_output, "output", problems)
    # A spec that names no dataset runs each built-in model on its own (farm:tiny-encoder on tokens:32).
    dataset_default = default_dataset if isinstance(default_dataset, str) and "dataset" in raw else None
    models = check_models(raw.get("models"), dataset_default, problems, default_output)
    methods = check_methods(raw.get("methods"), problems)
    check_dataset(default_dataset, problems)
    if spec is not None and methods is not None:
        if spec.bits is not None and not any(METHODS[name].integer for name, _ in methods):
            problems.append(
                Problem("bits", "given, but no method in methods takes a bit-width (fp32, fp16, bf16 are float)")
            )
        check_filters(spec.exclude, "exclude", problems)
        check_filters(spec.include, "include", problems, include=True)
    if problems or spec is None or models is None or methods is None:
        raise ConfigError(problems, source=source)
    if limit is not None:
        # Refuse a runaway product before building (and hashing) every job of it.
        bound = product_bound(spec, models, methods)
        if bound > _EARLY_LIMIT_FACTOR * limit:
            raise ConfigError(
                f"the spec's axes multiply to {bound:,} combinations before exclude, far past the job limit of "
                f"{limit:,}: narrow its axes or pass --force",
                source=source,
            )
    plan = expand(spec, text, models, methods, problems, pools, remote_digest)
    if problems:
        raise ConfigError(problems, source=source)
    if limit is not None and len(plan.jobs) > limit:
        raise ConfigError(
            f"the spec expands to {len(plan.jobs):,} jobs, past the limit of {limit:,}: "
            "narrow its axes or pass --force",
            source=source,
        )
    return plan


def check_runs_here(plan: Plan, *, source: str = "spec") -> None:
    """Refuse a plan that runs here (``farm sweep run``, ``farm tune -j``) with a job this machine cannot start,
    before anything is written: a runtime it lacks, a model file or image folder that does not exist, an entrypoint
    outside FARM_ALLOWED_MODULES. A farm submission is not checked here: its workers say which runtimes they serve,
    and their files and allowlist are their own.

    Raises:
        ConfigError: one line per problem (a missing runtime names the extra that installs it).
    """
    needed = dict.fromkeys(j.spec.method.runtime for j in plan.jobs if j.role != "stage")
    problems = [Problem("runtime", why) for why in map(unavailable, needed) if why is not None]
    explores = any((getattr(j, "params", None) or {}).get("trials") for j in plan.jobs if j.role == "stage")
    if explores and importlib.util.find_spec("optuna") is None:
        problems.append(Problem("tune.trials", "the explore stage needs Optuna: pip install 'quantfarm[engine]'"))
    refs = dict.fromkeys((j.spec.model, j.spec.dataset) for j in plan.jobs if j.role != "stage")
    problems += dict.fromkeys(p for model, dataset in refs for p in _reference_problems(model, dataset))
    metrics = dict.fromkeys(j.spec.metric for j in plan.jobs if j.role != "stage" and j.spec.metric)
    problems += [p for metric in metrics for p in _metric_problems(metric)]
    if problems:
        raise ConfigError(problems, source=source)


def _reference_problems(model: str, dataset: str) -> list[Problem]:
    """What keeps a job of ``model`` on ``dataset`` from loading here, found without loading anything (the loaders
    in farm.zoo check the same, inside the job: after its sweep was written)."""
    from farm.zoo.refs import check_entrypoint_allowed, parse_dataset_ref, parse_model_ref

    model_ref, data_ref = parse_model_ref(model), parse_dataset_ref(dataset)
    out = []
    for path, ref in (("models", model_ref), ("dataset", data_ref)):
        if ref.scheme == "entrypoint":
            try:
                check_entrypoint_allowed(ref)
            except ConfigError as e:
                out += [Problem(path, p.message) for p in e.problems]
    if model_ref.scheme == "file" and not Path(model_ref.body).is_file():
        out.append(Problem("models", f"model file {model_ref.body} does not exist"))
    if data_ref.scheme == "imagefolder" and not Path(data_ref.body).expanduser().is_dir():
        out.append(Problem("dataset", f"imagefolder path {data_ref.body} does not exist or is not a directory"))
    return out


def _metric_problems(metric: str) -> list[Problem]:
    """A user metric function (``entrypoint:pkg.module:function``) outside FARM_ALLOWED_MODULES, as every job of it
    would fail to load it."""
    from farm.zoo.refs import Ref, check_entrypoint_allowed

    try:
        check_entrypoint_allowed(Ref("metric", "entrypoint", metric.removeprefix("entrypoint:")))
    except ConfigError as e:
        return [Problem("metric", p.message) for p in e.problems]
    return []
