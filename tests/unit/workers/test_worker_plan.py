"""workers.runtime.plan: the Celery workers ``farm worker`` runs on a machine, from faked capabilities.

Nothing here detects real hardware or initialises CUDA: capabilities are dicts shaped like
``workers.capabilities.detect()``'s, or the detector is monkeypatched; no Celery worker is started.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from farm.cli import cli
from farm.errors import ConfigError
from workers import capabilities
from workers.runtime import Child, plan

HOST = "testhost"


def caps(
    *, gpus: tuple[int, ...] = (0, 1), isa: tuple[str, ...] = ("avx", "avx2", "avx512f", "avx512_vnni"), cpus: int = 8
) -> dict[str, Any]:
    return {
        "cpu_model": "Test CPU 9000",
        "isa": list(isa),
        "cpus": cpus,
        "gpus": [{"index": i, "name": f"Test GPU {i}"} for i in gpus],
        "torch": "2.x",
        "quantized_engines": ["x86", "onednn"],
        "runtimes": ["torch", "onnxruntime", "tensorrt"],
    }


def make(
    queues: list[str],
    machine: dict[str, Any] | None = None,
    *,
    concurrency: int | None = None,
    gpus: list[int] | None = None,
    threads: int = 1,
) -> list[Child]:
    return plan(
        queues,
        caps() if machine is None else machine,
        concurrency=concurrency,
        gpus=gpus,
        threads=threads,
        loglevel="warning",
    )


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.fixture(autouse=True)
def _fixed_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("workers.runtime.socket.gethostname", lambda: HOST)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)


# --- one process per GPU ----------------------------------------------------------------------------------


def test_one_worker_per_gpu_each_seeing_only_its_own() -> None:
    children = make(["gpu"])
    assert [c.name for c in children] == [f"gpu0@{HOST}", f"gpu1@{HOST}"]
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in children] == ["0", "1"]
    for child in children:
        assert child.queues == ["gpu"] and child.concurrency == 1
        assert child.env["FARM_WORKER_QUEUES"] == "gpu"
        assert option(child.args, "-Q") == "gpu"
        assert option(child.args, "-c") == "1"
        assert option(child.args, "-n") == child.name
        assert option(child.args, "-P") == "prefork"
        assert option(child.args, "--loglevel") == "warning"
        assert child.args[:3] == [sys.executable, "-m", "celery"]
        assert option(child.args, "-A") == "workers.app"


def test_gpus_picks_the_devices_served() -> None:
    children = make(["gpu"], gpus=[1])
    assert [(c.name, c.env["CUDA_VISIBLE_DEVICES"]) for c in children] == [(f"gpu1@{HOST}", "1")]


def test_cpu_and_gpu_queues_split_into_a_cpu_worker_and_one_per_gpu() -> None:
    children = make(["cpu", "gpu", "cpu-avx512", "gpu-a100"], caps(cpus=8), threads=2)
    cpu, *gpu = children
    assert cpu.name == f"cpu@{HOST}" and cpu.queues == ["cpu", "cpu-avx512"]
    assert cpu.env["CUDA_VISIBLE_DEVICES"] == ""  # the CPU pool never touches a GPU
    assert option(cpu.args, "-Q") == "cpu,cpu-avx512"
    assert cpu.concurrency == 4  # 8 cores / 2 threads per process
    assert [(c.queues, c.env["CUDA_VISIBLE_DEVICES"]) for c in gpu] == [
        (["gpu", "gpu-a100"], "0"),
        (["gpu", "gpu-a100"], "1"),
    ]
    assert all(c.env["FARM_WORKER_QUEUES"] == "gpu,gpu-a100" for c in gpu)


def test_a_cpu_only_plan_runs_no_gpu_worker_even_on_a_gpu_machine() -> None:
    children = make(["cpu"])
    assert [c.name for c in children] == [f"cpu@{HOST}"]
    assert children[0].env["CUDA_VISIBLE_DEVICES"] == ""


# --- threads and concurrency ------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 3])
def test_torch_threads_per_process_are_set_in_every_worker(threads: int) -> None:
    for child in make(["cpu", "gpu"], threads=threads):
        # torch sizes its intra-op pool from these at import, in each pool process.
        assert child.env["OMP_NUM_THREADS"] == str(threads), child.name
        assert child.env["MKL_NUM_THREADS"] == str(threads), child.name
        assert child.env["OMP_WAIT_POLICY"] == "PASSIVE"


def test_an_omp_wait_policy_of_the_operator_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert {c.env["OMP_WAIT_POLICY"] for c in make(["cpu", "gpu"])} == {"ACTIVE"}


@pytest.mark.parametrize(("cpus", "threads", "processes"), [(8, 1, 8), (8, 3, 2), (2, 4, 1), (1, 1, 1)])
def test_cpu_concurrency_defaults_to_cores_over_threads(cpus: int, threads: int, processes: int) -> None:
    (cpu,) = make(["cpu"], caps(cpus=cpus), threads=threads)
    assert cpu.concurrency == processes
    assert option(cpu.args, "-c") == str(processes)


def test_an_explicit_concurrency_wins_for_the_cpu_pool_only() -> None:
    cpu, *gpu = make(["cpu", "gpu"], concurrency=3, threads=2)
    assert cpu.concurrency == 3
    assert [c.concurrency for c in gpu] == [1, 1]  # a GPU is served by one process


def test_the_capabilities_travel_to_the_workers_for_their_heartbeat() -> None:
    machine = caps()
    for child in make(["cpu", "gpu"], machine):
        assert json.loads(child.env["FARM_WORKER_CAPABILITIES"]) == machine


# --- queues the machine can't serve -----------------------------------------------------------------------


def refused(queues: list[str], machine: dict[str, Any] | None = None, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as e:
        make(queues, machine, **kwargs)
    return str(e.value)


def test_gpus_naming_a_gpu_that_isnt_there_is_refused() -> None:
    message = refused(["gpu"], gpus=[0, 2])
    assert "--gpus" in message and "no GPU 2" in message and "[0, 1]" in message


def test_gpus_without_a_gpu_queue_is_refused() -> None:
    message = refused(["cpu"], gpus=[0])
    assert "--gpus" in message and "no gpu queue" in message


@pytest.mark.parametrize("queue", ["gpu", "gpu-a100"])
def test_a_gpu_queue_on_a_machine_without_cuda_is_refused(queue: str) -> None:
    message = refused(["cpu", queue], caps(gpus=()))
    assert f"queue {queue} needs CUDA" in message and "no CUDA device" in message


def test_gpus_on_a_machine_without_cuda_names_the_missing_cuda() -> None:
    assert "needs CUDA" in refused(["gpu"], caps(gpus=()), gpus=[0])


@pytest.mark.parametrize("queue", ["cpu-avx512", "cpu-avx512_vnni", "cpu-amx"])
def test_an_isa_pool_on_a_cpu_without_that_isa_is_refused(queue: str) -> None:
    message = refused(["cpu", queue], caps(isa=("avx", "avx2", "fma")))
    feature = queue.removeprefix("cpu-")
    assert f"queue {queue} needs a CPU with {feature}" in message
    assert "Test CPU 9000" in message and "avx2" in message  # what this CPU has instead


@pytest.mark.parametrize(
    ("queue", "isa"),
    [("cpu-avx512", ("avx512f",)), ("cpu-avx512_vnni", ("avx512f", "avx512_vnni")), ("cpu-amx", ("amx_int8",))],
)
def test_an_isa_pool_on_a_cpu_with_that_isa_is_served(queue: str, isa: tuple[str, ...]) -> None:
    (cpu,) = make([queue], caps(isa=isa))
    assert cpu.queues == [queue]


def test_a_pool_named_by_the_team_needs_no_isa() -> None:
    (cpu,) = make(["cpu-big"], caps(isa=()))
    assert cpu.queues == ["cpu-big"]


def test_no_queue_is_refused() -> None:
    assert "--queues" in refused([])


def test_a_gpu_named_twice_is_served_once() -> None:
    children = make(["gpu"], gpus=[0, 0])
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in children] == ["0"]


# --- capabilities: detected without initialising CUDA -----------------------------------------------------


def test_gpus_are_listed_by_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="0, NVIDIA H200\n1, NVIDIA H200\n\n", stderr="")

    monkeypatch.setattr(capabilities.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(capabilities.subprocess, "run", fake_run)
    assert capabilities.gpus() == [{"index": 0, "name": "NVIDIA H200"}, {"index": 1, "name": "NVIDIA H200"}]
    assert calls and calls[0][0] == "nvidia-smi"


def test_detected_gpus_feed_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "gpus", lambda: [{"index": 0, "name": "a"}, {"index": 1, "name": "b"}])
    detected = capabilities.detect()
    assert [g["index"] for g in detected["gpus"]] == [0, 1]
    assert isinstance(detected["isa"], list) and detected["cpus"] >= 1
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in make(["gpu"], detected)] == ["0", "1"]


@pytest.mark.parametrize(
    ("feature", "isa", "has"),
    [
        ("avx512", ["avx2", "avx512f"], True),
        ("avx512", ["avx", "avx2"], False),
        ("vnni", ["avx_vnni"], True),
        ("vnni", ["avx512_vnni"], True),
        ("amx", ["amx_tile", "amx_int8"], True),
        ("avx512_bf16", ["avx512f", "avx512_vnni"], False),
    ],
)
def test_has_isa(feature: str, isa: list[str], has: bool) -> None:
    assert capabilities.has_isa({"isa": isa}, feature) is has


def test_the_plan_imports_neither_torch_nor_celery(subprocess_env: dict[str, str]) -> None:
    # The parent forks the workers' pools: a torch (let alone CUDA) loaded here would be inherited.
    code = (
        "import sys\n"
        "from workers.runtime import plan\n"
        f"children = plan(['cpu', 'gpu'], {caps()!r}, concurrency=None, gpus=None, threads=1, loglevel='info')\n"
        "assert len(children) == 3, children\n"
        "print(sorted(m for m in ('torch', 'celery') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- `farm worker --dry-run` ------------------------------------------------------------------------------


def worker_cli(monkeypatch: pytest.MonkeyPatch, machine: dict[str, Any], *args: str) -> Any:
    monkeypatch.setattr(capabilities, "detect", lambda: machine)
    return CliRunner().invoke(cli, ["worker", "--dry-run", *args])


def test_farm_worker_dry_run_prints_one_process_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    result = worker_cli(monkeypatch, caps(), "--queues", "cpu,gpu", "--concurrency", "2")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"cpu@{HOST}: queues cpu, 2 process(es), GPU none, runtimes torch,onnxruntime",  # tensorrt: CUDA only
        f"gpu0@{HOST}: queues gpu, 1 process(es), GPU 0, runtimes torch,onnxruntime,tensorrt",
        f"gpu1@{HOST}: queues gpu, 1 process(es), GPU 1, runtimes torch,onnxruntime,tensorrt",
    ]


@pytest.mark.parametrize(
    ("machine", "args", "fragment"),
    [
        (caps(gpus=()), ["--queues", "gpu"], "queue gpu needs CUDA"),
        (caps(), ["--queues", "gpu", "--gpus", "0,7"], "no GPU 7"),
        (caps(), ["--queues", "cpu", "--gpus", "0"], "no gpu queue"),
        (caps(), ["--queues", "gpu", "--gpus", "zero"], "expected comma-separated GPU indices"),
        (caps(isa=("avx2",)), ["--queues", "cpu-avx512"], "needs a CPU with avx512"),
    ],
)
def test_farm_worker_refuses_with_one_line_and_status_2(
    monkeypatch: pytest.MonkeyPatch, machine: dict[str, Any], args: list[str], fragment: str
) -> None:
    result = worker_cli(monkeypatch, machine, *args)
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert "Traceback" not in result.output
