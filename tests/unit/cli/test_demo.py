"""``farm demo`` on a reduced spec: the results table, two PNG plots, and where everything is.

The real demo spec (13 jobs on farm:digits-cnn) is checked for its shape only; running it is the README's
job (well under 3 minutes on 2 cores), not a unit test's.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from farm import demo as demo_module
from farm.spec.load import load_spec
from tests.sweeps import describe, farm, query

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SMALL_DEMO = """\
name: demo-small
models: [farm:digits-mlp]
dataset: sklearn:digits
methods:
  - fp32
  - dynamic
  - static: {calibration_size: 32}
include:
  - {method: static, bits: 4, calibration_size: 32}
benchmark: {batch_size: [1, 4], max_time_s: 0.2, min_reps: 5, warmup_s: 0}
"""  # 4 jobs, one of them simulated (drawn hollow, left off the latency plot)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_demo_spec_is_every_method_on_the_digits_cnn() -> None:
    plan = load_spec(demo_module.DEMO_SPEC, source="demo")
    assert {j.spec.model for j in plan.jobs} == {"farm:digits-cnn"}
    assert {j.method.method for j in plan.jobs} == {"fp32", "bf16", "dynamic", "static", "qat"}
    assert len(plan.jobs) == 13 and len(plan.references) == 1
    assert all(j.device == "cpu" for j in plan.jobs)  # runs anywhere, no GPU needed


@pytest.mark.slow  # a real 4-job sweep in worker processes (digits-mlp is trained once per session)
def test_demo_runs_its_sweep_and_writes_two_plots(
    sweep_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo_module, "DEMO_SPEC", SMALL_DEMO)
    plots = tmp_path / "plots"
    result = farm("demo", "--plots", str(plots), "--jobs", "2")
    assert result.exit_code == 0, describe(result)

    names = sorted(p.name for p in plots.iterdir())
    assert names == ["accuracy_vs_latency.png", "accuracy_vs_size.png"]
    # The report's figures (farm.report.tradeoff), 7.5 inches wide at 110 dpi: accuracy vs size is one panel
    # 5.1 inches high; accuracy vs latency one panel per batch size (1 and 4), side by side, 4.5 inches high.
    sizes = {name: _png_size(plots / name) for name in names}
    assert sizes == {"accuracy_vs_latency.png": (825, 495), "accuracy_vs_size.png": (825, 561)}

    out = result.stdout
    assert f"results:   sqlite:///{sweep_home / 'farm.db'} (view results_flat; `farm results query --sweep 1`)" in out
    assert f"artifacts: {sweep_home / 'artifacts'}" in out
    assert f"plot:      {plots / 'accuracy_vs_size.png'}" in out
    assert f"plot:      {plots / 'accuracy_vs_latency.png'}" in out
    # The results table: a row per job, led by its recipe label; the simulated ones say so.
    rows = [line.split() for line in out.splitlines() if line.startswith("digits-")]
    assert {r[1] for r in rows} == {"fp32", "dynamic", "static"}, out
    assert "(sim)" in out
    assert query("SELECT name, state FROM sweeps") == [{"name": "demo-small", "state": "succeeded"}]
    assert len(query("SELECT * FROM results_flat WHERE state = 'succeeded'")) == 4 * 2
