"""farm.routing: which queue (and stage) a job goes to, from its method and device; pure, no torch or Celery.

Also the same routes through a real spec expansion (what ``farm sweep submit`` routes), and the CUDA / ISA
requirements a queue name carries (what ``farm worker`` checks before it serves a queue).
"""

from __future__ import annotations

import pytest

from farm.quant.config import MethodConfig, parse_method
from farm.routing import Pools, Route, required_isa, requires_cuda, route
from farm.spec.load import load_spec

AVX512 = Pools(cpu="cpu-avx512", gpu="gpu-a100")


def qat(device: str) -> MethodConfig:
    return parse_method("qat", {"device": device, "steps": 1})


# --- route ------------------------------------------------------------------------------------------------


def test_fp16_goes_to_the_gpu_queue() -> None:
    assert route(parse_method("fp16", {}), "cuda") == Route("gpu", "all", None)


@pytest.mark.parametrize("method", ["fp32", "bf16", "fp16"])
def test_a_cuda_benchmark_goes_to_the_gpu_queue(method: str) -> None:
    assert route(parse_method(method, {}), "cuda") == Route("gpu")
    assert route(parse_method(method, {}), "cuda:1").queue == "gpu"


@pytest.mark.parametrize("method", ["fp32", "bf16"])
def test_a_cpu_benchmark_of_a_float_method_goes_to_the_cpu_queue(method: str) -> None:
    assert route(parse_method(method, {}), "cpu") == Route("cpu")


@pytest.mark.parametrize(
    ("method", "params"),
    [("static", {}), ("static", {"granularity": "per_tensor", "bits": 4}), ("dynamic", {})],
)
def test_int8_kernels_on_the_cpu_go_to_the_cpu_queue(method: str, params: dict[str, object]) -> None:
    r = route(parse_method(method, params), "cpu")
    assert r == Route("cpu", "all", None)


def test_qat_fine_tuned_on_cuda_trains_on_the_gpu_and_finishes_on_the_cpu() -> None:
    r = route(qat("cuda"), "cpu")
    assert (r.queue, r.stage, r.finish_queue) == ("gpu", "train", "cpu")


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_qat_not_asked_for_cuda_is_one_cpu_job(device: str) -> None:
    # "auto" fine-tunes on CUDA only where a worker has it; routing cannot know, so it stays on the CPU pool.
    assert route(qat(device), "cpu") == Route("cpu", "all", None)


def test_named_pools_are_respected() -> None:
    assert route(parse_method("dynamic", {}), "cpu", AVX512) == Route("cpu-avx512")
    assert route(parse_method("static", {}), "cpu", AVX512) == Route("cpu-avx512")
    assert route(parse_method("fp16", {}), "cuda", AVX512) == Route("gpu-a100")
    assert route(qat("cuda"), "cpu", AVX512) == Route("gpu-a100", "train", "cpu-avx512")
    assert route(qat("cpu"), "cpu", AVX512) == Route("cpu-avx512")


def test_only_the_qat_chain_has_a_finish_queue() -> None:
    configs = [parse_method(m, {}) for m in ("fp32", "fp16", "bf16", "dynamic", "static")] + [qat("cpu")]
    for cfg in configs:
        for device in ("cpu", "cuda"):
            r = route(cfg, device)
            assert (r.stage, r.finish_queue) == ("all", None), (cfg.method, device)


# --- routes of an expanded spec (what `farm sweep submit` sends) ------------------------------------------

SPEC = """\
name: routes
models: [farm:digits-cnn]
methods:
  - fp16
  - dynamic
  - static
  - qat: {device: cuda, steps: 2}
  - qat: {device: cpu, steps: 2}
"""


def routes_of(pools: Pools | None = None) -> dict[tuple[str, str, str, str], Route]:
    """(role, method, qat's train device or "-", benchmark device) -> route, for every job of SPEC."""
    out = {}
    for job in load_spec(SPEC, pools=pools).jobs:
        train = getattr(job.method, "device", "-")
        out[(job.role, job.method.method, train, job.device)] = route(job.method, job.device, pools or Pools())
    return out


def test_a_spec_routes_fp16_and_its_reference_to_the_gpu_and_int8_to_the_cpu() -> None:
    assert routes_of() == {
        ("reference", "fp32", "-", "cuda"): Route("gpu"),  # fp16's reference is timed on CUDA too
        ("trial", "fp16", "-", "cuda"): Route("gpu"),
        ("reference", "fp32", "-", "cpu"): Route("cpu"),
        ("trial", "dynamic", "-", "cpu"): Route("cpu"),
        ("trial", "static", "-", "cpu"): Route("cpu"),
        ("trial", "qat", "cuda", "cpu"): Route("gpu", "train", "cpu"),
        ("trial", "qat", "cpu", "cpu"): Route("cpu"),
    }


def test_a_spec_routes_to_the_named_pools_it_was_expanded_for() -> None:
    assert routes_of(AVX512) == {
        ("reference", "fp32", "-", "cuda"): Route("gpu-a100"),
        ("trial", "fp16", "-", "cuda"): Route("gpu-a100"),
        ("reference", "fp32", "-", "cpu"): Route("cpu-avx512"),
        ("trial", "dynamic", "-", "cpu"): Route("cpu-avx512"),
        ("trial", "static", "-", "cpu"): Route("cpu-avx512"),
        ("trial", "qat", "cuda", "cpu"): Route("gpu-a100", "train", "cpu-avx512"),
        ("trial", "qat", "cpu", "cpu"): Route("cpu-avx512"),
    }


def test_a_spec_has_one_reference_per_device_each_routed_where_it_is_timed() -> None:
    plan = load_spec(SPEC)
    refs = sorted((j.device, route(j.method, j.device).queue) for j in plan.references)
    assert refs == [("cpu", "cpu"), ("cuda", "gpu")]
    for job in plan.jobs:
        measured_on = route(job.method, job.device)
        measured = measured_on.finish_queue or measured_on.queue
        assert measured == ("gpu" if job.device.startswith("cuda") else "cpu"), job.method.label()


def test_a_named_pool_is_part_of_the_job_that_it_measures() -> None:
    default = {j.key: j for j in load_spec(SPEC).jobs}
    named = load_spec(SPEC, pools=AVX512)
    assert not set(default) & {j.key for j in named.jobs}  # timings belong to the hardware: other jobs
    pools = {(j.role, j.method.method, getattr(j.method, "device", "-"), j.device): j.spec.pool for j in named.jobs}
    assert pools == {
        ("reference", "fp32", "-", "cuda"): "gpu-a100",
        ("trial", "fp16", "-", "cuda"): "gpu-a100",
        ("reference", "fp32", "-", "cpu"): "cpu-avx512",
        ("trial", "dynamic", "-", "cpu"): "cpu-avx512",
        ("trial", "static", "-", "cpu"): "cpu-avx512",
        ("trial", "qat", "cuda", "cpu"): "cpu-avx512",  # trained on the GPU pool, measured on the CPU pool
        ("trial", "qat", "cpu", "cpu"): "cpu-avx512",
    }


def test_default_pools_leave_the_jobs_as_a_local_run_has_them() -> None:
    assert {j.key for j in load_spec(SPEC).jobs} == {j.key for j in load_spec(SPEC, pools=Pools()).jobs}
    assert all(j.spec.pool is None for j in load_spec(SPEC, pools=Pools()).jobs)


# --- what a queue name asks of a worker -------------------------------------------------------------------


@pytest.mark.parametrize(("queue", "cuda"), [("gpu", True), ("gpu-a100", True), ("cpu", False), ("gpus", False)])
def test_requires_cuda(queue: str, cuda: bool) -> None:
    assert requires_cuda(queue) is cuda


@pytest.mark.parametrize(
    ("queue", "feature"),
    [
        ("cpu", None),
        ("cpu-avx512", "avx512"),
        ("cpu-avx512_vnni", "avx512_vnni"),
        ("cpu-amx", "amx"),
        ("cpu-avx2", "avx2"),
        ("cpu-big", None),  # a team's own pool name, not an ISA feature
        ("gpu-avx512", None),
    ],
)
def test_required_isa(queue: str, feature: str | None) -> None:
    assert required_isa(queue) == feature
