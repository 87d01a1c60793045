"""Result tables fit 100 terminal columns: recipe labels, a model legend that is never ambiguous, the backend
where it varies, health where a result is not ok; ``--wide`` shows every column."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from farm.cli import compact, render
from farm.cli.compact import compact_table, model_legend, p50_with_interval


def row(job_id: int, model: str, recipe: str, **figures: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        job_id=job_id, model=model, recipe=recipe, method=recipe.split()[0], backend="x86", batch_size=8,
        accuracy=0.98765, accuracy_drop=0.00123, latency_p50_ms=12.3456, latency_p50_ci_low_ms=12.1,
        latency_p50_ci_high_ms=12.6, speedup=2.4567, size_bytes=11_689_512, state="succeeded", health="ok",
        simulated=False, calibration_size=256, observer="minmax", granularity="per_channel", bits=8,
        accuracy_fp32=0.99, sqnr_db=31.2, size_ratio=0.25, coverage=0.97,
    )  # fmt: skip
    return base | figures


ROWS = [
    row(1, "torchvision:resnet18", "fp32", backend=None),
    row(2, "torchvision:resnet18", "qat int4 mavg pc n=32 e3"),
    row(3, "torchvision:resnet18", "qat int4 mavg pc n=32", backend="qnnpack"),
    row(4, "entrypoint:my.models:resnet18", "static int8 pct pt n=256 p99.9 qnnpack eager", health="collapsed"),
    row(5, "hf:bert-base-uncased-finetuned", "dynamic int8", state="failed", accuracy=None, latency_p50_ms=None),
]


def rendered(table: Any, width: int = 100) -> list[str]:
    buf = io.StringIO()
    Console(file=buf, width=width).print(table)
    return buf.getvalue().splitlines()


def test_the_default_table_fits_100_columns_and_hides_nothing_behind_an_ellipsis() -> None:
    table, legend = compact_table(ROWS)
    lines = [line.rstrip() for line in rendered(table, width=200)]  # its natural width, not squeezed
    assert max(len(line) for line in lines) <= compact.TABLE_WIDTH
    text = "\n".join(lines)
    assert "…" not in text
    for needle in ("qat int4 mavg pc n=32 e3", "12.3±0.3", "2.46x", "11.1M", "collapsed", "failed"):
        assert needle in text
    # A recipe longer than the column wraps at a space: every word is there, none cut.
    assert "static int8 pct pt n=256" in text and "p99.9 qnnpack eager" in text
    header = lines[0].split()
    assert header[:3] == ["job", "model", "recipe"] and "backend" in header  # two backends: shown
    assert "status" in header
    # Two models end in resnet18: the short names differ and the legend names each.
    assert legend == [
        "models: resnet18~1 = torchvision:resnet18, resnet18~2 = entrypoint:my.models:resnet18, "
        "bert-base-un = hf:bert-base-uncased-finetuned"
    ]


def test_columns_that_say_nothing_are_left_out() -> None:
    same = [row(1, "farm:mlp", "fp32"), row(2, "farm:mlp", "static int8 minmax pc n=256")]
    table, legend = compact_table(same)
    header = rendered(table)[0].split()
    assert header == ["job", "model", "recipe", "bs", "acc", "drop", "p50", "ms", "speedup", "size"]
    assert legend == []  # short names are shown whole


def test_short_names_are_unique_whatever_the_models() -> None:
    models = ["a:" + "x" * 30, "b:" + "x" * 30, "x" * 12, "c:" + "x" * 12 + "y"]
    legend = model_legend(models)
    assert len(set(legend.values())) == len(models)
    assert all(len(s) <= compact.MODEL_WIDTH for s in legend.values())


def test_p50_shows_the_wider_half_of_its_interval() -> None:
    assert p50_with_interval({"latency_p50_ms": 1.0, "latency_p50_ci_low_ms": 0.9, "latency_p50_ci_high_ms": 1.05}) == (
        "1±0.1"
    )
    assert p50_with_interval({"latency_p50_ms": 0.118}) == "0.118"
    assert p50_with_interval({}) == "-"


def test_the_sweep_summary_fits_100_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.cli import sweep_views

    rows = [r | {"batch_size": b, "error": "boom" if r["state"] == "failed" else None} for r in ROWS for b in (1, 8)]
    monkeypatch.setattr("farm.store.results.sweep_rows", lambda db, sweep_id: rows)
    buf = io.StringIO()
    monkeypatch.setattr(render.out, "_file", buf)  # restored to None: the stdout of the moment
    monkeypatch.setattr(render.out, "_width", 200)
    sweep_views.print_sweep_summary(None, 7)
    lines = buf.getvalue().splitlines()
    table = [line.rstrip() for line in lines if line.strip() and not line.startswith(("models:", "failed"))]
    assert max(len(line) for line in table) <= 100, "\n".join(table)
    assert "backend" in lines[1] and "status" in lines[1] and "12.3±0.3" in buf.getvalue()
    assert any(line.startswith("models: resnet18~1 = torchvision:resnet18") for line in lines)

    buf.seek(0), buf.truncate()
    sweep_views.print_sweep_summary(None, 7, wide=True)
    assert "sqnr dB" in buf.getvalue() and "observer" in buf.getvalue()


def test_sizes_are_short() -> None:
    assert [compact.short_bytes(n) for n in (None, 330, 4300, 11_689_512, 1_340_000_000)] == [
        "-",
        "330B",
        "4.2K",
        "11.1M",
        "1.25G",
    ]
