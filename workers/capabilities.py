"""What this machine can serve: CUDA devices, quantized engines, ISA flags, deploy runtimes. Never initialises CUDA.

``farm worker`` forks Celery pool processes; a parent that had initialised CUDA would hand them a broken
context. GPUs are therefore listed with nvidia-smi, or through NVML (PYTORCH_NVML_BASED_CUDA_CHECK), never
through a CUDA call in this process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any


def gpus() -> list[dict[str, Any]]:
    """[{index, name}] of the CUDA devices, without initialising CUDA here."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout
            rows = [line.split(",", 1) for line in out.strip().splitlines() if line.strip()]
            return [{"index": int(i), "name": n.strip()} for i, n in rows]
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    try:
        import torch

        return [{"index": i, "name": "cuda"} for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch or no driver: no GPUs
        return []


def detect() -> dict[str, Any]:
    """The capabilities a worker advertises in the workers table."""
    from farm.quant.fingerprint import cpu_info

    model, isa = cpu_info()
    caps: dict[str, Any] = {
        "cpu_model": model,
        "isa": isa,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpus": gpus(),
    }
    try:
        import torch

        caps["torch"] = torch.__version__
        caps["quantized_engines"] = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    except ImportError:
        caps["torch"] = None
        caps["quantized_engines"] = []
    caps["runtimes"] = runtimes()
    return caps


def runtimes() -> list[str]:
    """The deploy runtimes this machine can serve: those whose packages are installed (found, not imported)."""
    from farm.runtimes.registry import RUNTIMES, unavailable

    return [name for name in RUNTIMES if unavailable(name) is None]


def has_isa(caps: dict[str, Any], feature: str) -> bool:
    """Whether any ISA flag starts with ``feature`` (avx512 matches avx512f, avx512_vnni, ...)."""
    return any(flag.startswith(feature) or (feature == "vnni" and "vnni" in flag) for flag in caps.get("isa", []))
