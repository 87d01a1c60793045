"""``farm report``: the HTML report of a real sweep, read back as a document and opened in headless Chromium.

One small sweep runs once for the module (``farm sweep run`` with the toys, like tests/unit/test_local_runner.py):
two toy models through fp32, dynamic, static (two observers, two calibration sizes) and a simulated static int4,
plus a model whose file does not exist and whose reference string carries ``<script>``: its fp32 reference
fails and its trials fail with it. The fixture gives the sweep a FARM_HOME of its own the way the conftest's
``sweep_home`` does (that fixture is function-scoped; running the sweep once per test would be too slow).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from farm.errors import ConfigError
from farm.report.fmt import esc, human_bytes
from farm.report.writer import write_atomically
from tests.sweeps import TOY_DATA, TOY_MLP, describe, farm, query, write_spec
from tests.unit.report import browser
from tests.unit.report.page import Page, external_urls, parse

TOY_CNN = "entrypoint:tests.toys:tiny_cnn"
EVIL = '<script>alert("x")</script>'
#: A model file that exists (a run here refuses a missing one before writing anything) but is no TorchScript: its
#: jobs fail, and the error names its path, markup and all.
EVIL_PATH = Path(tempfile.gettempdir()) / f"farm-report-{os.getpid()}" / f"{EVIL}.pt"
EVIL_MODEL = f"file:{EVIL_PATH}"
SWEEP_NAME = "report <b>test</b> & co"
SPEC = f"""\
name: '{SWEEP_NAME}'
models: ['{TOY_MLP}', '{TOY_CNN}', '{EVIL_MODEL}']
dataset: '{TOY_DATA}'
methods:
  - fp32
  - dynamic
  - static: {{observer: [minmax, histogram], calibration_size: [8, 16]}}
include:
  - {{method: static, bits: 4, observer: minmax, calibration_size: 16}}
exclude:
  - {{model: '{TOY_MLP}', method: static, observer: histogram}}
benchmark: {{batch_size: [1, 4], max_time_s: 0.1, min_reps: 5, warmup_s: 0}}
"""  # 3 references + 16 trials; the toys' 12 jobs run, the 7 of the unreadable file fail
SECTIONS = ["summary", "latency", "size", "bits", "calibration", "batch", "results", "failed", "hardware"]


@dataclass
class Swept:
    home: Path
    report: Path
    html: str
    page: Page
    rows: list[dict[str, Any]]


@pytest.fixture(scope="module")
def swept(farm_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swept]:
    """The sweep run once, its report written by ``farm report 1 --output``."""
    home = tmp_path_factory.mktemp("report") / "home"
    shared_zoo = farm_home / "cache" / "zoo"
    shared_zoo.mkdir(parents=True, exist_ok=True)
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "zoo").symlink_to(shared_zoo, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FARM_HOME", str(home))
        mp.delenv("FARM_DATABASE_URL", raising=False)
        mp.delenv("FARM_ARTIFACTS_URL", raising=False)
        mp.setenv("FARM_ALLOWED_MODULES", "tests.toys")
        EVIL_PATH.parent.mkdir(parents=True, exist_ok=True)
        EVIL_PATH.write_bytes(b"not a TorchScript file")
        spec = write_spec(home.parent / "specs", SPEC)
        ran = farm("sweep", "run", str(spec), "--jobs", "2")
        assert ran.exit_code == 1, describe(ran)  # the unreadable model's jobs failed
        report = home.parent / "out" / "report.html"
        report.parent.mkdir()
        written = farm("report", "1", "--output", str(report))
        assert written.exit_code == 0, describe(written)
        assert written.stdout == f"{report}\n"
        rows = query("SELECT * FROM results_flat WHERE sweep_id = 1 ORDER BY job_id, batch_size")
        html = report.read_text(encoding="utf-8")
        yield Swept(home, report, html, parse(html), rows)
    shutil.rmtree(EVIL_PATH.parents[1], ignore_errors=True)


def _jobs(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {r["job_id"]: r for r in rows}


# --- the document --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_section_is_there_with_a_titled_labelled_chart(swept: Swept) -> None:
    page = swept.page
    assert page.section_ids == SECTIONS
    jobs = _jobs(swept.rows)
    assert len(jobs) == 19 and sum(j["state"] == "failed" for j in jobs.values()) == 7
    # A chart per chart section, named for screen readers, with its title and unit-bearing axis labels.
    units = {
        "latency": ["p50 latency per call (ms)", "top-1 accuracy (fraction)", "batch size 1", "batch size 4"],
        "size": ["serialized model size (KiB)", "top-1 accuracy (fraction)"],
        "bits": ["weight bit-width (bits)", "top-1 accuracy (fraction)", "fp32 reference"],
        "calibration": ["calibration size (samples)", "minmax", "histogram"],
        "batch": ["batch size (samples per call)", "p50 latency per call (ms)", "static int8", "dynamic int8"],
    }
    for section, expected in units.items():
        assert len(page.svg_labels[section]) == 1, section
        texts = page.svg_text[section]
        assert any(t.startswith(page.svg_labels[section][0]) for t in texts), (section, texts)  # the title
        for text in expected:
            assert text in texts, (section, text, texts)
        # The legend names the models (shortened if long) in the per-model panels or the front lines.
        assert any("tiny_cnn" in t for t in texts), section
    # Simulated points are labelled where they are drawn, and are absent where latency is plotted.
    for section in ("size", "bits", "calibration"):
        assert "(simulated)" in page.svg_text[section], section
    for section in ("latency", "batch"):
        assert not any("simulated" in t for t in page.svg_text[section]), section
        assert "2 simulated job(s)" in page.section_text[section]


@pytest.mark.slow
def test_the_results_table_has_every_row_formatted_and_sortable(swept: Swept) -> None:
    page = swept.page
    assert len(page.rows) == len(swept.rows) == 12 * 2 + 7  # 12 jobs x 2 batch sizes, 7 failed jobs once
    columns = [c for c, _ in page.headers]
    assert columns[:3] == ["job_id", "model", "method"] and "dataset" not in columns  # one dataset: no column
    assert all(sort == "none" for _, sort in page.headers)
    for (hidden, cells), row in zip(page.rows, swept.rows, strict=True):
        assert not hidden
        by = dict(zip(columns, cells, strict=True))
        assert by["job_id"].text == str(row["job_id"]) and by["model"].text == row["model"]
        if row["accuracy"] is None:
            assert by["accuracy"].text == "–" and by["accuracy"].key == ""  # blanks sort last
            assert by["latency_p50_ms"].key == ""
            continue
        assert by["accuracy"].text == f"{row['accuracy']:.4f}"
        assert float(by["latency_p50_ms"].key) == pytest.approx(row["latency_p50_ms"], rel=1e-5)
        digits = re.sub(r"[^0-9]", "", by["latency_p50_ms"].text).lstrip("0")
        assert len(digits) <= 3, by["latency_p50_ms"].text  # three significant digits
        assert by["size_bytes"].text == human_bytes(row["size_bytes"])
        assert by["simulated"].text == ("yes" if row["simulated"] else "no")
    # Exact sizes in a title attribute.
    size = next(r["size_bytes"] for r in swept.rows if r["size_bytes"])
    assert f'title="{size:,} bytes"' in swept.html


@pytest.mark.slow
def test_the_summary_counts_jobs_and_picks_the_fastest_config_within_one_point(swept: Swept) -> None:
    text = swept.page.section_text["summary"]
    assert "19 job(s)" in text and "12 succeeded" in text and "7 failed" in text
    assert SWEEP_NAME in text and "(id 1)" in text  # the sweep's name, escaped in the file (below)
    # Independently of farm.analysis: among the healthy measured rows of each model and batch size that lose at
    # most one point, those whose p50 interval overlaps the fastest's are a tie, won by the simplest recipe (no
    # QAT, fewer calibration samples, a cheaper observer); its artifact is named in the summary.
    cost = {None: 0, "minmax": 0, "moving_average": 1, "histogram": 2, "percentile": 3}

    def interval(r: dict[str, Any]) -> tuple[float, float]:
        low, high = r.get("latency_p50_ci_low_ms"), r.get("latency_p50_ci_high_ms")
        p50 = r["latency_p50_ms"]
        return (p50, p50) if low is None or high is None else (min(low, p50), max(high, p50))

    # The untrained toy CNN gives one class for every input (the random-init MobileNetV2 in miniature):
    # a degenerate reference, so none of its jobs may be anyone's best configuration; the notes list them.
    cnn_jobs = sorted({r["job_id"] for r in swept.rows if r["model"] == TOY_CNN and r["state"] == "succeeded"})
    assert {r["health"] for r in swept.rows if r["job_id"] in cnn_jobs} == {"degenerate_reference"}
    assert f"Health: {len(cnn_jobs)} job(s) have figures that mean nothing (degenerate_reference: jobs" in text
    assert not any(f"(job {j})" in text for j in cnn_jobs)
    for model in (TOY_MLP,):
        for batch in (1, 4):
            within = [
                r
                for r in swept.rows
                if r["model"] == model and r["batch_size"] == batch and r["state"] == "succeeded"
                and not r["simulated"] and r["accuracy_drop"] <= 0.01 + 1e-9 and r["health"] in (None, "ok")
            ]  # fmt: skip
            fastest = min(within, key=lambda r: (r["latency_p50_ms"], r["accuracy_drop"]))
            lo, hi = interval(fastest)
            tied = [r for r in within if interval(r)[0] <= hi and lo <= interval(r)[1]]
            best = min(
                tied,
                key=lambda r: (
                    r["method"] == "qat", r["calibration_size"] or 0, cost[r["observer"]], r["latency_p50_ms"],
                    r["accuracy_drop"],
                ),
            )  # fmt: skip
            assert f"(job {best['job_id']})" in text
            assert best["artifact_uri"] in text
    # The notes: the simulated jobs, the CNN's dynamic coverage warning, the failures.
    sim = sorted({r["job_id"] for r in swept.rows if r["simulated"]})
    assert len(sim) == 2 and f"{len(sim)} job(s) are simulated" in text
    dynamic_cnn = next(r["job_id"] for r in swept.rows if r["model"] == TOY_CNN and r["method"] == "dynamic")
    assert re.search(rf"Coverage: {re.escape(TOY_CNN)}, dynamic \(jobs {dynamic_cnn}\): low coverage", text)
    assert "7 job(s) did not succeed" in text


@pytest.mark.slow
def test_failed_jobs_are_listed_with_their_errors(swept: Swept) -> None:
    text = swept.page.section_text["failed"]
    failed = [r for r in swept.rows if r["state"] == "failed"]
    assert len(failed) == 7
    for r in failed:
        assert r["error"] in text  # the parser unescaped it: the page shows it as text
    assert f"model file {EVIL_PATH} is not a readable TorchScript file" in text


@pytest.mark.slow
def test_values_from_the_database_are_escaped(swept: Swept) -> None:
    html = swept.html
    # The model reference and the errors carry <script>: only escaped in the file, never as markup.
    assert EVIL not in html and esc(EVIL) in html
    assert "<b>test</b>" not in html and esc(SWEEP_NAME) in html
    assert swept.page.tags.get("script") == 1  # the page's own script, and no other
    assert swept.page.tags.get("b", 0) == 0


@pytest.mark.slow
def test_the_file_needs_no_network(swept: Swept) -> None:
    html = swept.html
    page = swept.page
    assert external_urls(html) == []  # http(s) only in the SVG namespace names
    assert page.scripts == [{}]  # inline: no src
    for tag in ("link", "img", "iframe", "object", "embed", "image", "use"):
        if tag != "use":
            assert page.tags.get(tag, 0) == 0, tag
    assert not re.search(r"@import|@font-face", html)
    assert all(u.startswith("url(#") for u in re.findall(r"url\([^)]*\)", html))  # clip paths in the page
    ids = set(page.ids)
    assert len(ids) == len(page.ids), "ids must be unique across the inline SVGs"
    for tag, attribute, value in page.references:
        if attribute in ("href", "xlink:href"):
            assert value.startswith("#") and value[1:] in ids, (tag, attribute, value)
        elif attribute == "style":
            assert "url(" not in value or "url(#" in value
        else:
            pytest.fail(f"<{tag} {attribute}={value!r}> loads something")
    assert "<!DOCTYPE svg" not in html and "<metadata>" not in html and "<?xml" not in html


# --- the command -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_default_output_is_report_id_html_and_the_file_is_replaced_whole(
    swept: Swept, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report-1.html").write_text("stale")
    result = farm("report", "1")
    assert result.exit_code == 0, describe(result)
    assert result.stdout == f"{tmp_path / 'report-1.html'}\n" and result.stderr == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report-1.html"]  # no temporary file left behind
    assert parse((tmp_path / "report-1.html").read_text()).section_ids == SECTIONS


@pytest.mark.slow
def test_an_unknown_sweep_is_one_line_and_writes_nothing(swept: Swept, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = farm("report", "99", "--output", str(out))
    assert result.exit_code == 2, describe(result)
    assert result.stderr == "Error: no sweep with id 99\n" and result.stdout == ""
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_missing_output_directory_is_one_line_and_writes_nothing(sweep_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "nope" / "r.html"
    result = farm("report", "1", "--output", str(out))
    assert result.exit_code == 2, describe(result)
    assert result.stderr == f"Error: cannot write {out}: directory {out.parent} does not exist\n"
    assert not out.parent.exists()
    assert not (sweep_home / "farm.db").exists()  # refused before the database was opened
    directory = farm("report", "1", "--output", str(tmp_path))
    assert directory.exit_code == 2 and directory.stderr == f"Error: cannot write {tmp_path}: it is a directory\n"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")

    def refuse(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("farm.report.writer.os.replace", refuse)
    with pytest.raises(ConfigError, match="cannot write .*report.html: No space left on device"):
        write_atomically(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.html"]


# --- in a browser ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Path:
    return browser.require_chromium()


@pytest.mark.slow
def test_the_page_renders_its_charts_in_chromium(swept: Swept, chromium: Path, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    png = browser.screenshot(chromium, tmp_path, swept.report.as_uri())
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    assert pixels.shape == (2400, 1280, 3)
    inked = (pixels.min(axis=2) < 250).mean()
    assert inked > 0.04, f"the page is (almost) blank: {inked:.1%} of its pixels are not white"
    colours = len(np.unique((pixels[..., 0].astype(np.int32) << 16) | (pixels[..., 1] << 8) | pixels[..., 2]))
    assert colours > 200, f"{colours} colours: too few for text and charts"

    # The charts' colours: matplotlib's first two (the two toy models), which no CSS on the page uses.
    def near(colour: tuple[int, int, int]) -> int:
        return int((np.abs(pixels - np.array(colour)).max(axis=2) <= 8).sum())

    assert near((31, 119, 180)) > 100, "no blue (C0) chart marks"
    assert near((255, 127, 14)) > 100, "no orange (C1) chart marks"


@pytest.mark.slow
def test_the_script_sorts_and_filters_without_errors(swept: Swept, chromium: Path, tmp_path: Path) -> None:
    url = swept.report.as_uri() + "#sort=latency_p50_ms&dir=desc&q=tiny_cnn%20static"
    dom, errors = browser.dump_dom(chromium, tmp_path, url)
    assert errors == []
    page = parse(dom)
    assert page.body_attrs.get("data-report-ready") == str(len(swept.rows))
    assert dict(page.headers)["latency_p50_ms"] == "descending"
    assert [s for c, s in page.headers if c != "latency_p50_ms"] == ["none"] * (len(page.headers) - 1)
    # Filtered: every visible row has both words; as many as in the database.
    expected = [r for r in swept.rows if r["model"] == TOY_CNN and r["method"] == "static"]
    visible = page.column("model")
    assert len(visible) == len(expected) == 10 and all(c.text == TOY_CNN for c in visible)
    # Sorted by the exact values, numerically (0.01 after 0.009 once sorted as text would not be).
    latencies = [float(c.key) for c in page.column("latency_p50_ms")]
    assert latencies == sorted(latencies, reverse=True)
    assert sorted(latencies, reverse=True) == pytest.approx(
        sorted((r["latency_p50_ms"] for r in expected), reverse=True), rel=1e-5
    )
    # Every row is still in the table, the hidden ones too; blank latencies sort last.
    every = page.column("latency_p50_ms", visible_only=False)
    assert len(every) == len(swept.rows)
    values = [c.key for c in every]
    assert values[-7:] == [""] * 7 and "" not in values[:-7]


def test_the_console_check_catches_a_script_error(chromium: Path, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p><script>nope();</script><script>let = ;</script></body></html>")
    _, errors = browser.dump_dom(chromium, tmp_path, page.as_uri())
    assert any("Uncaught ReferenceError" in e for e in errors), errors
    assert any("SyntaxError" in e for e in errors), errors
