"""farm.spec: validation that reports every problem with its path, expansion into jobs, deterministic keys.

The CLI side of the same bad specs (exit status 2, nothing written) is in tests/unit/cli/test_sweep_cli.py,
which imports :data:`BAD_SPECS` from here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from farm.errors import ConfigError, Problem
from farm.spec.load import DEFAULT_JOB_LIMIT, load_spec
from farm.spec.plan import Plan, job_key
from tests.sweeps import FAST_BENCHMARK, TOY_DATA, TOY_MLP, write_spec

# The README's example, with bf16 added: two models, so that there are two references.
README_SPEC = """\
name: digits-int8
models: [farm:digits-cnn, farm:digits-mlp]
dataset: sklearn:digits
methods:
  - fp32
  - bf16
  - dynamic
  - static:
      observer: [minmax, histogram]
      granularity: [per_tensor, per_channel]
  - qat:
      epochs: [1, 3]
bits: [8, 4]
calibration_size: [32, 256]
benchmark: {batch_size: [1, 8], threads: 1}
"""
MODELS = ("farm:digits-cnn", "farm:digits-mlp")
OBSERVERS, GRANULARITIES, EPOCHS, BITS, CALIBRATION = (
    ("minmax", "histogram"),
    ("per_tensor", "per_channel"),
    (1, 3),
    (8, 4),
    (32, 256),
)

OK_HEAD = "name: x\nmodels: [farm:digits-cnn]\n"
# name -> (spec text, file name, the exact problems as (path, a fragment of the message)).
BAD_SPECS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "yaml syntax error": (
        "name: x\nmodels: [farm:digits-cnn\nmethods: [fp32]\n",
        "spec.yaml",
        [("", "invalid YAML at line 3, column 8")],
    ),
    "yaml bad indentation": (
        "name: x\nmodels:\n  - farm:digits-cnn\n methods: [fp32]\n",
        "spec.yaml",
        [("", "invalid YAML at line 4")],
    ),
    "duplicate yaml key": (
        "name: x\nmodels: [farm:digits-cnn]\nmethods: [fp32]\nname: y\n",
        "spec.yaml",
        [("", "duplicate key 'name' (line 4)")],
    ),
    "duplicate nested yaml key": (
        OK_HEAD + "methods:\n  - static:\n      observer: minmax\n      observer: histogram\n",
        "spec.yaml",
        [("", "duplicate key 'observer' (line 6)")],
    ),
    "json syntax error": (
        '{"name": "x",\n "models": ["farm:digits-cnn"],\n "methods": ["fp32"],}\n',
        "spec.json",
        [("", "invalid JSON at line 3")],
    ),
    "not a mapping": ("- fp32\n- dynamic\n", "spec.yaml", [("", "a spec must be a mapping")]),
    "unknown top-level key": (
        OK_HEAD + "methods: [fp32]\nmethod: [static]\n",
        "spec.yaml",
        [("method", "unknown top-level key (valid: name, description, models, dataset, methods,")],
    ),
    "missing name": ("models: [farm:digits-cnn]\nmethods: [fp32]\n", "spec.yaml", [("name", "required")]),
    "empty models": ("name: x\nmodels: []\nmethods: [fp32]\n", "spec.yaml", [("models", "must list at least one")]),
    "empty methods": (OK_HEAD + "methods: []\n", "spec.yaml", [("methods", "must list at least one")]),
    "unknown method": (
        OK_HEAD + "methods: [fp32, int4]\n",
        "spec.yaml",
        [("methods[1]", "unknown method 'int4'; choose one of fp32, fp16, bf16, dynamic, static, qat")],
    ),
    "unknown method parameter": (
        OK_HEAD + "methods:\n  - static: {observers: [minmax]}\n",
        "spec.yaml",
        [("methods[0].static.observers", "unknown parameter for method static; valid: bits, calibration_size,")],
    ),
    "class attribute as a method parameter": (
        OK_HEAD + "methods:\n  - static: {summary: x}\n",
        "spec.yaml",
        [("methods[0].static.summary", "unknown parameter for method static")],
    ),
    "method parameter of the wrong type": (
        OK_HEAD + "methods:\n  - static: {calibration_size: many}\n",
        "spec.yaml",
        [("methods[0].static.calibration_size", "must be an integer, got 'many'")],
    ),
    "method choice that does not exist": (
        OK_HEAD + "methods:\n  - static: {observer: [minmax, minmax2]}\n",
        "spec.yaml",
        [("methods[0].static.observer", "'minmax2' is not one of minmax, moving_average, histogram, percentile")],
    ),
    "models not a list": (
        "name: x\nmodels: farm:digits-cnn\nmethods: [fp32]\n",
        "spec.yaml",
        [("models", "must be a list, got 'farm:digits-cnn'")],
    ),
    "seed not an integer": (OK_HEAD + "methods: [fp32]\nseed: abc\n", "spec.yaml", [("seed", "must be an integer")]),
    "seed quoted": (OK_HEAD + "methods: [fp32]\nseed: '3'\n", "spec.yaml", [("seed", "must be an integer, got '3'")]),
    # YAML 1.1 reads on / yes / true as a boolean: never a calibration size of 1.
    "calibration size a boolean": (
        OK_HEAD + "methods: [static]\ncalibration_size: on\n",
        "spec.yaml",
        [("calibration_size[0]", "must be an integer, got True")],
    ),
    "threads a boolean": (
        OK_HEAD + "methods: [fp32]\nbenchmark: {threads: yes}\n",
        "spec.yaml",
        [("benchmark.threads", "must be an integer, got True")],
    ),
    "benchmark not a mapping": (
        OK_HEAD + "methods: [fp32]\nbenchmark: [1, 8]\n",
        "spec.yaml",
        [("benchmark", "must be a mapping, got [1, 8]")],
    ),
    "bits a word": (
        OK_HEAD + "methods: [static]\nbits: [8, eight]\n",
        "spec.yaml",
        [("bits[1]", "must be an integer, got 'eight'")],
    ),
    "bits out of range": (OK_HEAD + "methods: [static]\nbits: 9\n", "spec.yaml", [("bits", "between 2 and 8, got 9")]),
    "bits only for fp methods": (
        OK_HEAD + "methods: [fp32, bf16]\nbits: [8, 4]\n",
        "spec.yaml",
        [("bits", "given, but no method in methods takes a bit-width (fp32, fp16, bf16 are float)")],
    ),
    "duplicate models": (
        "name: x\nmodels: [farm:digits-cnn, farm:digits-mlp, farm:digits-cnn]\nmethods: [fp32]\n",
        "spec.yaml",
        [("models[2]", "duplicate of models[0] (farm:digits-cnn)")],
    ),
    "duplicate models, one as a mapping": (
        "name: x\nmodels: [farm:digits-cnn, {ref: farm:digits-cnn, dataset: sklearn:digits}]\nmethods: [fp32]\n",
        "spec.yaml",
        [("models[1]", "duplicate of models[0] (farm:digits-cnn)")],
    ),
    "calibration size 0": (
        OK_HEAD + "methods: [static]\ncalibration_size: 0\n",
        "spec.yaml",
        [("calibration_size", "must be at least 1, got 0")],
    ),
    "calibration size 0 in a method": (
        OK_HEAD + "methods:\n  - qat: {calibration_size: [16, 0]}\n",
        "spec.yaml",
        [("methods[0].qat.calibration_size", "must be at least 1, got 0")],
    ),
    "batch size 0": (
        OK_HEAD + "methods: [fp32]\nbenchmark: {batch_size: [1, 0]}\n",
        "spec.yaml",
        [("benchmark.batch_size", "batch sizes must be at least 1, got 0")],
    ),
    "unknown isolation": (
        OK_HEAD + "methods: [fp32]\nbenchmark: {isolation: sometimes}\n",
        "spec.yaml",
        [("benchmark.isolation", "'sometimes' is not one of exclusive, pinned, none")],
    ),
    "unknown benchmark key": (
        OK_HEAD + "methods: [fp32]\nbenchmark: {batch_sizes: [1]}\n",
        "spec.yaml",
        [("benchmark.batch_sizes", "unknown key (valid: batch_size, threads,")],
    ),
    "unknown model scheme": (
        "name: x\nmodels: [hub:resnet18]\nmethods: [fp32]\n",
        "spec.yaml",
        [("models[0]", "scheme 'hub' is not one of")],
    ),
    "unknown dataset": (OK_HEAD + "methods: [fp32]\ndataset: sklearn:iris\n", "spec.yaml", [("dataset", "iris")]),
    "fp16 on a cpu benchmark": (
        OK_HEAD + "methods: [fp16]\nbenchmark: {device: cpu}\n",
        "spec.yaml",
        [("benchmark.device", "fp16 runs on CUDA only")],
    ),
    "exclude key that is a class attribute": (
        OK_HEAD + "methods: [static]\nexclude:\n  - {method: static, integer: true}\n",
        "spec.yaml",
        [("exclude[0].integer", "unknown key (valid: activation, backend, batch_size, bits,")],
    ),
    "include without a method": (
        OK_HEAD + "methods: [fp32]\ninclude:\n  - {bits: 4}\n",
        "spec.yaml",
        [("include[0].method", "required: the method of the extra job")],
    ),
    "include of an unknown method": (
        OK_HEAD + "methods: [fp32]\ninclude:\n  - {method: int4}\n",
        "spec.yaml",
        [("include[0].method", "unknown method 'int4'")],
    ),
    "include of an unknown model and dataset": (
        OK_HEAD + "methods: [fp32]\ninclude:\n  - {method: dynamic, model: 'hub:x', dataset: 'kaggle:y'}\n",
        "spec.yaml",
        [("include[0].model", "scheme 'hub'"), ("include[0].dataset", "scheme 'kaggle'")],
    ),
    "include parameter out of range": (
        OK_HEAD + "methods: [fp32]\ninclude:\n  - {method: static, bits: [4, 1]}\n",
        "spec.yaml",
        [("include[0].bits", "must be at least 2, got 1")],
    ),
    "past the job limit": (
        "name: big\nmodels: [farm:digits-cnn, farm:digits-mlp]\nmethods:\n  - static:\n"
        "      observer: [minmax, moving_average, histogram, percentile]\n"
        "      granularity: [per_tensor, per_channel]\n      activation: [affine, symmetric]\n"
        "      backend: [x86, fbgemm, qnnpack, onednn]\n"
        "bits: [2, 3, 4, 5, 6, 7, 8]\ncalibration_size: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]\n",
        "spec.yaml",
        # 2 models x 4 x 2 x 2 x 4 x 7 bits x 12 sizes, plus 2 references
        [("", "the spec expands to 10,754 jobs, past the limit of 10,000: narrow its axes or pass --force")],
    ),
}

# Several problems in one spec: all of them are reported at once, in this order.
MANY_PROBLEMS = """\
name: x
models: [farm:digits-cnn, farm:digits-cnn]
methods:
  - static: {observer: minmax2, calibration_size: 0}
  - qat: {epochs: 0, bogus: 1}
bits: 9
calibration_size: [32, 0]
benchmark: {threads: 0}
bogus: 2
"""
MANY_EXPECTED = [
    Problem("bits", "must be between 2 and 8, got 9"),
    Problem("calibration_size", "must be at least 1, got 0"),
    Problem("benchmark.threads", "must be at least 1, got 0"),
    Problem(
        "bogus",
        "unknown top-level key (valid: name, description, models, dataset, methods, bits, calibration_size, "
        "backend, runtime, benchmark, exclude, include, seed, output, metric)",
    ),
    Problem("models[1]", "duplicate of models[0] (farm:digits-cnn)"),
    Problem("methods[0].static.observer", "'minmax2' is not one of minmax, moving_average, histogram, percentile"),
    Problem("methods[0].static.calibration_size", "must be at least 1, got 0"),
    Problem("methods[1].qat.epochs", "must be at least 1, got 0"),
    Problem(
        "methods[1].qat.bogus",
        "unknown parameter for method qat; valid: bits, calibration_size, observer, percentile, granularity, "
        "activation, backend, reduce_range, epochs, steps, lr, optimizer, momentum, weight_decay, batch_size, "
        "freeze_observers_after, freeze_bn_after, device, loss, runtime, provider, layers",
    ),
]


def problems_of(text: str, source: str = "spec.yaml") -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_spec(text, source=source)
    assert caught.value.source == source
    return caught.value.problems


# --- validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_a_bad_spec_lists_exactly_its_problems_with_their_paths(case: str) -> None:
    text, source, expected = BAD_SPECS[case]
    problems = problems_of(text, source)
    assert len(problems) == len(expected), problems
    for problem, (path, fragment) in zip(problems, expected, strict=True):
        assert problem.path == path, problems
        assert fragment in problem.message, problems
        assert "\n" not in problem.message


def test_every_problem_of_a_spec_is_reported_at_once() -> None:
    problems = problems_of(MANY_PROBLEMS, "digits.yaml")
    assert problems == MANY_EXPECTED
    rendered = str(ConfigError(problems, source="digits.yaml"))
    assert rendered.splitlines()[0] == f"digits.yaml: {len(MANY_EXPECTED)} problems:"
    assert rendered.splitlines()[1:] == [f"  {p.path}: {p.message}" for p in MANY_EXPECTED]


def test_the_job_limit_is_lifted_on_request() -> None:
    text = BAD_SPECS["past the job limit"][0]
    assert len(load_spec(text, limit=None).jobs) == 10_754 > DEFAULT_JOB_LIMIT
    assert len(load_spec(text, limit=20_000).jobs) == 10_754


def test_a_runaway_product_is_refused_from_its_axes_before_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = ", ".join(str(n) for n in range(1, 361))
    text = BAD_SPECS["past the job limit"][0].replace("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]", f"[{sizes}]")
    expanded: list[int] = []
    monkeypatch.setattr("farm.spec.load.expand", lambda *a, **k: expanded.append(1))  # must never be reached
    with pytest.raises(ConfigError) as e:
        load_spec(text)
    assert "multiply to 322,562 combinations before exclude" in str(e.value)
    assert "--force" in str(e.value) and not expanded


def test_the_job_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.settings import job_limit

    assert job_limit() == DEFAULT_JOB_LIMIT
    monkeypatch.setenv("FARM_JOB_LIMIT", "50")
    assert job_limit() == 50
    monkeypatch.setenv("FARM_JOB_LIMIT", "0")
    with pytest.raises(ConfigError, match="FARM_JOB_LIMIT must be a whole number"):
        job_limit()


def test_a_json_spec_is_the_same_sweep_as_its_yaml() -> None:
    data = yaml.safe_load(README_SPEC)
    from_json = load_spec(json.dumps(data, indent=1), source="digits.json")
    from_yaml = load_spec(README_SPEC, source="digits.yaml")
    assert [j.key for j in from_json.jobs] == [j.key for j in from_yaml.jobs]
    assert len(from_json.jobs) == 54


def test_json_that_is_also_yaml_is_accepted_under_any_name() -> None:
    text = json.dumps({"name": "x", "models": [TOY_MLP], "dataset": TOY_DATA, "methods": ["fp32", "dynamic"]})
    assert [j.method.method for j in load_spec(text, source="spec.yaml").jobs] == ["fp32", "dynamic"]


# --- expansion -------------------------------------------------------------------------------------------


def _by_model_and_method(plan: Plan) -> Counter[tuple[str, str]]:
    return Counter((j.spec.model, j.method.method) for j in plan.jobs)


def test_the_readme_spec_expands_to_the_exact_product() -> None:
    plan = load_spec(README_SPEC)
    static = len(OBSERVERS) * len(GRANULARITIES) * len(BITS) * len(CALIBRATION)
    qat = len(EPOCHS) * len(BITS) * len(CALIBRATION)
    dynamic = 1  # int8 kernels only: bits 4 is skipped, with a note
    bf16 = 1  # float: neither bits nor calibration sizes apply
    reference = 1  # fp32 *is* the reference
    per_model = {"static": static, "qat": qat, "dynamic": dynamic, "bf16": bf16, "fp32": reference}
    assert _by_model_and_method(plan) == Counter({(m, k): n for m in MODELS for k, n in per_model.items()})
    assert len(plan.jobs) == len(MODELS) * (static + qat + dynamic + bf16 + reference) == 54
    assert plan.notes == ["dynamic: bits 4 skipped (supports 8)"]
    for model in MODELS:
        statics = {
            (p["observer"], p["granularity"], p["bits"], p["calibration_size"])
            for j in plan.jobs
            if j.spec.model == model and j.method.method == "static"
            for p in [j.method.params()]
        }
        assert statics == {(o, g, b, c) for o in OBSERVERS for g in GRANULARITIES for b in BITS for c in CALIBRATION}
        qats = {
            (p["epochs"], p["bits"], p["calibration_size"])
            for j in plan.jobs
            if j.spec.model == model and j.method.method == "qat"
            for p in [j.method.params()]
        }
        assert qats == {(e, b, c) for e in EPOCHS for b in BITS for c in CALIBRATION}


def test_bits_apply_to_integer_methods_and_calibration_sizes_to_static_and_qat() -> None:
    plan = load_spec(README_SPEC)
    for job in plan.jobs:
        params, cols = job.method.params(), job.columns()
        if job.method.method in ("static", "qat"):
            assert params["bits"] in BITS and params["calibration_size"] in CALIBRATION
        elif job.method.method == "dynamic":
            assert params == {
                "bits": 8,
                "backend": "x86",
                "granularity": "per_tensor",
                "runtime": "torch",
                "provider": None,
                "layers": (),
            }
            assert cols["calibration_size"] is None
        else:
            assert "bits" not in params and "calibration_size" not in params
            assert cols["bits"] is None and cols["calibration_size"] is None


def test_one_reference_per_model_that_every_trial_points_at() -> None:
    plan = load_spec(README_SPEC)
    references = {j.key: j for j in plan.references}
    assert len(references) == len(MODELS)
    assert all(j.role == "reference" and j.method.method == "fp32" for j in references.values())
    assert [j.role for j in plan.jobs[: len(MODELS)]] == ["reference"] * len(MODELS)  # references first
    trials = [j for j in plan.jobs if j.role == "trial"]
    assert len(trials) == len(plan.jobs) - len(MODELS)
    for trial in trials:
        assert trial.method.method != "fp32"
        ref = references[trial.reference_key]  # type: ignore[index]
        assert (ref.spec.model, ref.spec.dataset, ref.device) == (trial.spec.model, trial.spec.dataset, trial.device)
        assert ref.spec.seed == trial.spec.seed and ref.spec.benchmark == trial.spec.benchmark
    assert all(j.reference_key is None for j in references.values())
    assert len({j.key for j in plan.jobs}) == len(plan.jobs)


def test_references_are_per_model_dataset_and_device() -> None:
    text = f"""\
name: refs
models:
  - farm:digits-mlp
  - {{ref: farm:digits-mlp, dataset: "{TOY_DATA}"}}
methods: [fp32, bf16, dynamic]
benchmark: {{device: cuda}}
"""
    plan = load_spec(text)
    # bf16 (and fp32) are timed on CUDA, int8 dynamic on the CPU: two devices x two datasets.
    refs = {(j.spec.dataset, j.device) for j in plan.references}
    assert refs == {(d, dev) for d in ("sklearn:digits", TOY_DATA) for dev in ("cpu", "cuda")}
    keys = {j.key: j for j in plan.references}
    for trial in (j for j in plan.jobs if j.role == "trial"):
        ref = keys[trial.reference_key]  # type: ignore[index]
        assert (ref.spec.dataset, ref.device) == (trial.spec.dataset, trial.device)
    assert Counter(j.method.method for j in plan.jobs) == Counter({"fp32": 4, "bf16": 2, "dynamic": 2})


def test_exclude_removes_partial_matches() -> None:
    base = len(load_spec(README_SPEC).jobs)
    one_observer = load_spec(README_SPEC + "exclude:\n  - {method: static, observer: histogram}\n")
    removed = len(GRANULARITIES) * len(BITS) * len(CALIBRATION) * len(MODELS)
    assert len(one_observer.jobs) == base - removed
    assert not any(j.method.params().get("observer") == "histogram" for j in one_observer.jobs)
    # qat's own default observer (moving_average) is no static job: an entry naming another method leaves it be
    assert _by_model_and_method(one_observer)[("farm:digits-cnn", "qat")] == 8


def test_exclude_with_list_values_matches_any_member() -> None:
    base = load_spec(README_SPEC)
    plan = load_spec(
        README_SPEC
        + "exclude:\n  - {method: [static, qat], bits: 4, calibration_size: 32}\n"
        + "  - {model: farm:digits-mlp, method: [bf16, dynamic]}\n"
    )
    gone = {j.key for j in base.jobs} - {j.key for j in plan.jobs}
    expected = {
        j.key
        for j in base.jobs
        if (j.method.method in ("static", "qat") and j.method.params()["bits"] == 4)
        and j.method.params()["calibration_size"] == 32
        or (j.spec.model == "farm:digits-mlp" and j.method.method in ("bf16", "dynamic"))
    }
    assert gone == expected
    per_model = len(OBSERVERS) * len(GRANULARITIES) + len(EPOCHS)
    assert len(gone) == len(MODELS) * per_model + 2
    assert len(plan.references) == len(MODELS)


def test_include_adds_jobs_and_never_doubles_one() -> None:
    base = load_spec(README_SPEC)
    plan = load_spec(
        README_SPEC
        + "include:\n"
        + "  - {method: qat, bits: [4, 6], calibration_size: 256, epochs: 1}\n"  # 4 is already in the product
        + "  - {method: static, model: farm:digits-mlp, bits: 6, observer: percentile}\n"
        + f"  - {{method: dynamic, model: '{TOY_MLP}', dataset: '{TOY_DATA}'}}\n"  # a model the spec lacks
    )
    added = [j for j in plan.jobs if j.key not in {b.key for b in base.jobs}]
    assert sorted((j.spec.model, j.method.method, j.method.params().get("bits")) for j in added) == sorted(
        [
            ("farm:digits-cnn", "qat", 6),
            ("farm:digits-mlp", "qat", 6),
            ("farm:digits-mlp", "static", 6),
            (TOY_MLP, "dynamic", 8),
            (TOY_MLP, "fp32", None),  # and its own reference
        ]
    )
    static6 = next(j for j in added if j.method.method == "static")
    assert static6.method.params()["observer"] == "percentile"
    assert static6.method.params()["calibration_size"] == 256  # the method's default: include names no size
    toy_ref = next(j for j in added if j.role == "reference")
    assert next(j for j in added if j.spec.model == TOY_MLP and j.role == "trial").reference_key == toy_ref.key
    assert toy_ref.spec.dataset == TOY_DATA


def test_include_adds_back_a_combination_that_exclude_removed() -> None:
    excluded = load_spec(README_SPEC + "exclude:\n  - {method: static, bits: 4}\n")
    assert not any(j.method.method == "static" and j.method.params()["bits"] == 4 for j in excluded.jobs)
    plan = load_spec(
        README_SPEC
        + "exclude:\n  - {method: static, bits: 4}\n"
        + "include:\n  - {method: static, bits: 4, observer: histogram, calibration_size: 32}\n"
    )
    added = [j for j in plan.jobs if j.key not in {b.key for b in excluded.jobs}]
    assert sorted((j.spec.model, j.method.params()["bits"], j.method.params()["observer"]) for j in added) == [
        ("farm:digits-cnn", 4, "histogram"),
        ("farm:digits-mlp", 4, "histogram"),
    ]


def test_bits_a_method_cannot_take_are_skipped_with_a_note() -> None:
    plan = load_spec("name: x\nmodels: [farm:digits-cnn]\nmethods: [dynamic, static]\nbits: [8, 4, 6]\n")
    assert sorted(j.method.params()["bits"] for j in plan.jobs if j.method.method == "static") == [4, 6, 8]
    assert [j.method.params()["bits"] for j in plan.jobs if j.method.method == "dynamic"] == [8]
    assert plan.notes == ["dynamic: bits 4, 6 skipped (supports 8)"]


# --- job keys --------------------------------------------------------------------------------------------

KEY_SPEC = f"""\
name: keys
description: the jobs whose keys must not move
models:
  - {{ref: farm:digits-mlp, weights: WEIGHTS}}
methods:
  - static: {{observer: minmax, calibration_size: 32}}
seed: 0
{FAST_BENCHMARK}
"""


def _keys(text: str) -> dict[str, str]:
    return {j.role: j.key for j in load_spec(text).jobs}


@pytest.fixture
def key_spec(tmp_path: Path) -> str:
    weights = tmp_path / "mlp.pt"
    weights.write_bytes(b"weights, version 1")
    return KEY_SPEC.replace("WEIGHTS", str(weights))


def test_the_same_spec_gives_the_same_keys_in_fresh_interpreters(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    spec = write_spec(tmp_path, README_SPEC + "include:\n  - {method: qat, bits: 6, steps: 10}\n")
    plans = []
    for hash_seed in ("1", "2"):  # different str hashes: no set or dict order may leak into a key
        env = {**subprocess_env, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(
            [sys.executable, "-c", "from farm.cli import main; main()", "sweep", "plan", "--json", str(spec)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        plans.append(json.loads(run.stdout))
    first, second = ([j["key"] for j in p["job_table"]] for p in plans)
    assert first == second
    assert len(first) == len(set(first)) == plans[0]["jobs"] == 56
    assert all(len(k) == 64 and int(k, 16) >= 0 for k in first)
    assert first == [j.key for j in load_spec(spec.read_text()).jobs]  # and the same as in this process


def test_what_a_job_is_not_does_not_change_its_key(key_spec: str) -> None:
    keys = _keys(key_spec)
    renamed = key_spec.replace("name: keys", "name: other").replace("the jobs whose", "some")
    spelled_out = key_spec.replace(
        "{observer: minmax, calibration_size: 32}",
        "{calibration_size: 32, observer: minmax, bits: 8, granularity: per_channel, backend: x86}",
    )
    as_json = json.dumps(yaml.safe_load(key_spec))
    assert _keys(renamed) == _keys(spelled_out) == keys
    assert {j.role: j.key for j in load_spec(as_json, source="s.json").jobs} == keys


@pytest.mark.parametrize(
    "change, reference_changes",
    [
        (("seed: 0", "seed: 1"), True),
        (("observer: minmax", "observer: histogram"), False),
        (("calibration_size: 32", "calibration_size: 64"), False),
        (("batch_size: [1]", "batch_size: [1, 8]"), True),
        (("max_time_s: 0.2", "max_time_s: 0.3"), True),
        (("ref: farm:digits-mlp", "ref: farm:digits-cnn"), True),
        (("methods:\n", "dataset: 'synthetic:1x8x8'\nmethods:\n"), True),
    ],
)
def test_changing_one_thing_changes_the_key(key_spec: str, change: tuple[str, str], reference_changes: bool) -> None:
    before = _keys(key_spec)
    assert change[0] in key_spec
    after = _keys(key_spec.replace(*change))
    assert after["trial"] != before["trial"]
    assert (after["reference"] != before["reference"]) is reference_changes


def test_benchmark_isolation_reaches_every_job_and_only_a_non_default_one_moves_the_keys(key_spec: str) -> None:
    keys = _keys(key_spec)
    assert {j.spec.benchmark.isolation for j in load_spec(key_spec).jobs} == {"exclusive"}
    explicit = key_spec.replace("benchmark: {", "benchmark: {isolation: exclusive, ")
    assert explicit != key_spec and _keys(explicit) == keys  # the default spelled out: the jobs are the same
    pinned = key_spec.replace("benchmark: {", "benchmark: {isolation: pinned, ")
    assert {j.spec.benchmark.isolation for j in load_spec(pinned).jobs} == {"pinned"}
    assert set(_keys(pinned).values()).isdisjoint(keys.values())  # measured otherwise: other jobs


def test_the_weights_file_content_is_part_of_the_key(tmp_path: Path, key_spec: str) -> None:
    before = _keys(key_spec)
    (tmp_path / "mlp.pt").write_bytes(b"weights, version 2")
    after = _keys(key_spec)
    assert after["trial"] != before["trial"] and after["reference"] != before["reference"]
    (tmp_path / "mlp.pt").write_bytes(b"weights, version 1")
    assert _keys(key_spec) == before


def test_missing_weights_are_a_problem_at_plan_time(tmp_path: Path, key_spec: str) -> None:
    (tmp_path / "mlp.pt").unlink()
    assert problems_of(key_spec) == [Problem("models[0].weights", f"{tmp_path / 'mlp.pt'} does not exist")]


def test_s3_weights_are_keyed_by_the_callers_digest_and_refused_without_one() -> None:
    text = "name: s\nmodels:\n  - {ref: 'farm:digits-cnn', weights: 's3://b/w.pt'}\nmethods: [fp32, dynamic]\n"
    asked: list[str] = []

    def digest(uri: str) -> str:
        asked.append(uri)
        return "etag:abc"

    plan = load_spec(text, remote_digest=digest)
    assert asked == ["s3://b/w.pt"]  # once per weights, not once per job
    assert {j.weights_digest for j in plan.jobs} == {"etag:abc"}
    assert all(j.key == job_key(j.spec, "etag:abc") for j in plan.jobs)
    assert problems_of(text) == [
        Problem("models[0].weights", "s3://b/w.pt is in S3, and this plan was made without reaching S3")
    ]

    def missing(uri: str) -> str:
        raise ConfigError(f"weights {uri} does not exist")

    with pytest.raises(ConfigError) as e:
        load_spec(text, remote_digest=missing)
    assert e.value.problems == [Problem("models[0].weights", "weights s3://b/w.pt does not exist")]
