"""Session-wide test setup: a private FARM_HOME, the toy-model allowlist, the gpu marker, and shared trials.

FARM_HOME points at a temporary directory for the whole session, set before anything builds the digits
models, so they train once per session into that directory and no test reads or writes ~/.farm.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TOYS_MODULE = "tests.toys"


@pytest.fixture(scope="session", autouse=True)
def farm_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """FARM_HOME for the whole session (digits models train once, into it)."""
    home = tmp_path_factory.mktemp("farm-home")
    previous = os.environ.get("FARM_HOME")
    os.environ["FARM_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("FARM_HOME", None)
    else:
        os.environ["FARM_HOME"] = previous


@pytest.fixture(scope="session")
def drift_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("drift")


@pytest.fixture(autouse=True)
def drift_history(drift_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own host drift history (farm.quant.drift, FARM_DRIFT_FILE): a job's p50 interval never depends
    on which tests ran before it, and the host's real history is left alone."""
    path = drift_dir / f"{uuid.uuid4().hex}.jsonl"
    monkeypatch.setenv("FARM_DRIFT_FILE", str(path))
    return path


def pytest_configure(config: pytest.Config) -> None:
    """OpenVINO's and NNCF's usage telemetry declined in the test process (farm.runtimes.vendor_telemetry), as in
    QuantFarm's own: some tests import openvino or nncf directly, and each import sends an event and writes a client
    id under ~/intel on a developer's machine (CI=true declines it anyway)."""
    from farm.runtimes.vendor_telemetry import decline

    decline()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run the tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``slow`` tests unless CI=true or --runslow; skip ``gpu``-marked tests on a machine without CUDA."""
    if not (config.getoption("--runslow") or os.environ.get("CI") == "true"):
        skip_slow = pytest.mark.skip(reason="slow: runs under CI=true or with --runslow")
        for item in items:
            if item.get_closest_marker("slow"):
                item.add_marker(skip_slow)
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch.cuda.is_available() is False")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture
def allow_toys(monkeypatch: pytest.MonkeyPatch) -> str:
    """Let ``entrypoint:tests.toys:...`` references load (FARM_ALLOWED_MODULES=tests.toys)."""
    monkeypatch.setenv("FARM_ALLOWED_MODULES", TOYS_MODULE)
    return TOYS_MODULE


@pytest.fixture
def subprocess_env(farm_home: Path) -> dict[str, str]:
    """Environment for a fresh interpreter: the repo importable, the session's FARM_HOME, toys allowed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["FARM_HOME"] = str(farm_home)
    env["FARM_ALLOWED_MODULES"] = TOYS_MODULE
    env.pop("COLUMNS", None)
    return env


@pytest.fixture
def sweep_home(farm_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A FARM_HOME of the test's own: a fresh database and artifact store, toys allowed.

    Its ``cache/zoo`` is the session's, so the built-in digits models train at most once per session;
    the rest of its cache (fp32 references fetched by workers) is its own. FARM_DATABASE_URL and
    FARM_ARTIFACTS_URL are unset: the defaults under the new home apply.
    """
    home = tmp_path / "home"
    shared_zoo = farm_home / "cache" / "zoo"
    shared_zoo.mkdir(parents=True, exist_ok=True)
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "zoo").symlink_to(shared_zoo, target_is_directory=True)
    monkeypatch.setenv("FARM_HOME", str(home))
    monkeypatch.delenv("FARM_DATABASE_URL", raising=False)
    monkeypatch.delenv("FARM_ARTIFACTS_URL", raising=False)
    monkeypatch.setenv("FARM_ALLOWED_MODULES", TOYS_MODULE)
    return home


def fast_benchmark(*batch_sizes: int) -> Any:
    """A benchmark config short enough for unit tests."""
    from farm.quant.bench_config import BenchmarkConfig

    return BenchmarkConfig(batch_sizes=batch_sizes or (1,), warmup_s=0.0, max_time_s=0.2, min_reps=5)


@pytest.fixture(scope="session")
def run_trial(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """``run_trial(model, dataset, method, reference=None, seed=0, **params)`` -> (JobResult, artifact dir).

    Runs :func:`farm.jobs.steps.run_job` with a short benchmark, each trial in a fresh directory. Entrypoint
    references to the toys are allowed for the duration of the call.
    """
    from farm.jobs.contract import JobSpec
    from farm.jobs.steps import run_job
    from farm.quant.config import parse_method

    def run(model: str, dataset: str, method: str, *, reference: Any = None, seed: int = 0, **params: Any) -> Any:
        out = tmp_path_factory.mktemp(f"trial-{method}") / "artifact"
        spec = JobSpec(model, dataset, parse_method(method, params), seed=seed, benchmark=fast_benchmark())
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FARM_ALLOWED_MODULES", TOYS_MODULE)
            return run_job(spec, out, reference=reference), out

    return run


@pytest.fixture(scope="session")
def reference_for(run_trial: Callable[..., Any]) -> Callable[[str, str], Any]:
    """``reference_for(model, dataset)``: the fp32 reference of that pair, computed once per session.

    It comes from a real fp32 trial (which writes ``reference.pt``), loaded back with ``Reference.load``,
    so every trial that shares it is compared with the same fp32 outputs.
    """
    from farm.quant.reference import REFERENCE_FILE, Reference

    cache: dict[tuple[str, str], Any] = {}

    def get(model: str, dataset: str) -> Any:
        key = (model, dataset)
        if key not in cache:
            _, out = run_trial(model, dataset, "fp32")
            cache[key] = Reference.load(out / REFERENCE_FILE)
        return cache[key]

    return get
