"""``farm.report.build_report`` on rows made here (no database, no models): hostile strings, empty and
one-method sweeps, a 1,000-row sweep, and the number formats.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from datetime import datetime, timezone
from typing import Any

from farm.report import SweepInfo, build_report
from farm.report.fmt import esc, fixed, human_bytes, id_ranges, sig
from farm.report.tradeoff import accuracy_vs_latency
from farm.store.columns import RESULT_COLUMNS
from tests.unit.report.page import external_urls, parse

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
FINGERPRINT = {
    "cpu_model": "Test CPU",
    "isa": ["avx2", "avx512_vnni"],
    "cpus": 8,
    "cpus_usable": 4,
    "machine": "x86_64",
    "gpu": None,
    "torch": "2.9.0",
    "quantized_engines": ["x86", "fbgemm"],
}


LOOKS_LIKE_SVG = 'url(#p1) id="m2" href="#m3" C:\\$x$\\'  # and backslashes and dollars (mathtext)


def row(job_id: int, **values: Any) -> dict[str, Any]:
    """A row of results_flat: every column, the given values, a succeeded fp32-like default."""
    base: dict[str, Any] = dict.fromkeys(RESULT_COLUMNS)
    base.update(
        sweep_id=1, sweep_name="s", job_id=job_id, job_key=f"k{job_id}", model="m", dataset="d", method="fp32",
        device="cpu", batch_size=1, state="succeeded", accuracy=0.9, accuracy_fp32=0.9, accuracy_drop=0.0,
        size_bytes=4_000_000, size_ratio=1.0, latency_p50_ms=2.0, latency_p90_ms=2.5, latency_p99_ms=3.0,
        throughput=500.0, speedup=1.0, simulated=False, hardware="Test CPU [avx2] x4", worker="w1",
    )  # fmt: skip
    base.update(values)
    return base


def report(rows: list[dict[str, Any]], **kwargs: Any) -> str:
    sweep = kwargs.pop("sweep", SweepInfo(1, "s", "succeeded", "me@host", WHEN, WHEN))
    fingerprints = kwargs.pop("fingerprints", {r["job_id"]: FINGERPRINT for r in rows if r["state"] == "succeeded"})
    return build_report(rows, sweep=sweep, fingerprints=fingerprints, generated_at=WHEN, **kwargs)


def test_hostile_strings_are_text_everywhere() -> None:
    evil = "<script>alert(1)</script>\"'&$x^2$_"
    rows = [
        row(1, model=evil, hardware=evil, worker=evil, artifact_uri=f"file:///a/{evil}"),
        row(2, model=evil, method="static", bits=8, observer=LOOKS_LIKE_SVG, calibration_size=8, accuracy=0.89,
            accuracy_drop=0.01, latency_p50_ms=1.0, speedup=2.0, artifact_uri=f"s3://b/{evil}"),
        row(3, model="_hidden", method="static", bits=4, calibration_size=8, simulated=True, speedup=None),
        row(4, model=evil, method="qat", state="failed", error=evil, accuracy=None, batch_size=None),
    ]  # fmt: skip
    fp = {**FINGERPRINT, "cpu_model": evil, "isa": [evil], "torch": evil}
    html = report(
        rows,
        sweep=SweepInfo(1, evil, evil, evil, WHEN, None),
        fingerprints={1: fp, 2: fp, 3: FINGERPRINT},
        warnings={2: [f"low coverage: {evil}"], 1: [evil]},
    )
    page = parse(html)
    assert "<script>alert(1)" not in html and "alert(1)</script>" not in html
    assert page.tags["script"] == 1 and page.scripts == [{}]
    assert esc(evil) in html
    assert evil in page.section_text["failed"] and evil in page.section_text["hardware"]
    assert f"Coverage: {evil}, static (jobs 2): low coverage: {evil}" in page.section_text["summary"]
    # In the charts (matplotlib writes the SVG text): the text itself, not mathtext, and no legend entry lost.
    assert any("$x^2$" in t for t in page.svg_text["bits"]), page.svg_text["bits"]
    assert any("_hidden" in t for t in page.svg_text["bits"])
    assert LOOKS_LIKE_SVG in page.svg_text["calibration"]  # the chart's own ids were renamed, not the text
    assert external_urls(html) == []


def test_a_sweep_with_one_method_and_no_failures_says_so() -> None:
    rows = [row(1, batch_size=1), row(1, batch_size=8, latency_p50_ms=9.0)]
    page = parse(report(rows))
    assert page.section_text["failed"].strip().endswith("none: no job failed or was cancelled.")
    assert "No succeeded job was calibrated" in page.section_text["calibration"]
    assert "calibration" not in page.svg_labels  # no chart, a sentence instead
    for section in ("latency", "size", "bits", "batch"):
        assert len(page.svg_labels[section]) == 1, section
    assert "fp32 (job 1)" in page.section_text["summary"]
    assert "none." in page.section_text["summary"]  # no notes
    assert len(page.rows) == 2


def test_a_sweep_with_nothing_finished_still_makes_a_page() -> None:
    rows = [
        row(1, state="pending", batch_size=None, accuracy=None, latency_p50_ms=None, size_bytes=None),
        row(2, state="cancelled", error="cancelled", batch_size=None, accuracy=None, latency_p50_ms=None),
    ]
    page = parse(report(rows, fingerprints={}))
    assert page.section_ids[0] == "summary" and len(page.section_ids) == 9
    assert not page.svg_labels  # nothing to plot anywhere
    assert "none: no job recorded a machine fingerprint" in page.section_text["hardware"]
    assert "1 pending" in page.section_text["summary"] and "1 cancelled" in page.section_text["summary"]
    assert "2 job(s)" in page.section_text["summary"]
    assert parse(report([], fingerprints={})).section_text["results"].strip().endswith("none: the sweep has no jobs.")


def test_simulated_rows_never_reach_a_latency_chart() -> None:
    rows = [row(1, method="static", bits=4, simulated=True, speedup=None)]
    chart = accuracy_vs_latency(rows)
    assert chart.svg is None
    assert chart.notes == (
        "No succeeded job has both an accuracy and a latency.",
        "1 simulated job(s) left out: their latency measures fake-quantization overhead, not a deployment.",
    )
    assert accuracy_vs_latency([*rows, row(2)]).svg is not None


def test_machines_with_different_fingerprints_get_a_card_each() -> None:
    rows = [row(i) for i in range(1, 6)]
    other = {**FINGERPRINT, "cpu_model": "Other CPU", "gpu": {"name": "Big GPU", "capability": "9.0"}}
    noisy = {**FINGERPRINT, "load_average_1m": 3.5}  # not a different machine
    html = report(rows, fingerprints={1: FINGERPRINT, 2: noisy, 3: other, 4: other, 5: FINGERPRINT})
    page = parse(html)
    assert html.count('<article class="card">') == 2
    assert "3 job(s): 1–2, 5" in page.section_text["hardware"]
    assert "2 job(s): 3–4" in page.section_text["hardware"] and "Big GPU (compute 9.0" in page.section_text["hardware"]
    assert "ran on 2 different machine" in page.section_text["summary"]


def test_a_thousand_rows_stay_a_reasonable_file() -> None:
    models = [f"torchvision:model_{i}" for i in range(5)]
    grid = itertools.product(models, ["minmax", "histogram", "percentile", "moving_average"], [8, 4], [32, 256, 1024])
    rows = []
    for job_id, (model, observer, bits, cal) in enumerate(itertools.islice(itertools.cycle(grid), 250), 1):
        for batch in (1, 8, 32, 128):
            rows.append(
                row(job_id, model=model, method="static", observer=observer, bits=bits, calibration_size=cal,
                    batch_size=batch, simulated=bits < 8, speedup=None if bits < 8 else 1.5,
                    accuracy=0.7 + (job_id % 29) / 100, accuracy_drop=0.2 - (job_id % 29) / 100,
                    latency_p50_ms=batch * (1 + job_id % 13) / 7, size_bytes=1_000_000 + 997 * job_id)
            )  # fmt: skip
    assert len(rows) == 1000
    html = report(rows)
    assert len(html.encode()) < 2_500_000, len(html.encode())
    page = parse(html)
    assert len(page.rows) == 1000
    assert "Batch sizes" not in page.section_text["latency"]  # 4 batch sizes: every one gets a panel
    # The best configurations: models in order, batch sizes by number (not as text: 128 before 8).
    best = re.findall(r"<tr><td class=t>(torchvision:model_\d)</td><td>(\d+)</td>", html)
    assert best == [(m, str(b)) for m in models for b in (1, 8, 32, 128)]
    assert "(124 more)" not in html and re.search(r"jobs 4–6, .*, … \(\d+ more\)\)", page.section_text["summary"])


def test_number_formats() -> None:
    assert [sig(x) for x in (0.007366, 0.1234, 12.34, 123.4, 1234.5, 0.0, None, float("nan"))] == [
        "0.00737", "0.123", "12.3", "123", "1,230", "0", "–", "–",
    ]  # fmt: skip
    assert [sig(x) for x in (0.0099996, 0.99951, 9.9996, 999.7, 99_950.0, -0.012345)] == [
        "0.0100", "1.00", "10.0", "1,000", "100,000", "-0.0123",
    ]  # rounding up to the next power of ten keeps three digits  # fmt: skip
    assert [human_bytes(n) for n in (0, 1023, 13179, 4_000_000, 3 * 1024**3)] == [
        "0 B", "1023 B", "12.9 KiB", "3.81 MiB", "3.00 GiB",
    ]  # fmt: skip
    assert fixed(0.98765) == "0.9877" and fixed(0.01, signed=True) == "+0.0100" and fixed(None) == "–"
    assert id_ranges([7, 1, 2, 3, 5, 8]) == "1–3, 5, 7–8" and id_ranges([]) == ""
    assert id_ranges([1, 3, 5, 7, 9, 10], limit=3) == "1, 3, 5, … (3 more)"
    html = report([row(1, size_bytes=13179, latency_p50_ms=0.007366)])
    assert re.search(r'<td data-v="13179" title="13,179 bytes">12.9 KiB</td>', html)
    assert '<td data-v="0.007366">0.00737</td>' in html


def test_a_report_imports_no_torch(subprocess_env: dict[str, str]) -> None:
    # Analysts make reports on machines with only the producer install and matplotlib: no torch.
    code = (
        "import json, sys\n"
        "import farm.cli.report\n"
        "from tests.unit.report.test_report_build import report, row\n"
        "html = report([row(1), row(2, method='static', bits=8, calibration_size=8, observer='minmax')])\n"
        "print(json.dumps({'svg': html.count('<svg'), 'modules': sorted(sys.modules)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["svg"] == 5 and "matplotlib" in out["modules"]  # the check is real: the charts were drawn
    assert {m.partition(".")[0] for m in out["modules"]} & {"torch", "torchvision", "sklearn"} == set()
