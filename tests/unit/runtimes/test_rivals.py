"""``benchmark.rivals``: a trial timed side by side with other runtimes' fp32 exports too, in its own process
(farm/jobs/rivals.py, farm/quant/timed_calls.py), through run_job; the figures reach the metrics row's extra and
the figures a tune reads; a rival that cannot be built here is a warning, not a failure; a bad list is refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'quantfarm[onnx]')")

from farm.errors import ConfigError  # noqa: E402
from farm.jobs.contract import JobSpec  # noqa: E402
from farm.jobs.steps import run_job  # noqa: E402
from farm.quant.bench_config import BenchmarkConfig  # noqa: E402
from farm.quant.config import parse_method  # noqa: E402
from farm.quant.reference import REFERENCE_FILE, Reference  # noqa: E402
from farm.spec.load import load_spec  # noqa: E402
from farm.store.metric_rows import metric_rows  # noqa: E402
from tests import toys  # noqa: E402

CNN = "entrypoint:tests.toys:tiny_cnn"
RIVAL = {"runtime", "fp32_p50_ms", "p50_ms", "speedup", "speedup_ci_low", "speedup_ci_high", "stable", "blocks"}


def bench(*rivals: str) -> BenchmarkConfig:
    return BenchmarkConfig(batch_sizes=(1,), warmup_s=0.0, max_time_s=0.2, min_reps=5, rivals=rivals)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    out = tmp_path_factory.mktemp("rival-ref") / "artifact"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FARM_ALLOWED_MODULES", toys.__name__)
        run_job(JobSpec(CNN, toys.SYNTHETIC, parse_method("fp32"), benchmark=bench()), out)
    return Reference.load(out / REFERENCE_FILE)


def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, reference: Reference, *rivals: str, **p: Any):
    monkeypatch.setenv("FARM_ALLOWED_MODULES", toys.__name__)
    spec = JobSpec(CNN, toys.SYNTHETIC, parse_method(method, p), benchmark=bench(*rivals))
    return run_job(spec, tmp_path / "out", reference=reference)


def assert_rival(entry: dict[str, Any], runtime: str) -> None:
    assert set(entry) == RIVAL and entry["runtime"] == runtime
    assert entry["fp32_p50_ms"] > 0 and entry["p50_ms"] > 0 and entry["blocks"] >= 1
    assert entry["speedup_ci_low"] <= entry["speedup"] <= entry["speedup_ci_high"]


def test_an_onnxruntime_trial_is_timed_beside_torchs_fp32_and_a_rival_it_cannot_build_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Reference
) -> None:
    # Its own runtime is no rival (its fp32 is already the baseline); TensorRT needs a GPU this host lacks.
    result = run(tmp_path, monkeypatch, "dynamic", reference, "onnxruntime", "torch", "tensorrt", runtime="onnxruntime")
    (lat,) = result.latency
    assert [r["runtime"] for r in lat["rivals"]] == ["torch"]
    assert_rival(lat["rivals"][0], "torch")
    assert lat["speedup"] is not None  # its own runtime's fp32, side by side, as before
    assert any("fp32 on tensorrt (benchmark.rivals) could not be built here" in w for w in result.warnings)
    # Stored as the metrics row's extra (what farm.store.expansion reads back for a tune).
    (row,) = metric_rows(1, result.to_dict())
    assert json.loads(json.dumps(row["extra"]))["latency"]["rivals"][0]["runtime"] == "torch"


def test_a_torch_trial_is_timed_beside_onnxruntimes_and_openvinos_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Reference
) -> None:
    have_ov = importlib.util.find_spec("openvino") is not None
    rivals = ("onnxruntime", "openvino") if have_ov else ("onnxruntime",)
    result = run(tmp_path, monkeypatch, "static", reference, *rivals, calibration_size=32)
    (lat,) = result.latency
    assert [r["runtime"] for r in lat["rivals"]] == list(rivals)  # in the order asked
    for entry, runtime in zip(lat["rivals"], rivals, strict=True):
        assert_rival(entry, runtime)
    # The trial's own figures are those of its pair with torch's fp32: the rival's pair is another measurement.
    assert lat["baseline_p50_ms"] > 0 and lat["speedup_ci_low"] <= lat["speedup"] <= lat["speedup_ci_high"]


def test_no_rivals_no_entry_and_the_key_is_unchanged() -> None:
    assert "rivals" not in bench().to_dict()  # jobs keyed before rivals existed keep their keys
    assert BenchmarkConfig.from_dict(bench("openvino").to_dict()).rivals == ("openvino",)


@pytest.mark.parametrize(
    ("rivals", "message"),
    [(["onnxrt"], "'onnxrt' is not one of"), (["torch", "torch"], "runtimes repeat")],
)
def test_a_bad_rival_list_is_refused_in_one_line(rivals: list[str], message: str) -> None:
    assert any(message in p.message for p in BenchmarkConfig(rivals=tuple(rivals)).problems())
    text = f"name: r\nmodels: [farm:digits-mlp]\nmethods: [fp32]\nbenchmark: {{rivals: {json.dumps(rivals)}}}\n"
    with pytest.raises(ConfigError, match=message):
        load_spec(text)


def test_the_trial_its_fp32_and_the_rivals_are_timed_in_one_loop_whose_budget_leaves_out_earlier_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One interleaved loop times the trial beside its own fp32 and every rival's (the trial's blocks serve each
    comparison); a pinned timing's waits for exclusive ones are not spent from its budget, and the loop is not
    credited with waits from before it began."""
    import farm.quant.side_by_side as side_by_side
    from farm.quant import latency
    from farm.quant.timed_calls import Calls, time_batch

    waited = [5.0]  # waits before this batch size's timing (another batch size's): not this loop's
    groups: list[tuple[int, float]] = []
    trial, own, torch_fp32, ov_fp32 = (lambda: None for _ in range(4))

    def group(trial_fn: Any, base_fns: list[Any], batch_size: int, *, paused: Any, **kwargs: Any) -> list[Any]:
        assert trial_fn is trial and base_fns == [own, torch_fp32, ov_fp32]
        groups.append((len(base_fns), paused()))
        fig = latency.summarize(1, [0.001] * 6, settled=True)
        return [
            side_by_side.PairLatency(fig, fig, speedup, speedup - 0.1, speedup + 0.1, 6, 10)
            for speedup in (1.5, 2.0, 0.9)
        ]

    class Held:
        busy = None

        def poll(self) -> bool:
            return False

        def waited(self) -> float:
            return waited[0]

    monkeypatch.setattr(side_by_side, "measure_group", group)
    calls = Calls(trial, own, None, "onnxruntime", rivals=(("torch", torch_fp32), ("openvino", ov_fp32)))
    entry = time_batch(calls, "cpu", 1, bench(), Held())  # type: ignore[arg-type]
    assert groups == [(3, 0.0)]  # one loop, its budget free of the 5 s waited before it
    assert entry["speedup"] == 1.5
    rivals = [(r["runtime"], r["speedup"], r["blocks"]) for r in entry["rivals"]]
    assert rivals == [("torch", 2.0, 6), ("openvino", 0.9, 6)]


def test_an_fp32_job_and_a_simulated_trial_build_no_rivals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Reference
) -> None:
    import farm.jobs.rivals as rivals

    built: list[str] = []
    real = rivals._built
    monkeypatch.setattr(rivals, "_built", lambda name, *a: built.append(name) or real(name, *a))
    fp32 = run(tmp_path / "fp32", monkeypatch, "fp32", reference, "torch", runtime="onnxruntime")
    simulated = run(tmp_path / "sim", monkeypatch, "static", reference, "onnxruntime", bits=4, calibration_size=32)
    assert built == []  # the fp32 job is what rivals compare with; a simulated trial claims no speed
    assert "rivals" not in fp32.latency[0] and "rivals" not in simulated.latency[0]
    assert simulated.simulated is True


def test_rivals_without_the_trials_own_baseline_are_refused_not_left_untimed() -> None:
    from farm.quant.timed_calls import Calls

    with pytest.raises(ValueError, match="beside the trial's own fp32 baseline"):
        Calls(lambda: None, None, None, None, rivals=(("torch", lambda: None),))
