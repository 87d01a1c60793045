"""Which queue a job goes to, from what it needs. Pure: the producer routes without torch or Celery.

- a job evaluated on CUDA (fp16, or fp methods with benchmark device cuda) goes to the GPU pool;
- a qat job asked to fine-tune on CUDA is a chain: "train" on the GPU pool, then "finish" (convert,
  evaluate, benchmark on int8 CPU kernels) on the CPU pool, the checkpoint passing through the artifact store;
- a job on a runtime that runs on CUDA only (tensorrt) goes to the GPU pool;
- everything else (int8 CPU kernels) goes to the CPU pool.
Pools default to the queues "cpu" and "gpu"; a team names its own (e.g. "cpu-avx512") at submit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from farm.errors import ConfigError
from farm.quant.config import MethodConfig
from farm.runtimes.registry import RUNTIMES

#: A queue (pool) name: what the producer sends to and a worker serves. Letters, digits, ".", "_" and "-",
#: starting with a letter or digit, at most 63 characters (the jobs table's queue column holds 64).
QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_queue_name(name: str, *, source: str | None = None) -> str:
    """Refuse a queue name that no worker could serve (spaces, slashes, "..", too long).

    Args:
        name: the queue name.
        source: the option it came from (``--cpu-queue``, ``--queues``), put in front of the message.

    Returns:
        The name.

    Raises:
        ConfigError: the name does not match :data:`QUEUE_NAME`.
    """
    if not isinstance(name, str) or not QUEUE_NAME.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a queue name: 1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
            source=source,
        )
    return name


@dataclass(frozen=True)
class Pools:
    cpu: str = "cpu"
    gpu: str = "gpu"

    def __post_init__(self) -> None:
        check_queue_name(self.cpu, source="cpu queue")
        check_queue_name(self.gpu, source="gpu queue")


@dataclass(frozen=True)
class Route:
    queue: str
    stage: str = "all"
    finish_queue: str | None = None


def route(config: MethodConfig, device: str, pools: Pools = Pools()) -> Route:  # noqa: B008 - frozen default
    """The queue (and stage) for a job with ``config`` evaluated on ``device``: a runtime that runs on CUDA only
    (tensorrt) goes to the GPU pool whatever the device says."""
    on_gpu = device.startswith("cuda") or _cuda_only(getattr(config, "runtime", "torch"))
    if config.method == "qat" and getattr(config, "device", "auto") == "cuda" and not on_gpu:
        return Route(pools.gpu, "train", pools.cpu)
    if on_gpu:
        return Route(pools.gpu)
    return Route(pools.cpu)


def requires_cuda(queue: str) -> bool:
    """Queues named gpu or gpu-* are served only by workers with CUDA."""
    return queue == "gpu" or queue.startswith("gpu-")


def required_isa(queue: str) -> str | None:
    """A CPU pool named after an ISA feature (cpu-avx512, cpu-amx, cpu-avx2) needs a CPU that has it."""
    if not queue.startswith("cpu-"):
        return None
    feature = queue[len("cpu-") :]
    return feature if feature in ("avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx", "vnni") else None


def _cuda_only(runtime: str) -> bool:
    spec = RUNTIMES.get(runtime)
    return spec is not None and "cpu" not in spec.devices
