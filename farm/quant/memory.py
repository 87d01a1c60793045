"""Peak memory of a step: resident set size of this process, and CUDA memory when a GPU is used."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak() -> bool:
    """Reset this process's peak RSS (Linux: writing 5 to clear_refs), once the heap has given back what earlier
    jobs freed (:func:`farm.quant.allocator.release`: a steady allocator keeps it otherwise). False when not
    possible."""
    from farm.quant.allocator import release

    release()
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size since the last successful :func:`reset_peak` (or process start)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024
