"""The checks pydantic cannot make: model and dataset references, method parameters (each value on its own),
and exclude / include entries. Each appends every problem it finds, with its path, so that one run of
:func:`farm.spec.load.load_spec` reports them all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from farm.errors import ConfigError, Problem
from farm.quant.config import METHODS, parse_method, public_methods
from farm.quant.layers import param_axis
from farm.spec.schema import JOB_KEYS
from farm.zoo.refs import builtin_dataset, parse_dataset_ref, parse_model_ref


@dataclass(frozen=True)
class ModelEntry:
    """One entry of ``models``: a model reference, its weights (a path or ``s3://`` URI), its dataset, and the
    output its metrics are computed on (None: the logits)."""

    ref: str
    weights: str | None
    dataset: str
    output: str | int | None = None


def check_dataset(ref: Any, problems: list[Problem], path: str = "dataset") -> None:
    if not isinstance(ref, str):
        return
    try:
        parse_dataset_ref(ref)
    except ConfigError as e:
        problems.extend(Problem(path, p.message) for p in e.problems)


def _as_index(value: Any) -> Any:
    """An output written as a string of digits ("0") is the index 0, as ``--model-output 0`` is: one key for both."""
    return int(value) if isinstance(value, str) and value.isascii() and value.isdecimal() else value


def check_output(value: Any, path: str, problems: list[Problem]) -> bool:
    """An ``output`` is a non-empty name or a non-negative index."""
    if value is None or (isinstance(value, str) and value.strip()):
        return True
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return True
    problems.append(Problem(path, f"must be an output name (a dict key) or index (0, 1, ...), got {value!r}"))
    return False


def check_models(
    raw: Any, default_dataset: str | None, problems: list[Problem], default_output: Any = None
) -> list[ModelEntry] | None:
    if not isinstance(raw, list) or not raw:
        return None
    entries: list[ModelEntry] = []
    seen: dict[tuple[str, str | None, str, Any], int] = {}
    ok = True
    for i, item in enumerate(raw):
        path = f"models[{i}]"
        if isinstance(item, str):
            item = {"ref": item}
        if not isinstance(item, dict):
            problems.append(Problem(path, "must be a reference string or a mapping with ref, weights, dataset, output"))
            ok = False
            continue
        unknown = set(item) - {"ref", "weights", "dataset", "output"}
        if unknown:
            valid = "ref, weights, dataset, output"
            problems.append(Problem(f"{path}.{sorted(unknown)[0]}", f"unknown key (valid: {valid})"))
            ok = False
        output = _as_index(item.get("output", default_output))
        if "output" in item and not check_output(item["output"], f"{path}.output", problems):
            ok = False
        if not check_output(output, "output", []):
            output = None  # reported once, where it was written
        ref, weights = item.get("ref"), item.get("weights")
        dataset = item.get("dataset", default_dataset)
        if dataset is None and isinstance(ref, str):
            dataset = builtin_dataset(ref)
        if not isinstance(ref, str):
            problems.append(Problem(f"{path}.ref", "required: a model reference such as farm:digits-cnn"))
            ok = False
            continue
        try:
            parse_model_ref(ref)
        except ConfigError as e:
            problems.extend(Problem(path, p.message) for p in e.problems)
            ok = False
        if weights is not None and not isinstance(weights, str):
            problems.append(Problem(f"{path}.weights", "must be a path or s3:// URI"))
            ok = False
        if "dataset" in item:
            if not isinstance(item["dataset"], str):
                problems.append(Problem(f"{path}.dataset", "must be a dataset reference"))
                ok = False
            else:
                before = len(problems)
                check_dataset(item["dataset"], problems, f"{path}.dataset")
                ok = ok and len(problems) == before
        if not isinstance(dataset, str):
            continue
        ident = (ref, weights, dataset, output)
        if ident in seen:
            problems.append(Problem(path, f"duplicate of models[{seen[ident]}] ({ref})"))
            ok = False
        seen[ident] = i
        entries.append(ModelEntry(ref, weights, dataset, output))
    return entries if ok else None


def check_methods(raw: Any, problems: list[Problem]) -> list[tuple[str, dict[str, list[Any]]]] | None:
    """Each entry as (name, {parameter: [values...]}), every value checked on its own."""
    if not isinstance(raw, list) or not raw:
        return None
    names = ", ".join(c.method for c in public_methods())
    out: list[tuple[str, dict[str, list[Any]]]] = []
    ok = True
    for i, item in enumerate(raw):
        path = f"methods[{i}]"
        params: dict[str, Any]
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, params = next(iter(item.items()))
            params = {} if params is None else params
            if not isinstance(params, dict):
                problems.append(Problem(f"{path}.{name}", "parameters must be a mapping of name: value or [values]"))
                ok = False
                continue
        else:
            problems.append(Problem(path, "must be a method name, or one name mapped to its parameters"))
            ok = False
            continue
        if name not in METHODS:
            problems.append(Problem(path, f"unknown method {name!r}; choose one of {names}"))
            ok = False
            continue
        axes = {k: param_axis(k, v) for k, v in params.items()}  # a layers rule list is one value
        for param, values in axes.items():
            if not values:
                problems.append(Problem(f"{path}.{name}.{param}", "an empty list gives no jobs"))
                ok = False
            # A provider means something only with the runtime it belongs to: checked with each runtime given.
            contexts = [{"runtime": r} for r in axes.get("runtime", [])] if param == "provider" else []
            for value in values:
                for context in contexts or [{}]:
                    try:
                        parse_method(name, {**context, param: value}, path=f"{path}.{name}")
                    except ConfigError as e:
                        for p in e.problems:
                            if p not in problems:
                                problems.append(p)
                        ok = False
        out.append((name, axes))
    return out if ok else None


def check_filters(entries: list[dict[str, Any]], where: str, problems: list[Problem], *, include: bool = False) -> None:
    # dataclasses.fields, not __dataclass_fields__: the latter also holds the ClassVars (summary, integer, ...).
    valid = set(JOB_KEYS).union(f.name for cls in METHODS.values() for f in dataclasses.fields(cls))
    for i, entry in enumerate(entries):
        for key in entry:
            if key not in valid:
                problems.append(Problem(f"{where}[{i}].{key}", f"unknown key (valid: {', '.join(sorted(valid))})"))
        if include:
            method = entry.get("method")
            if not isinstance(method, str):
                problems.append(Problem(f"{where}[{i}].method", "required: the method of the extra job"))
            elif method not in METHODS:
                names = ", ".join(c.method for c in public_methods())
                problems.append(Problem(f"{where}[{i}].method", f"unknown method {method!r}; choose one of {names}"))
            # An extra job may name a model or dataset the spec does not list: check them as models[] are.
            if "model" in entry:
                if not isinstance(entry["model"], str):
                    problems.append(Problem(f"{where}[{i}].model", "must be a model reference"))
                else:
                    try:
                        parse_model_ref(entry["model"])
                    except ConfigError as e:
                        problems.extend(Problem(f"{where}[{i}].model", p.message) for p in e.problems)
            if "dataset" in entry:
                if isinstance(entry["dataset"], str):
                    check_dataset(entry["dataset"], problems, f"{where}[{i}].dataset")
                else:
                    problems.append(Problem(f"{where}[{i}].dataset", "must be a dataset reference"))
