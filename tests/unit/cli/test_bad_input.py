"""Hostile input to the CLI: one line naming the problem and the value, exit status 2, nothing written.

Each case printed a traceback before (issue 10, section 4): integers past what SQL stores, an unknown broker
transport, a calibration size of a trillion, an artifact store URL with ``..`` in it, queue names no worker
can serve.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import Result

from farm.errors import ConfigError
from farm.store.db import Database
from farm.store.migrate import ensure_schema
from tests.sweeps import TOY_DATA, TOY_MLP, describe, farm, sweep_count, write_spec

HUGE = str(2**70)  # 1180591620717411303424: past SQLite's INTEGER and PostgreSQL's bigint
SPEC = f"name: x\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\nmethods: [fp32, dynamic]\n"


def assert_one_line(result: Result, *fragments: str) -> str:
    """Exit 2, no traceback, nothing on stdout, one line on stderr holding every fragment."""
    assert result.exit_code == 2, describe(result)
    assert isinstance(result.exception, SystemExit), describe(result)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    for fragment in fragments:
        assert fragment in line, line
    return line


@pytest.fixture
def schema(sweep_home: Path) -> Path:
    """sweep_home with the schema made (so that an unbounded integer would reach SQL), and no sweep."""
    db = Database()
    ensure_schema(db)
    db.dispose()
    return sweep_home


@pytest.mark.parametrize(
    "args",
    [
        ("results", "query", "--limit", str(10**30)),
        ("results", "query", "--sweep", HUGE),
        ("results", "best", "--sweep", HUGE, "--max-accuracy-drop", "0.1"),
        ("results", "pareto", "--sweep", HUGE),
        ("results", "compare", "1", HUGE),
        ("sweep", "status", HUGE),
        ("sweep", "list", "--limit", HUGE),
        ("sweep", "cancel", HUGE),
        ("sweep", "retry", HUGE),
        ("sweep", "resume", HUGE),
        ("report", HUGE),
        ("worker", "--concurrency", HUGE, "--dry-run"),
    ],
    ids=lambda a: "-".join(a[:2]),
)
def test_an_integer_past_what_sql_stores_is_one_line(schema: Path, args: tuple[str, ...]) -> None:
    huge = next(a for a in args if len(a) > 20)
    assert_one_line(farm(*args), huge)
    assert sweep_count(schema) == (0, 0)


def test_the_jobs_option_is_bounded(sweep_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SPEC)
    assert_one_line(farm("sweep", "run", str(spec), "--jobs", HUGE), HUGE, "--jobs")
    assert not (sweep_home / "farm.db").exists()


def test_the_python_api_bounds_its_integers_too(schema: Path) -> None:
    pytest.importorskip("pandas")
    from farm.client import results

    with pytest.raises(ConfigError, match=str(10**30)):
        results(limit=10**30)
    with pytest.raises(ConfigError, match=HUGE):
        results(sweep=int(HUGE))


@pytest.mark.parametrize("command", [("sweep", "submit"), ("sweep", "retry"), ("sweep", "resume")])
def test_an_unknown_broker_transport_is_one_line_without_the_password(
    sweep_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, str]
) -> None:
    monkeypatch.setenv("FARM_BROKER_URL", "foo://farm:s3cret@bar/0")
    import workers.app

    # The app is made once per process, at import; a fresh `farm` process makes it from this environment.
    monkeypatch.setattr(workers.app, "app", workers.app.make_app())
    target = str(write_spec(tmp_path, SPEC)) if command[1] == "submit" else "1"
    result = farm(*command, target)
    line = assert_one_line(result, "FARM_BROKER_URL", "'foo'", "redis://")
    assert "s3cret" not in line
    assert not (sweep_home / "farm.db").exists()


def test_farm_worker_refuses_an_unknown_broker_transport(sweep_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_BROKER_URL", "foo://bar")
    assert_one_line(farm("worker", "--dry-run"), "'foo'")


@pytest.mark.parametrize("command", ["plan", "run", "submit"])
@pytest.mark.parametrize(
    "methods", ["[static]\ncalibration_size: 1000000000000", "[{static: {calibration_size: 1000000000000}}]"]
)
def test_a_calibration_size_of_a_trillion_is_refused(
    sweep_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, methods: str
) -> None:
    monkeypatch.setenv("FARM_BROKER_URL", "redis://127.0.0.1:1/0")  # never reached: the spec is refused first
    spec = write_spec(tmp_path, f"name: x\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\nmethods: {methods}\n")
    line = assert_one_line(farm("sweep", command, str(spec)), "calibration_size", "1000000000000", "10000000")
    assert line.startswith(f"Error: {spec}: ")
    assert sweep_count(sweep_home) == (0, 0)


def test_plan_refuses_a_calibration_size_past_the_datasets_split_as_quantize_does(
    sweep_home: Path, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    spec = write_spec(
        tmp_path,
        f"name: x\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\nmethods: [static]\ncalibration_size: [16, 1000]\n",
    )
    line = assert_one_line(farm("sweep", "plan", str(spec)), "calibration size 1000", "(32 samples)")
    assert "calibration size 16 " not in line
    ok = write_spec(
        tmp_path,
        f"name: x\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\nmethods: [static]\ncalibration_size: [16, 32]\n",
        "ok.yaml",
    )
    assert farm("sweep", "plan", str(ok)).exit_code == 0


BAD_ARTIFACT_URLS = [
    ("s3://bucket/../x", "'..'"),
    ("s3://bucket/a/./b", "'.'"),
    ("s3://bucket//x", "s3://bucket//x"),
    ("s3://bucket/a//b", "empty segment"),
    ("s3://Bad_Bucket/x", "'Bad_Bucket' is not a valid bucket name"),
    ("s3://192.168.0.1/x", "not a valid bucket name"),
    ("ftp://host/x", "'ftp'"),
]


@pytest.mark.parametrize(("url", "fragment"), BAD_ARTIFACT_URLS)
def test_sweep_run_refuses_a_bad_artifact_store_url_before_writing_anything(
    sweep_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, fragment: str
) -> None:
    monkeypatch.setenv("FARM_ARTIFACTS_URL", url)
    spec = write_spec(tmp_path, SPEC)
    line = assert_one_line(farm("sweep", "run", str(spec)), "FARM_ARTIFACTS_URL", fragment)
    assert line.startswith("Error: FARM_ARTIFACTS_URL: ")
    assert not (sweep_home / "farm.db").exists()


@pytest.mark.parametrize(("url", "fragment"), BAD_ARTIFACT_URLS[:3])
def test_farm_worker_refuses_a_bad_artifact_store_url_at_start_up(
    sweep_home: Path, monkeypatch: pytest.MonkeyPatch, url: str, fragment: str
) -> None:
    monkeypatch.setenv("FARM_ARTIFACTS_URL", url)
    assert_one_line(farm("worker", "--dry-run"), "FARM_ARTIFACTS_URL", fragment)


def test_an_s3_url_with_credentials_is_refused_without_echoing_them(
    sweep_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FARM_ARTIFACTS_URL", "s3://key:s3cret@bucket/x")
    line = assert_one_line(farm("sweep", "run", str(write_spec(tmp_path, SPEC))), "credentials")
    assert "s3cret" not in line


@pytest.mark.parametrize("name", ["../x y", "a/b", "", "-cpu", "x" * 64, "cpu\nq", "é"])
@pytest.mark.parametrize("option", ["--cpu-queue", "--gpu-queue"])
def test_submit_refuses_a_queue_no_worker_could_serve(
    sweep_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str, name: str
) -> None:
    monkeypatch.setenv("FARM_BROKER_URL", "redis://127.0.0.1:1/0")  # never reached
    result = farm("sweep", "submit", str(write_spec(tmp_path, SPEC)), option, name)
    assert_one_line(result, option, "is not a queue name")
    assert not (sweep_home / "farm.db").exists()


@pytest.mark.parametrize("queues", ["../x y", "cpu,a/b", "cpu,-x"])
def test_farm_worker_refuses_a_bad_queue_name(sweep_home: Path, queues: str) -> None:
    bad = queues.split(",")[-1]
    assert_one_line(farm("worker", "--queues", queues, "--dry-run"), "--queues", repr(bad))


def test_good_queue_names_pass_the_one_rule() -> None:
    from farm.routing import Pools, check_queue_name

    for name in ("cpu", "gpu", "cpu-avx512", "gpu.a100_80g", "x" * 63, "9"):
        assert check_queue_name(name) == name
    with pytest.raises(ConfigError, match="'a b' is not a queue name"):
        Pools(cpu="a b")


def test_a_local_sweep_of_a_model_file_that_does_not_exist_is_refused_before_writing(
    sweep_home: Path, tmp_path: Path
) -> None:
    """Run here, a missing model file is bad input (one line, exit 2, nothing written), not a grid of failed jobs."""
    spec = write_spec(
        tmp_path, f"name: x\nmodels: ['{TOY_MLP}', 'file:/nonexistent/m.pt']\ndataset: '{TOY_DATA}'\nmethods: [fp32]\n"
    )
    assert_one_line(farm("sweep", "run", str(spec)), "model file /nonexistent/m.pt does not exist")
    assert sweep_count(sweep_home) == (0, 0)


def test_a_local_sweep_of_a_metric_function_outside_the_allowlist_is_refused_before_writing(
    sweep_home: Path, tmp_path: Path
) -> None:
    spec = write_spec(
        tmp_path,
        f"name: x\nmodels: ['{TOY_MLP}']\ndataset: '{TOY_DATA}'\nmethods: [fp32]\nmetric: 'entrypoint:os.path:join'\n",
    )
    assert_one_line(farm("sweep", "run", str(spec)), "entrypoint 'os.path:join' is not allowed")
    assert sweep_count(sweep_home) == (0, 0)
