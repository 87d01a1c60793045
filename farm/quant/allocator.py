"""The C allocator's settings, so that a model's timing does not depend on what its process allocated before.

glibc's malloc serves a request of 128 KiB or more with ``mmap`` and, each time such a block is freed, moves that
threshold up to the freed size (at most 32 MiB); it also hands the top of its heap back to the kernel whenever
more than twice the threshold lies free there. A model whose activations are megabytes (ResNet-18 at batch 8:
26 MB per early convolution output) then page-faults its buffers in afresh on some calls and not on others,
depending on the process's history. Measured on a 2-vCPU AMD EPYC (Zen 5) VM: a frozen ResNet-18, batch 8,
2 threads, ran at 104 ms in a fresh process and at 89 ms in one that had run other models first (171 ms with only
the trim threshold raised); the same fp32 program timed inside a job and re-timed after loading its artifact
differed by 15 %, and by more than its int8 trial (4x smaller activations), which inflated the speedup.

:func:`steady` fixes both thresholds (``mmap`` from 32 MiB, the largest glibc accepts on 64-bit; no trimming):
buffers below 32 MiB are reused from the heap and never handed back, so every call runs as it does in a long-lived
server (a single buffer above 32 MiB, e.g. ResNet-50's at batch 64, is still mapped afresh on every call, as in a
server). PyTorch's own CPU launcher (``torch.backends.xeon.run_cpu``) reaches the same state by preloading tcmalloc
or jemalloc; under such a preloaded allocator nothing is changed. The price: a process keeps its peak heap, which
:func:`release` gives back between jobs (before a job's peak memory is measured). ``FARM_MALLOC=default`` leaves
glibc's behaviour alone; either way :func:`label` says which, and every fingerprint records it beside the figures.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

#: Environment variable: ``default`` leaves the C allocator as it is (anything else, or unset: :func:`steady`).
MALLOC_ENV = "FARM_MALLOC"
#: glibc ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Requests from this size are mmapped: glibc's upper limit on 64-bit, so a batch's activations come from the heap.
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free heap kept before trimming: never trim (the largest value ``mallopt`` takes).
TRIM_THRESHOLD = 2**31 - 1
#: Allocators that replace glibc's malloc when preloaded (what ``torch.backends.xeon.run_cpu`` preloads).
PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")

_state: str | None = None


def steady() -> str:
    """Fix glibc's malloc thresholds for this process (once; later calls return the same label).

    Returns:
        :func:`label`'s value.
    """
    global _state
    if _state is not None:
        return _state
    preloaded = _preloaded()
    if os.environ.get(MALLOC_ENV, "").strip().lower() == "default":
        _state = "default"
    elif preloaded:
        _state = f"{preloaded} (preloaded)"
    elif platform.libc_ver()[0] != "glibc":
        _state = "default (not glibc)"
    else:
        _state = _set_glibc()
    return _state


def label() -> str:
    """What the allocator of this process runs with: ``glibc steady (mmap >= 32 MiB, no trim)``, ``default``,
    ``jemalloc (preloaded)``, ... A process that never called :func:`steady` reports ``default``."""
    return _state if _state is not None else "default"


def release() -> None:
    """Give the heap's free memory back to the kernel (glibc ``malloc_trim``; nothing elsewhere): between jobs,
    so that a job's peak memory is its own, not what an earlier job freed and a no-trim heap kept."""
    if platform.libc_ver()[0] != "glibc":
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # no malloc_trim in this libc
        pass


def _preloaded() -> str | None:
    """The allocator library that replaced glibc's malloc in this process (mapped into it), or None."""
    try:
        with open("/proc/self/maps") as maps:
            mapped = maps.read()
    except OSError:
        mapped = os.environ.get("LD_PRELOAD", "")
    return next((name for name in PRELOADED if f"lib{name}" in mapped), None)


def _set_glibc() -> str:
    try:
        libc = ctypes.CDLL(None)
        took = {
            "mmap >= 32 MiB": libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1,
            "no trim": libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1,
        }
    except (OSError, AttributeError) as exc:  # no mallopt in this libc
        log.warning("could not fix the C allocator's thresholds (%s): timings may depend on the process's history", exc)
        return "default (mallopt failed)"
    refused = [name for name, ok in took.items() if not ok]
    if refused:
        log.warning("glibc refused %s: timings may depend on the process's history", ", ".join(refused))
    kept = [name for name, ok in took.items() if ok]
    return f"glibc steady ({', '.join(kept)})" if kept else "default (mallopt refused)"
