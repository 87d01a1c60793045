"""``farm tune``: a real local search of farm:digits-cnn on sklearn:digits (static, torch, two processes), and the bad
input it refuses before writing anything."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from farm.jobs.tune_plan import budget_per_runtime
from tests.sweeps import describe, farm, sweep_count

BASE = ["--model", "farm:digits-cnn", "--method", "static", "--runtime", "torch", "--max-time-s", "0.2"]


def test_a_local_tune_meets_the_target_through_its_stages(sweep_home: Path) -> None:
    # SQNR >= 40 dB: every global int8 recipe misses it (about 37 dB), keeping a layer or two in fp32 meets it.
    result = farm("tune", *BASE, "--metric", "sqnr_db", "--min-metric", "40", "-j", "2", "--json")
    assert result.exit_code == 0, describe(result)
    # Strict JSON (no Infinity: the fp32 reference's SQNR against itself is null), as any other language reads it.
    data = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"{c} in --json"))
    chosen = data["chosen"]
    assert chosen["sqnr_db"] >= 40 and chosen["fallback"], data
    assert chosen["artifact_uri"] and chosen["speedup"] is not None
    low, high = chosen["speedup_ci"]  # over torch's fp32, timed side by side: its 95 % interval holds it
    assert low <= chosen["speedup"] <= high
    stages = {e["stage"] for e in data["trail"]}
    assert {"global", "sensitivity", "candidates"} <= stages
    assert all(e["split"] == "validation" for e in data["trail"] if e["stage"] == "sensitivity")
    assert all(not e["meets"] for e in data["trail"] if e["stage"] == "global")
    layers = sum(1 for e in data["trail"] if e["stage"] == "sensitivity")
    # The trials and the torch fp32 reference (in the trail: the answer is measured against every fp32); the
    # sensitivity jobs carried it to the validation split in their own processes.
    assert len(data["trail"]) <= budget_per_runtime(layers)
    assert sum(e["reference"] for e in data["trail"]) == 1
    status = farm("tune", "status", str(data["tune_id"]), "--json")
    assert status.exit_code == 0, describe(status)
    assert json.loads(status.stdout)["chosen"]["job_id"] == chosen["job_id"]
    # Five layers leave torch one job after its candidates: the verify job times the answer exclusively; the
    # candidates, the sensitivity jobs and the global recipes (they only rank) are screened, timed pinned.
    assert chosen["isolation"] == "exclusive" and "verify" in stages, data
    ranked = ("sensitivity", "global", "candidates", "refine")
    screened = [e for e in data["trail"] if e["stage"] in ranked and not e["fp32"]]
    assert {e["isolation"] for e in screened} == {"pinned"}
    table = farm("tune", "status", str(data["tune_id"]))
    header = next(line for line in table.stdout.splitlines() if "recipe" in line and "stage" in line)
    assert "timed" in header and "timed exclusive" in table.stdout, describe(table)  # test figures timed two ways
    assert "over fp32 on torch (side by side)" in table.stdout, describe(table)
    listed = farm("tune", "list")
    assert str(data["tune_id"]) in listed.stdout and "sqnr_db >= 40" in listed.stdout and "met (" in listed.stdout
    query = farm("results", "query", "--tune", str(data["tune_id"]), "--format", "json")
    assert query.exit_code == 0 and any(r["job_id"] == chosen["job_id"] for r in json.loads(query.stdout))


def test_a_target_no_recipe_meets_ends_with_the_closest_and_exit_1(sweep_home: Path) -> None:
    # A budget of stage 1 alone: the global recipes are all the search may run, and none reaches 100 dB.
    result = farm(
        "tune", *BASE, "--metric", "sqnr_db", "--min-metric", "100", "--budget-jobs", "5", "-j", "2", "--json"
    )
    assert result.exit_code == 1, describe(result)
    data = json.loads(result.stdout)
    assert not data["met"] and data["chosen"]["fallback"] == []
    assert 50 < data["shortfall"] < 100 and not math.isnan(data["shortfall"])
    assert "falls short by" in result.stderr and "ran up to its budget" in result.stderr
    listed = farm("tune", "list")  # a missed target reads as missed, not "succeeded" alone
    assert f"missed by {data['shortfall']:.4g}" in listed.stdout, listed.stdout


def test_an_encoder_tuned_on_its_embedding_searches_only_the_layers_that_feed_it(sweep_home: Path) -> None:
    """Compared on its embedding, the encoder's classifier head changes nothing: no sensitivity job for it (on ONNX
    Runtime its export of the embedding has no head, and a job skipping it failed), and every job succeeds."""
    model = "farm:tiny-encoder?dim=32&layers=1&heads=2"
    result = farm(
        "tune", "--model", model, "--dataset", "tokens:16?n_test=32&n_calibration=32", "--method", "dynamic",
        "--runtime", "onnxruntime", "--metric", "cosine", "--min-metric", "0.99999", "--model-output", "embedding",
        "--batch-size", "4", "--max-time-s", "0.1", "-j", "2", "--json",
    )  # fmt: skip
    assert result.exit_code in (0, 1), describe(result)
    data = json.loads(result.stdout)
    sensitivity = [e for e in data["trail"] if e["stage"] == "sensitivity" and e["fallback"]]
    assert sensitivity and all(e["state"] == "succeeded" for e in data["trail"]), data["trail"]
    assert not any("head" in name for e in data["trail"] for name in e["fallback"])
    assert len(sensitivity) == 6  # q, k, v, out and the two MLP layers of its one block


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metric", "cosine", "--min-metric", "1.5"], "cosine ranges"),
        (["--max-accuracy-drop", "0.01", "--budget-jobs", "3"], "below stage 1"),
        (["--max-accuracy-drop", "0.01", "--runtime", "nope"], "unknown runtime"),
        (["--metric", "cosine", "--min-metric", "0.9", "--model-output", " "], "--model-output: expected"),
        (["--metric", "cosine", "--min-metric", "0.9", "--method", "static"], "at most once"),
        (["--metric", "cosine", "--min-metric", "0.9", "--method", "qat", "--runtime", "openvino"], "runs qat"),
        (["--metric", "cosine", "--min-metric", "0.9", "--trials", "-1"], "--trials"),
        (["--metric", "sqnr_db", "--min-metric", "20", "--bits", "4"], "no deployed latency"),
        (["--metric", "sqnr_db", "--min-metric", "20", "--bits", "9", "--objective", "size"], "--bits"),
        (
            [
                "--metric",
                "sqnr_db",
                "--min-metric",
                "20",
                "--bits",
                "4",
                "--objective",
                "size",
                "--runtime",
                "openvino",
            ],
            "runs int8 only",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(sweep_home: Path, args: list[str], message: str) -> None:
    result = farm("tune", "--model", "farm:digits-cnn", "--method", "static", *args)
    assert result.exit_code == 2, describe(result)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sweep_count(sweep_home) == (0, 0)


def test_a_size_search_at_int4_raises_its_sensitive_layers_to_int8_and_the_rules_reproduce_it(
    sweep_home: Path, tmp_path: Path
) -> None:
    """--bits 4 --objective size (NNCF's 4/8-bit mixed precision): every int4 global misses 25 dB (about 17); the
    layers fall back to int8, never to fp32 (4x their int8 bytes); the answer is simulated (no speed claimed), its
    size a packed estimate below the all-int8 candidate's, and its layer rules re-run as `farm quantize` give the
    same SQNR."""
    import yaml

    result = farm(
        "tune", *BASE, "--bits", "4", "--objective", "size", "--metric", "sqnr_db", "--min-metric", "25", "-j", "2",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, describe(result)
    data = json.loads(result.stdout)
    chosen = data["chosen"]
    assert chosen["sqnr_db"] >= 25 and chosen["fallback"] and chosen["fallback_to"] == "int8", chosen
    assert chosen["simulated"] and chosen["speedup"] is None and chosen["latency"] is None
    assert all(e["latency"] is None for e in data["trail"] if e["simulated"])  # fake quantization's timing
    assert any(e["latency"] for e in data["trail"] if e["fp32"])
    assert all(o["speedup"] is None for o in chosen["over_fp32"])
    raised = [e for e in data["trail"] if e["fallback"] and not e["fp32"]]
    assert raised and all(e["fallback_to"] == "int8" and e["simulated"] for e in raised)
    every = max(len(e["fallback"]) for e in raised)  # every layer at int8: a candidate of its own
    assert any(len(e["fallback"]) == every and e["stage"] == "candidates" for e in raised)
    biggest = max(e["size_bytes"] for e in raised if len(e["fallback"]) == every)
    assert chosen["size_bytes"] <= biggest
    query = farm("results", "query", "--tune", str(data["tune_id"]), "--format", "json")
    row = next(r for r in json.loads(query.stdout) if r["job_id"] == chosen["job_id"])
    params = row["params"] if isinstance(row["params"], dict) else json.loads(row["params"])
    assert params["bits"] == 4 and all(r["bits"] == 8 and "skip" not in r for r in params["layers"])
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(params["layers"]))
    again = farm(
        "quantize", "--model", "farm:digits-cnn", "--method", "static", "--bits", "4", "--granularity",
        params["granularity"], "--layers-file", str(rules), "--batch-size", "1", "--json", "--output",
        str(tmp_path / "again"),
    )  # fmt: skip
    assert again.exit_code == 0, describe(again)
    assert json.loads(again.stdout)["sqnr_db"] == chosen["sqnr_db"]
    status = farm("tune", "status", str(data["tune_id"]))
    assert "layers at int8" in status.stdout and "(sim)" in status.stdout, describe(status)


def test_a_tune_of_two_methods_finds_the_faster_method_a_meeting_global_of_the_other_hides(sweep_home: Path) -> None:
    """digits-cnn on torch, static and dynamic int8. Dynamic quantizes its Linear layers alone: its globals meet
    40 dB (about 51) at about fp32's latency. A search of dynamic alone would stop there; static's line falls its
    layers back and finds a recipe meeting the target at a fraction of that latency."""
    result = farm(
        "tune", *BASE, "--method", "dynamic", "--metric", "sqnr_db", "--min-metric", "40", "-j", "2", "--json"
    )
    assert result.exit_code == 0, describe(result)
    data = json.loads(result.stdout)
    globals_ = [e for e in data["trail"] if e["stage"] == "global" and not e["fp32"]]
    assert {e["method"] for e in globals_} == {"static", "dynamic"}
    dynamic = [e for e in globals_ if e["method"] == "dynamic" and e["meets"]]
    assert dynamic and not any(e["meets"] for e in globals_ if e["method"] == "static")
    sens = [e for e in data["trail"] if e["stage"] == "sensitivity"]
    assert sens and {e["method"] for e in sens} == {"static"}  # a global meeting the target has nothing to gain
    chosen = data["chosen"]
    found = [e for e in data["trail"] if e["method"] == "static" and e["split"] == "test" and e["fallback"]]
    found = [e for e in found if e["meets"] and e["latency"]]
    assert found, data  # static's line found a recipe meeting the target
    fastest = min(e["latency"]["p50_ms"] for e in dynamic)
    assert min(e["latency"]["p50_ms"] for e in found) < fastest, (found, dynamic)
    status = farm("tune", "status", str(data["tune_id"]), "--json")
    assert status.exit_code == 0 and json.loads(status.stdout)["chosen"]["method"] == chosen["method"]
    if chosen["method"] == "static":
        assert chosen["fallback"] and chosen["sqnr_db"] >= 40 and chosen["latency"]["p50_ms"] < fastest, data
        return
    # A dynamic answer only by the tie rule: where the screened p50 intervals of the fastest recipes overlap (on a
    # loaded host, with these 0.2 s timings), the simpler one wins, and a global keeps no layer in floating point.
    best = min(found, key=lambda e: e["latency"]["p50_ms"])
    screened = [e["latency"]["ci_high_ms"] for e in dynamic if e["recipe"] == chosen["recipe"]]
    assert not chosen["fallback"] and screened and best["latency"]["ci_low_ms"] <= max(screened), data


def test_the_explore_stage_asks_new_recipes_of_optuna_and_verify_chooses_among_all(sweep_home: Path) -> None:
    """digits-cnn at 42 dB: the classifier alone in fp32 meets it. Four explore trials: each a set of the most
    sensitive layers in fp32 that no candidate tried, screened on the test split; the answer is verified."""
    pytest.importorskip("optuna")
    args = ["--metric", "sqnr_db", "--min-metric", "42", "-j", "2", "--trials", "4", "--json"]
    result = farm("tune", *BASE, *args)
    assert result.exit_code == 0, describe(result)
    data = json.loads(result.stdout)
    explored = [e for e in data["trail"] if e["stage"] == "explore"]
    tried = [set(e["fallback"]) for e in data["trail"] if e["stage"] in ("global", "candidates", "refine")]
    assert len(explored) == 4, data
    assert all(e["split"] == "test" and e["isolation"] == "pinned" and e["state"] == "succeeded" for e in explored)
    sets = [set(e["fallback"]) for e in explored]
    assert all(s and s not in tried for s in sets) and len({frozenset(s) for s in sets}) == 4
    ranked = [e["fallback"][0] for e in data["trail"] if e["stage"] == "sensitivity" and e["fallback"]]
    assert set().union(*sets) <= set(ranked)  # layers of the model the sensitivity stage measured
    chosen = data["chosen"]
    assert chosen["sqnr_db"] >= 42 and chosen["isolation"] == "exclusive"
    status = farm("tune", "status", str(data["tune_id"]), "--json")
    assert json.loads(status.stdout)["stages"]["explore"] == {"done": 4, "jobs": 4}
    assert "stage explore: 4 job(s) done" in result.stderr


def test_trials_without_optuna_is_refused_before_anything_is_written(
    sweep_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    result = farm("tune", *BASE, "--metric", "sqnr_db", "--min-metric", "42", "--trials", "4")
    assert result.exit_code == 2 and "needs Optuna" in result.stderr, describe(result)
    assert len(result.stderr.strip().splitlines()) == 1
    assert sweep_count(sweep_home) == (0, 0)


def test_accuracy_without_labels_is_refused(sweep_home: Path) -> None:
    result = farm("tune", "--model", "farm:tiny-encoder", "--method", "dynamic", "--max-accuracy-drop", "0.01")
    assert result.exit_code == 2 and "no labels" in result.stderr, describe(result)
    assert "(agreement, cosine, sqnr_db)" in result.stderr  # the metrics a tune takes: no user metric function
    assert sweep_count(sweep_home) == (0, 0)


def test_a_metric_prints_with_the_digits_that_tell_it_from_its_target() -> None:
    from farm.cli.tune_views import metric_text as _metric
    from farm.jobs.tune_plan import TuneSettings

    tight = TuneSettings("cosine", min_metric=0.999977)
    assert _metric(0.9999779135, tight) == "0.9999779"  # not "1", which reads as fp32 itself
    assert _metric(0.9999702, tight) == "0.9999702"  # a miss reads as one
    assert _metric(47.0808504, TuneSettings("sqnr_db", min_metric=46.63)) == "47.081"
    assert _metric(0.93, TuneSettings("accuracy", max_accuracy_drop=0.01)) == "0.93"
    # Rounding must not carry a miss up to the target: 0.99989909 against 0.9999 is not "0.9999".
    target = TuneSettings("cosine", min_metric=0.9999)
    assert _metric(0.99989909, target) == "0.999899" and float(_metric(0.99989909, target)) < 0.9999
    assert _metric(39.99996, TuneSettings("sqnr_db", min_metric=40.0)) == "39.99996"
    assert _metric(float("inf"), target) == "inf"  # an fp32 reference's SQNR against itself


def test_a_search_that_ended_with_its_answer_reads_done_whatever_jobs_of_it_failed() -> None:
    """The sweep's state is "failed" once any job failed (a method a runtime can't build for the model): the tune
    found its answer all the same, and says so."""
    from types import SimpleNamespace

    from farm.cli.tune_views import state_of

    def job(role: str, state: str, stage: str | None = None) -> Any:
        return SimpleNamespace(role=role, state=state, spec={"stage": stage} if stage else {})

    ended = [job("trial", "failed"), job("trial", "failed"), job("trial", "succeeded"),
             job("stage", "succeeded", "tune_answer")]  # fmt: skip
    assert state_of("failed", ended) == "done (2 job(s) failed)"
    assert state_of("failed", ended[:3]) == "failed"  # its answer stage never ran
    assert state_of("failed", [job("trial", "failed"), ended[3]]) == "failed"  # nothing succeeded
    assert state_of("running", ended) == "running"


def test_a_search_under_way_reads_still_searching_not_failed_or_missed(capsys: pytest.CaptureFixture[str]) -> None:
    """`farm tune status` of a submitted tune whose jobs are pending: not "no recipe succeeded", not "no recipe
    meets" (nothing is final yet), exit 0; once done, a miss exits 1."""
    from types import SimpleNamespace

    from farm.cli.tune_views import finish
    from farm.jobs.tune_plan import TuneSettings

    settings = TuneSettings("sqnr_db", min_metric=40.0)
    pending = SimpleNamespace(done=False, chosen=None, met=False, shortfall=None, trail=[], stages={}, jobs=0)
    finish(7, pending, settings, as_json=False, wall_s=None)
    said = capsys.readouterr().err
    assert "still searching" in said and "no recipe" not in said
    best = {"recipe": "static int8", "job_id": 3, "fallback": [], "runtime": "torch", "sqnr_db": 38.0}
    best |= {"speedup": 2.0, "size_ratio": 0.3, "latency": None, "artifact_uri": None}
    closest = SimpleNamespace(**{**vars(pending), "chosen": best, "shortfall": 2.0, "fp32_faster": None})
    finish(7, closest, settings, as_json=True, wall_s=None)
    said = capsys.readouterr().err
    assert "the best so far: static int8 (job 3), short of the target by 2" in said and "no recipe meets" not in said
    with pytest.raises(SystemExit) as ended:
        finish(7, SimpleNamespace(**{**vars(closest), "done": True}), settings, as_json=True, wall_s=None)
    assert ended.value.code == 1 and "no recipe meets" in capsys.readouterr().err
    # A budget that may have cut the search short is named, never a silent "no recipe meets".
    budgeted = TuneSettings("sqnr_db", min_metric=40.0, budget_jobs=8)
    with pytest.raises(SystemExit):
        finish(7, SimpleNamespace(**{**vars(closest), "done": True, "jobs": 8}), budgeted, as_json=True, wall_s=None)
    assert "ran up to its budget (8 of --budget-jobs 8): a larger budget" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a budget the search stayed well within: not named
        finish(
            7,
            SimpleNamespace(**{**vars(closest), "done": True, "jobs": 18}),
            budgeted.__class__("sqnr_db", min_metric=40.0, budget_jobs=40),
            as_json=True,
            wall_s=None,
        )
    assert "budget" not in capsys.readouterr().err


def test_a_tune_spec_run_as_a_sweep_ends_with_its_answer(sweep_home: Path, tmp_path: Path) -> None:
    """`farm sweep run FILE` of a spec with a `tune:` section is the same search: it ends as `farm tune` does, with
    the answer or the shortfall (exit 1), not a sweep's "every job succeeded" (exit 0)."""
    spec = tmp_path / "tune.yaml"
    spec.write_text(
        "name: tune digits\nmodels: [farm:digits-cnn]\nmethods: [static]\nruntime: [torch]\n"
        "benchmark: {batch_size: [1], threads: 1, max_time_s: 0.2}\n"
        "tune: {metric: sqnr_db, min_metric: 100, budget_jobs: 5}\n"
    )
    result = farm("sweep", "run", str(spec), "-j", "2")
    assert result.exit_code == 1, describe(result)
    assert "no recipe meets sqnr_db >= 100" in result.stderr and "falls short by" in result.stderr


@pytest.mark.parametrize(
    ("model", "dataset", "message"),
    [
        ("file:/nonexistent/model.pt", "sklearn:digits", "model file /nonexistent/model.pt does not exist"),
        ("entrypoint:os:system", "sklearn:digits", "entrypoint 'os:system' is not allowed"),
        ("farm:digits-cnn", "imagefolder:/nonexistent", "imagefolder path /nonexistent does not exist"),
        ("file:/nonexistent/model.pt", None, "--dataset is required"),  # as farm quantize: no default guessed
    ],
)
def test_a_model_or_dataset_this_machine_cannot_load_is_refused_before_anything_is_written(
    sweep_home: Path, model: str, dataset: str | None, message: str
) -> None:
    data = ["--dataset", dataset] if dataset else []
    args = ["--method", "static", "--runtime", "torch", "--metric", "sqnr_db", "--min-metric", "30", "-j", "1"]
    result = farm("tune", "--model", model, *data, *args)
    assert result.exit_code == 2, describe(result)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sweep_count(sweep_home) == (0, 0)
