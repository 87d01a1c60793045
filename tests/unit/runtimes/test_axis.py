"""The ``runtime`` axis: a deploy parameter of every method config, the spec axis, ``farm quantize --runtime``,
routing, the availability checks, and the result views that span runtimes (compact table, rankings, report).

The store side (the columns, the view, migration 0007) is tests/unit/store/test_runtime_columns.py.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from farm.analysis import best_configs, compare, pareto_front, recipe_key
from farm.errors import ConfigError
from farm.jobs.contract import JobSpec
from farm.quant.config import METHODS, config_from_dict, parse_method, resolve_device
from farm.quant.recipe import recipe_label
from farm.routing import Route, route
from farm.runtimes import registry
from farm.spec.load import check_runs_here, load_spec
from farm.spec.plan import job_key
from tests.sweeps import TOY_DATA, TOY_MLP, describe, farm, sweep_count, write_spec

#: Every method's config at its defaults, exactly as it was keyed before runtimes existed.
BEFORE_RUNTIMES: dict[str, dict[str, Any]] = {
    "fp32": {"method": "fp32", "version": 1},
    "fp16": {"method": "fp16", "version": 1, "mode": "cast"},
    "bf16": {"method": "bf16", "version": 1, "mode": "cast"},
    "dynamic": {"method": "dynamic", "version": 1, "bits": 8, "backend": "x86"},
    "static": {
        "method": "static",
        "version": 1,
        "bits": 8,
        "calibration_size": 256,
        "observer": "minmax",
        "percentile": 99.99,
        "granularity": "per_channel",
        "activation": "affine",
        "backend": "x86",
        "reduce_range": None,
        "mode": "fx",
    },
    "qat": {
        "method": "qat",
        "version": 1,
        "bits": 8,
        "calibration_size": 256,
        "observer": "moving_average",
        "percentile": 99.99,
        "granularity": "per_channel",
        "activation": "affine",
        "backend": "x86",
        "reduce_range": None,
        "epochs": 1,
        "steps": None,
        "lr": 1e-3,
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 0.0,
        "batch_size": 32,
        "freeze_observers_after": None,
        "freeze_bn_after": None,
        "device": "auto",
        "loss": "auto",
    },
    "noop": {"method": "noop", "version": 1},
}


def _problems(exc: pytest.ExceptionInfo[ConfigError]) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in exc.value.problems]


# --- the method config ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_every_existing_config_and_key_is_unchanged_at_the_default_runtime(method: str) -> None:
    cfg = parse_method(method)
    assert (cfg.runtime, cfg.provider) == ("torch", None)
    assert cfg.to_dict() == BEFORE_RUNTIMES[method]
    # A config stored before runtimes existed reads back as the same torch config (and so keys the same job).
    assert config_from_dict(BEFORE_RUNTIMES[method]) == cfg


def test_a_runtime_off_the_default_is_in_the_config_and_moves_the_key() -> None:
    torch_cfg = parse_method("static")
    ort = parse_method("static", {"runtime": "onnxruntime"})
    gpu = parse_method("fp16", {"runtime": "onnxruntime", "provider": "CUDAExecutionProvider"})
    assert ort.to_dict() == {**BEFORE_RUNTIMES["static"], "runtime": "onnxruntime"}
    assert gpu.to_dict()["provider"] == "CUDAExecutionProvider"
    assert config_from_dict(ort.to_dict()) == ort and config_from_dict(gpu.to_dict()) == gpu
    keys = {job_key(JobSpec("farm:digits-cnn", "sklearn:digits", c), None) for c in (torch_cfg, ort, gpu)}
    assert len(keys) == 3


@pytest.mark.parametrize(
    ("method", "params", "label"),
    [
        ("static", {}, "static int8 minmax pc n=256"),
        ("static", {"runtime": "onnxruntime"}, "static int8 minmax pc n=256 ort"),
        ("dynamic", {"runtime": "openvino"}, "dynamic int8 ov"),
        ("fp32", {"runtime": "tensorrt"}, "fp32 trt"),
        ("fp16", {"runtime": "onnxruntime", "provider": "CUDAExecutionProvider"}, "fp16 ort cuda-ep"),
        ("qat", {"runtime": "onnxruntime", "epochs": 3}, "qat int8 mavg pc n=256 e3 ort"),
    ],
)
def test_the_recipe_label_ends_with_the_runtime_word(method: str, params: dict[str, Any], label: str) -> None:
    cfg = parse_method(method, params)
    assert recipe_label(cfg) == label
    assert recipe_label(cfg.to_dict()) == label  # as the store labels a job from its spec


@pytest.mark.parametrize(
    ("method", "params", "want"),
    [
        ("static", {"runtime": "tvm"}, ("runtime", "'tvm' is not one of torch, onnxruntime, openvino, tensorrt")),
        ("bf16", {"runtime": "onnxruntime"}, ("runtime", "it runs: fp32, fp16, dynamic, static, qat")),
        ("qat", {"runtime": "openvino"}, ("runtime", "runtime openvino cannot run method 'qat'; it runs: fp32")),
        ("static", {"runtime": "openvino", "provider": "CPUExecutionProvider"}, ("provider", "takes no provider")),
        ("static", {"provider": "CUDAExecutionProvider"}, ("provider", "runtime torch takes no provider")),
        (
            "static",
            {"runtime": "onnxruntime", "provider": "Cuda"},
            ("provider", "'Cuda' is not one of CPUExecutionProvider, CUDAExecutionProvider"),
        ),
        ("static", {"runtime": "onnxruntime", "bits": 4}, ("bits", "runtime onnxruntime runs int8 only; int4")),
    ],
)
def test_a_bad_runtime_is_one_problem_naming_what_would_do(
    method: str, params: dict[str, Any], want: tuple[str, str]
) -> None:
    with pytest.raises(ConfigError) as e:
        parse_method(method, params)
    [(path, message)] = _problems(e)
    assert path == want[0] and want[1] in message, message


@pytest.mark.parametrize(
    ("method", "params", "requested", "device"),
    [
        ("static", {}, "auto", "cpu"),
        ("fp16", {}, "auto", "cuda"),
        ("static", {"runtime": "onnxruntime"}, "auto", "cpu"),
        ("static", {"runtime": "onnxruntime", "provider": "CUDAExecutionProvider"}, "auto", "cuda"),
        ("fp16", {"runtime": "onnxruntime"}, "auto", "cuda"),
        ("static", {"runtime": "tensorrt"}, "auto", "cuda"),
        ("dynamic", {"runtime": "openvino"}, "auto", "cpu"),
    ],
)
def test_the_device_follows_the_runtime(method: str, params: dict[str, Any], requested: str, device: str) -> None:
    assert resolve_device(parse_method(method, params), requested) == device


@pytest.mark.parametrize(
    ("params", "requested", "fragment"),
    [
        ({"runtime": "tensorrt"}, "cpu", "runtime tensorrt runs on cuda only, not on cpu"),
        ({"runtime": "openvino"}, "cuda", "runtime openvino runs on cpu only, not on cuda"),
        ({"runtime": "onnxruntime", "provider": "CUDAExecutionProvider"}, "cpu", "does not run on cpu"),
        ({"runtime": "onnxruntime", "provider": "CPUExecutionProvider"}, "cuda", "does not run on cuda"),
    ],
)
def test_a_device_the_runtime_does_not_run_on_is_refused(params: dict[str, Any], requested: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        resolve_device(parse_method("static", params), requested)
    [(path, message)] = _problems(e)
    assert path == "device" and fragment in message


def test_tensorrt_goes_to_the_gpu_pool_and_cpu_runtimes_stay_on_the_cpu_pool() -> None:
    trt = parse_method("static", {"runtime": "tensorrt"})
    assert route(trt, "cuda") == Route("gpu")
    assert route(trt, "cpu") == Route("gpu")  # CUDA only, whatever the device says
    assert route(parse_method("static", {"runtime": "onnxruntime"}), "cpu") == Route("cpu")
    assert route(parse_method("dynamic", {"runtime": "openvino"}), "cpu") == Route("cpu")
    # torch qat fine-tuned on CUDA is still the train -> finish chain; measured on CUDA it is one GPU job.
    assert route(parse_method("qat", {"device": "cuda"}), "cpu") == Route("gpu", "train", "cpu")
    gpu_qat = parse_method("qat", {"device": "cuda", "runtime": "onnxruntime", "provider": "CUDAExecutionProvider"})
    assert route(gpu_qat, "cuda") == Route("gpu")


# --- the spec ----------------------------------------------------------------------------------------------------

THREE_RUNTIMES = """\
name: rt
models: [farm:digits-cnn]
runtime: [torch, onnxruntime, openvino]
methods: [fp32, bf16, dynamic, static]
"""


def test_a_three_runtime_spec_plans_each_method_on_every_runtime_that_runs_it() -> None:
    plan = load_spec(THREE_RUNTIMES, limit=None)
    [ref] = plan.references
    assert (ref.spec.method.method, ref.spec.method.runtime) == ("fp32", "torch")
    trials = Counter((j.spec.method.method, j.spec.method.runtime) for j in plan.jobs if j.role == "trial")
    assert trials == Counter(
        {
            ("fp32", "onnxruntime"): 1,  # fp32 elsewhere is a trial ...
            ("fp32", "openvino"): 1,
            ("bf16", "torch"): 1,  # ... bf16 runs on torch only
            ("dynamic", "torch"): 1,
            ("dynamic", "onnxruntime"): 1,
            ("dynamic", "openvino"): 1,
            ("static", "torch"): 1,
            ("static", "onnxruntime"): 1,
            ("static", "openvino"): 1,
        }
    )
    assert {j.reference_key for j in plan.jobs if j.role == "trial"} == {ref.key}  # ... compared with torch fp32
    assert {j.columns()["runtime"] for j in plan.jobs} == {"torch", "onnxruntime", "openvino"}
    assert [n for n in plan.notes if n.startswith("bf16")] == [
        "bf16 on onnxruntime: skipped (runtime onnxruntime cannot run method 'bf16'; it runs: fp32, fp16, dynamic, "
        "static, qat)",
        "bf16 on openvino: skipped (runtime openvino cannot run method 'bf16'; it runs: fp32, dynamic, static)",
    ]
    # The torch jobs keep the keys a spec without the axis gives them.
    torch_only = load_spec(THREE_RUNTIMES.replace("runtime: [torch, onnxruntime, openvino]\n", ""), limit=None)
    torch_keys = {j.key for j in plan.jobs if j.spec.method.runtime == "torch"}
    assert torch_keys == {j.key for j in torch_only.jobs}


def test_axis_runtimes_skip_simulated_bits_and_devices_they_lack_with_notes() -> None:
    text = (
        "name: rt\nmodels: [farm:digits-cnn]\nruntime: [torch, onnxruntime, tensorrt]\nbits: [4, 8]\n"
        "methods: [static]\nbenchmark: {device: cpu}\n"
    )
    plan = load_spec(text, limit=None)
    trials = sorted((j.spec.method.runtime, j.spec.method.params()["bits"]) for j in plan.jobs if j.role == "trial")
    assert trials == [("onnxruntime", 8), ("torch", 4), ("torch", 8)]
    ort_note = "static on onnxruntime: skipped (runtime onnxruntime runs int8 only; int4"
    assert any(n.startswith(ort_note) for n in plan.notes)
    assert any("static on tensorrt: skipped (" in n and "runs on cuda only, not on cpu" in n for n in plan.notes)


def test_exclude_and_include_name_runtimes() -> None:
    text = (
        THREE_RUNTIMES
        + "exclude: [{method: static, runtime: openvino}]\n"
        + "include: [{method: fp16, runtime: onnxruntime}]\n"
    )
    plan = load_spec(text, limit=None)
    pairs = {(j.spec.method.method, j.spec.method.runtime, j.device) for j in plan.jobs}
    assert ("static", "openvino", "cpu") not in pairs and ("static", "onnxruntime", "cpu") in pairs
    assert ("fp16", "onnxruntime", "cuda") in pairs
    # fp16 on CUDA compares with a torch fp32 reference on CUDA.
    assert {(j.spec.method.runtime, j.device) for j in plan.references} == {("torch", "cpu"), ("torch", "cuda")}


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        (
            "methods: [{bf16: {runtime: onnxruntime}}]\n",
            "methods[0].bf16.runtime",
            "runtime onnxruntime cannot run method 'bf16'; it runs: fp32, fp16, dynamic, static, qat",
        ),
        ("runtime: [torch, tvm]\nmethods: [static]\n", "runtime", "unknown runtime 'tvm': choose from torch, onnx"),
        ("runtime: [torch, torch]\nmethods: [static]\n", "runtime", "runtimes repeat"),
        (
            "runtime: [openvino]\nmethods: [bf16]\n",
            "methods[0].bf16",
            "no runtime of the runtime axis runs it: runtime openvino cannot run method 'bf16'",
        ),
        (
            "methods: [{static: {runtime: tensorrt}}]\nbenchmark: {device: cpu}\n",
            "benchmark.device",
            "static on tensorrt: runtime tensorrt runs on cuda only, not on cpu",
        ),
    ],
)
def test_a_runtime_a_spec_names_itself_is_an_error_not_a_skip(text: str, path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_spec("name: x\nmodels: [farm:digits-cnn]\n" + text)
    [(got_path, message)] = _problems(e)
    assert got_path == path and fragment in message, (got_path, message)


def test_a_method_names_its_own_runtime_and_provider() -> None:
    text = (
        "name: x\nmodels: [farm:digits-cnn]\n"
        "methods: [{fp16: {runtime: onnxruntime, provider: CUDAExecutionProvider}}]\n"
    )
    [trial] = [j for j in load_spec(text).jobs if j.role == "trial"]
    assert (trial.spec.method.runtime, trial.spec.method.provider, trial.device) == (
        "onnxruntime",
        "CUDAExecutionProvider",
        "cuda",
    )
    assert route(trial.spec.method, trial.device) == Route("gpu")
    assert recipe_label(trial.spec.method) == "fp16 ort cuda-ep"


def test_a_runtime_this_machine_lacks_is_refused_with_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = load_spec(THREE_RUNTIMES, limit=None)
    installed = load_spec(THREE_RUNTIMES.replace(", openvino", ""), limit=None)
    present = {"torch", "onnx", "onnxruntime"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in present else None)
    with pytest.raises(ConfigError) as e:
        check_runs_here(plan, source="rt.yaml")
    assert str(e.value) == (
        "rt.yaml: runtime: runtime openvino needs openvino, nncf, which this machine lacks: "
        "pip install 'quantfarm[openvino]'"
    )
    check_runs_here(installed)  # torch and onnxruntime: both there


def test_a_worker_lists_the_runtimes_installed_on_its_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.capabilities import runtimes

    present = {"torch", "openvino", "nncf", "tensorrt"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in present else None)
    assert runtimes() == ["torch", "openvino", "tensorrt"]
    assert registry.unavailable("onnxruntime") == (
        "runtime onnxruntime needs onnx, onnxruntime, which this machine lacks: pip install 'quantfarm[onnx]'"
    )


# --- the CLI -----------------------------------------------------------------------------------------------------

CLI_SPEC = f"name: rt\nmodels: [{TOY_MLP}]\ndataset: '{TOY_DATA}'\nmethods: [dynamic]\n"


def test_sweep_plan_shows_the_runtime_column_only_where_it_varies(sweep_home: Path, tmp_path: Path) -> None:
    mixed = farm("sweep", "plan", str(write_spec(tmp_path, CLI_SPEC + "runtime: [torch, onnxruntime]\n", "a.yaml")))
    assert mixed.exit_code == 0, describe(mixed)
    header = next(line for line in mixed.stdout.splitlines() if "key" in line and "role" in line)
    assert header.split()[-1] == "runtime"
    assert "onnxruntime" in mixed.stdout
    plain = farm("sweep", "plan", str(write_spec(tmp_path, CLI_SPEC, "b.yaml")))
    assert plain.exit_code == 0, describe(plain)
    assert "runtime" not in plain.stdout


@pytest.fixture
def without_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as one without openvino (whether or not it is installed here)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("openvino", "nncf") else real(name, *a)
    )


def test_sweep_run_refuses_a_missing_runtime_before_writing_anything(
    sweep_home: Path, tmp_path: Path, without_openvino: None
) -> None:
    spec = write_spec(tmp_path, CLI_SPEC + "runtime: [torch, openvino]\n")
    result = farm("sweep", "run", str(spec))
    assert result.exit_code == 2, describe(result)
    assert result.stderr.splitlines() == [
        f"Error: {spec}: runtime: runtime openvino needs openvino, nncf, which this machine lacks: "
        "pip install 'quantfarm[openvino]'"
    ]
    assert sweep_count(sweep_home) == (0, 0)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--method", "static", "--runtime", "tvm"], "--runtime: 'tvm' is not one of torch, onnxruntime, openvino"),
        (["--method", "bf16", "--runtime", "onnxruntime"], "--runtime: runtime onnxruntime cannot run method 'bf16'"),
        (["--method", "static", "--runtime", "tensorrt", "--device", "cpu"], "--device: runtime tensorrt runs on cuda"),
        (["--method", "static", "--provider", "CUDAExecutionProvider"], "--provider: runtime torch takes no provider"),
    ],
)
def test_farm_quantize_refuses_a_bad_runtime_in_one_line(
    sweep_home: Path, tmp_path: Path, args: list[str], line: str
) -> None:
    out = tmp_path / "trials" / "artifact"
    result = farm("quantize", "--model", TOY_MLP, "--dataset", TOY_DATA, "--output", str(out), *args)
    assert result.exit_code == 2, describe(result)
    [got] = result.stderr.splitlines()
    assert got.startswith(f"Error: {line}"), got
    assert not out.parent.exists()  # nothing written


def test_farm_quantize_names_the_extra_of_a_missing_runtime(
    sweep_home: Path, tmp_path: Path, without_openvino: None
) -> None:
    out = tmp_path / "trials" / "artifact"
    result = farm(
        "quantize", "--model", TOY_MLP, "--dataset", TOY_DATA, "--method", "dynamic", "--runtime", "openvino",
        "--output", str(out),
    )  # fmt: skip
    assert result.exit_code == 2, describe(result)
    assert result.stderr.splitlines() == [
        "Error: --runtime: runtime openvino needs openvino, nncf, which this machine lacks: "
        "pip install 'quantfarm[openvino]'"
    ]
    assert not out.parent.exists()  # nothing written


# --- views over rows of several runtimes -------------------------------------------------------------------------


def _row(job_id: int, runtime: str, p50: float, speedup: float, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id, "model": "m", "dataset": "d", "method": "static", "bits": 8, "calibration_size": 256,
        "backend": "x86", "observer": "minmax", "granularity": "per_channel", "runtime": runtime, "batch_size": 1,
        "state": "succeeded", "health": "ok", "accuracy": 0.97, "accuracy_drop": 0.01, "latency_p50_ms": p50,
        "speedup": speedup, "speedup_vs_best_fp32": 10.0 / p50, "simulated": False, "size_bytes": 1000,
        "recipe": "static int8 minmax pc n=256" + ("" if runtime == "torch" else " ort"), **extra,
    }  # fmt: skip


#: torch int8 is 2.5x its torch fp32; onnxruntime int8 is 2x its (faster) onnxruntime fp32, and faster overall.
MIXED = [_row(1, "torch", 4.0, 2.5), _row(2, "onnxruntime", 3.0, 2.0)]


def test_best_and_pareto_rank_runtimes_by_latency_never_by_their_own_speedups() -> None:
    [choice] = best_configs(MIXED, max_accuracy_drop=0.01)
    assert choice.best is not None and choice.best["job_id"] == 2
    [choice] = best_configs(MIXED, max_accuracy_drop=0.01, by="speedup_vs_best_fp32")
    assert choice.best is not None and choice.best["job_id"] == 2
    for call in (
        lambda: best_configs(MIXED, max_accuracy_drop=0.01, by="speedup"),
        lambda: pareto_front(MIXED, "speedup", "accuracy", maximize_x=True),
    ):
        with pytest.raises(ConfigError, match="speedup compares each job with its own runtime's fp32"):
            call()
    [choice] = best_configs(MIXED[:1], max_accuracy_drop=0.01, by="speedup")  # one runtime: its ratio ranks
    assert choice.best is not None and choice.best["job_id"] == 1


def test_compare_matches_recipes_within_a_runtime() -> None:
    a, b = MIXED, [_row(11, "torch", 4.2, 2.4), _row(12, "onnxruntime", 2.9, 2.1)]
    pairs = compare(a, b)
    assert [(p.a and p.a["job_id"], p.b and p.b["job_id"]) for p in pairs] == [(2, 12), (1, 11)]
    assert recipe_key(a[0]) != recipe_key(a[1])
    assert {p.recipe["runtime"] for p in pairs} == {"torch", "onnxruntime"}


def test_the_compact_table_shows_the_runtime_where_it_varies() -> None:
    from rich.console import Console

    from farm.cli.compact import compact_table

    def header(rows: list[dict[str, Any]]) -> list[str]:
        table, _ = compact_table(rows)
        return [str(c.header) for c in table.columns]

    assert "runtime" in header(MIXED)
    assert "runtime" not in header(MIXED[:1])
    console = Console(width=100, record=True)
    console.print(compact_table(MIXED)[0])
    text = console.export_text()
    assert "onnxruntime" in text and "torch" in text


def test_the_report_marks_runtimes_and_ranks_them_together() -> None:
    import matplotlib.pyplot as plt

    from farm.report.sections import _best
    from farm.report.svg import style
    from farm.report.tradeoff import latency_figure

    html = _best(MIXED)
    assert '<th scope="col" class=t>runtime</th>' in html and "speedup vs best fp32" in html
    assert "<td class=t>onnxruntime</td>" in html and "(job 2)" in html and "(job 1)" not in html
    with style("latency"):
        fig, notes = latency_figure(MIXED)
        _, torch_notes = latency_figure(MIXED[:1])
    assert fig is not None
    assert any("marker is its runtime" in n for n in notes)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "torch" in labels and "onnxruntime" in labels
    assert not any("runtime" in n for n in torch_notes)
    plt.close("all")
