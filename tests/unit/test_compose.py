"""docker-compose.yml must agree with the code: the commands it runs exist, and the environment it sets is
what the code reads. (No Docker engine runs here; this is what can be checked without one.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from farm.cli import cli

ROOT = Path(__file__).resolve().parents[2]
FARM_SERVICES = ("migrate", "cpu-worker", "gpu-worker", "flower")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


# Reads of the environment: os.environ.get("X"), os.environ["X"], os.getenv("X"), settings' _number("X", ...).
_READS = re.compile(r"""(?:environ\.get|environ\[|getenv|_number)\(?\s*["'](FARM_[A-Z0-9_]+)["']""")


def _names_read_by_code() -> set[str]:
    """Every FARM_* variable the code reads (calls that read the environment, not names in docstrings)."""
    names: set[str] = set()
    for path in [*(ROOT / "farm").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]:
        names |= set(_READS.findall(path.read_text()))
    return names


def _resolve(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR:-default} interpolation (nested defaults too) against ``env``."""
    pattern = re.compile(r"\$\{([A-Z0-9_]+):-((?:[^${}]|\$\{[^{}]*\})*)\}")
    while (m := pattern.search(value)) is not None:
        value = value[: m.start()] + (env.get(m.group(1)) or _resolve(m.group(2), env)) + value[m.end() :]
    return value


def test_the_names_read_by_code_are_found_by_their_reads() -> None:
    read = _names_read_by_code()
    assert {"FARM_BROKER_URL", "FARM_DATABASE_URL", "FARM_ARTIFACTS_URL", "FARM_HOME", "FARM_LEASE_S"} <= read
    assert "FARM_NOT_A_SETTING" not in read


def test_every_service_the_issue_names_is_there(compose: dict[str, Any]) -> None:
    services = set(compose["services"])
    assert {"redis", "postgres", "minio", "minio-init", "migrate", "cpu-worker", "gpu-worker", "flower"} <= services


def test_farm_commands_exist_and_parse(compose: dict[str, Any]) -> None:
    runner = CliRunner()
    for name in FARM_SERVICES:
        argv = _command(compose["services"][name])
        if argv[0] == "farm":
            # --help after the real arguments: click parses the options (unknown ones fail) and exits 0.
            result = runner.invoke(cli, [*argv[1:], "--help"])
            assert result.exit_code == 0, (name, result.output)
        else:
            assert argv[:3] == ["celery", "-A", "workers.app"], name
            import workers.app  # noqa: F401 - the app the celery command names must import


def test_the_worker_commands_plan_what_they_say(compose: dict[str, Any]) -> None:
    """`farm worker --queues cpu` in the compose file is a valid plan on a CPU machine."""
    from workers.runtime import plan

    argv = _command(compose["services"]["cpu-worker"])
    queues = argv[argv.index("--queues") + 1].split(",")
    children = plan(
        queues, {"cpus": 2, "isa": ["avx2"], "gpus": []}, concurrency=None, gpus=None, threads=1, loglevel="info"
    )
    assert [c.queues for c in children] == [["cpu"]]


def test_environment_names_match_the_settings(compose: dict[str, Any]) -> None:
    read = _names_read_by_code()
    for name in FARM_SERVICES:
        env = compose["services"][name]["environment"]
        farm_vars = {k for k in env if k.startswith("FARM_")}
        assert farm_vars <= read, (name, farm_vars - read)
        # What a worker needs to reach the farm, all set:
        assert {"FARM_BROKER_URL", "FARM_DATABASE_URL", "FARM_ARTIFACTS_URL"} <= farm_vars, name
        # S3 through the standard AWS chain: endpoint and credentials by their standard names.
        assert {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env), name


def test_urls_point_at_the_compose_services(compose: dict[str, Any]) -> None:
    env = {k: _resolve(v, {}) for k, v in compose["services"]["cpu-worker"]["environment"].items()}
    assert env["FARM_BROKER_URL"].startswith("redis://redis:6379")
    assert (
        env["FARM_DATABASE_URL"].startswith("postgresql+psycopg://farm:")
        and "@postgres:5432/farm" in env["FARM_DATABASE_URL"]
    )
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    bucket = env["FARM_ARTIFACTS_URL"].removeprefix("s3://").split("/")[0]
    init = compose["services"]["minio-init"]
    assert "mc mb" in " ".join(_command(init)) and bucket == init["environment"]["FARM_BUCKET"].split(":-")[1][:-1]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("quantfarm", "quantfarm-secret")


def test_a_worker_machine_points_the_services_elsewhere_through_its_environment(compose: dict[str, Any]) -> None:
    """README's several machines: the same compose file, the FARM_* / AWS_* of the services host."""
    host = {
        "FARM_BROKER_URL": "redis://services:6379/0",
        "FARM_DATABASE_URL": "postgresql+psycopg://farm@services/farm",
        "FARM_ARTIFACTS_URL": "s3://team-bucket/farm",
        "AWS_ENDPOINT_URL": "https://s3.example.com",
        "AWS_ACCESS_KEY_ID": "AKIA-TEAM",
        "AWS_SECRET_ACCESS_KEY": "team-secret",
    }
    for name in FARM_SERVICES:
        env = {k: _resolve(v, host) for k, v in compose["services"][name]["environment"].items()}
        assert {k: env[k] for k in host} == host, name


def test_migrate_is_one_shot_and_workers_wait_for_it(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert _command(services["migrate"]) == ["farm", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    for name in ("cpu-worker", "gpu-worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["minio-init"]["condition"] == "service_completed_successfully"


def test_cpu_worker_scales_and_gpu_worker_reserves_nvidia_devices(compose: dict[str, Any]) -> None:
    cpu = compose["services"]["cpu-worker"]
    assert "container_name" not in cpu and "ports" not in cpu  # both would break --scale
    gpu = compose["services"]["gpu-worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "--queues" in _command(gpu) and _command(gpu)[_command(gpu).index("--queues") + 1] == "gpu"


def test_images_build_from_the_dockerfile_in_the_repo(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name in FARM_SERVICES:
        build = compose["services"][name].get("build")
        assert build and build["context"] == "." and build["dockerfile"] == "Dockerfile", name
    copied = set(re.findall(r"^COPY (\S+)", dockerfile, flags=re.M))
    assert {"farm", "workers", "migrations"} <= copied  # the code, and the migrations the migrate service runs
    assert "pip install" in dockerfile
