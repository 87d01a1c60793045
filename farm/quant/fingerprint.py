"""A fingerprint of the machine a figure was measured on: int8 speed depends on kernels and ISA."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

# ISA features that decide which int8 / bf16 kernels run.
ISA_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
    "asimd",
    "asimddp",
    "sve",
    "i8mm",
    "bf16",
)


def cpu_info() -> tuple[str, list[str]]:
    """(CPU model name, the ISA flags of :data:`ISA_FLAGS` it has)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and value.strip():
            model = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
    return model, [f for f in ISA_FLAGS if f in flags]


def fingerprint(device: str = "cpu") -> dict[str, Any]:
    """Describe this machine: CPU model and ISA flags, cores, memory, GPU, torch and its quantized engines.

    Queries CUDA only when ``device`` is a CUDA device, so a process that forks workers never
    initialises CUDA through this function.
    """
    import torch

    from farm.quant.allocator import label

    model, flags = cpu_info()
    fp: dict[str, Any] = {
        "cpu_model": model,
        "isa": flags,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "machine": platform.machine(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "quantized_engines": [e for e in torch.backends.quantized.supported_engines if e != "none"],
        "gpu": None,
        # Context for the timings: PyTorch's OpenMP threads busy-wait unless told PASSIVE, which slows them
        # badly when other work shares the CPUs; the load average says whether it did.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        # glibc's malloc thresholds move with a process's history unless fixed (farm.quant.allocator): a batch's
        # buffers then page-fault in afresh on some calls, 15 % on a ResNet-18's fp32 side.
        "allocator": label(),
    }
    fp["torchvision"] = torchvision_version()
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        fp["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_bytes": props.total_memory,
            "cuda": torch.version.cuda,
        }
    return fp


def torchvision_version() -> str | None:
    """torchvision's ``__version__`` (``0.29.1+cu130``: the build's CUDA label too), without importing torchvision
    where this process has not: its import pulls in torch._dynamo, 1.4 s of every job's first fingerprint (and of a
    tune's fp32 reference, which every other job waited for). None when it is not installed."""
    import sys

    loaded = sys.modules.get("torchvision")
    if loaded is not None:
        return str(getattr(loaded, "__version__", None) or "") or None
    import importlib.metadata
    import importlib.util
    import re

    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        return None
    for where in spec.submodule_search_locations or ():
        try:
            text = (Path(where) / "version.py").read_text()
        except OSError:
            continue
        found = re.search(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", text, re.MULTILINE)
        if found:
            return found.group(1)
    try:
        return importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        return None


def hardware_label(fp: dict[str, Any]) -> str:
    """A short, human label such as ``AMD EPYC [avx2 avx512_vnni] x2`` or ``NVIDIA H100 80GB HBM3``."""
    if fp.get("gpu"):
        return str(fp["gpu"]["name"])
    key = [
        f for f in fp.get("isa", []) if f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "asimddp")
    ]
    return f"{fp.get('cpu_model', '?')} [{' '.join(key)}] x{fp.get('cpus_usable') or fp.get('cpus')}"


def hardware_id(fp: dict[str, Any]) -> str:
    """A stable short hash of the parts of the fingerprint that change kernel speed."""
    keep = {k: fp.get(k) for k in ("cpu_model", "isa", "cpus_usable", "machine", "gpu")}
    if keep["gpu"]:
        keep["gpu"] = {k: v for k, v in keep["gpu"].items() if k in ("name", "capability")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
