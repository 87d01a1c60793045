"""The C allocator's thresholds are fixed for every job (farm.quant.allocator): a big buffer freed after one call
stays in the process for the next instead of page-faulting in afresh. Each case runs in a fresh interpreter, as
the thresholds are process state."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")

# Allocate, touch and free a 20 MB block (a batch's activation), then say how much of it the process still holds.
PROBE = """
import ctypes, json, os, sys
from farm.quant import allocator
label = allocator.steady() if sys.argv[1] == "steady" else allocator.label()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
size = 20 << 20
block = libc.malloc(size)
ctypes.memset(block, 1, size)
touched = rss()
libc.free(block)
from farm.quant.fingerprint import fingerprint
print(json.dumps({"label": label, "kept": touched - rss() < size // 2, "fingerprint": fingerprint()["allocator"]}))
"""


def _probe(mode: str, **env: str) -> dict[str, object]:
    base = {k: v for k, v in os.environ.items() if k not in ("FARM_MALLOC", "LD_PRELOAD")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env={**base, **env}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_steady_keeps_a_freed_batch_buffer_for_the_next_call_and_says_so() -> None:
    steady = _probe("steady")
    assert steady["kept"] is True
    assert steady["label"] == "glibc steady (mmap >= 32 MiB, no trim)" and steady["fingerprint"] == steady["label"]


def test_glibc_left_alone_hands_the_buffer_back_and_the_fingerprint_says_default() -> None:
    untouched = _probe("none")
    assert untouched["kept"] is False  # mmapped, then unmapped on free: the next call faults it in again
    assert untouched["label"] == untouched["fingerprint"] == "default"


def test_farm_malloc_default_opts_out() -> None:
    opted_out = _probe("steady", FARM_MALLOC="default")
    assert opted_out["kept"] is False and opted_out["label"] == "default"


def test_a_preloaded_allocator_is_left_alone_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.quant import allocator

    monkeypatch.delenv("FARM_MALLOC", raising=False)
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setattr(allocator, "_preloaded", lambda: "jemalloc")
    monkeypatch.setattr(allocator, "_set_glibc", lambda: pytest.fail("mallopt on a preloaded allocator"))
    assert allocator.steady() == allocator.label() == "jemalloc (preloaded)"


def test_release_gives_a_kept_buffer_back_before_a_jobs_peak_is_measured() -> None:
    code = PROBE.replace("libc.free(block)", "libc.free(block)\nallocator.release()")
    base = {k: v for k, v in os.environ.items() if k not in ("FARM_MALLOC", "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", code, "steady"], capture_output=True, text=True, check=True, env=base)
    assert json.loads(out.stdout.strip().splitlines()[-1])["kept"] is False
