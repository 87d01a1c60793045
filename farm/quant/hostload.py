"""The host's load while a measurement runs: how busy the CPUs were outside this process.

A benchmark timed beside other work is slower and noisier; this figure, recorded with every latency entry
(``host_load``), lets a reader tell a quiet measurement from a crowded one. From /proc/stat (every CPU of the
host) less this process's own CPU time. Standard library only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

#: CPU seconds left to other processes below which a host load is not told: /proc/stat counts 10 ms ticks, so over
#: a 0.1 s timing on 2 CPUs a tick or two read as 30-45 % load on an idle host.
MIN_CAPACITY_S = 0.5
#: A host load above which a measurement was crowded: other processes kept a quarter of the CPU time the job left.
#: Its unstable figure's warning names them as the likely cause, and its p50 stays out of the host's drift history
#: (it measured the neighbours more than the host's own wander between runs).
BUSY_HOST = 0.25


def is_busy(load: object) -> bool:
    """Whether a :func:`host_load` figure (None: not told) is a busy host's: at least :data:`BUSY_HOST`."""
    return isinstance(load, int | float) and load >= BUSY_HOST


def crowded(entry: dict[str, object]) -> bool:
    """Whether a latency entry was timed on a busy host (its ``host_load``: :func:`is_busy`)."""
    return is_busy(entry.get("host_load"))


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds: busy and total over every CPU of the host (/proc/stat), and this process's own."""

    busy_s: float
    total_s: float
    own_s: float


def cpu_times() -> CpuTimes | None:
    """The host's CPU counters now, or None where /proc/stat does not exist."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = float(os.sysconf("SC_CLK_TCK"))
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return CpuTimes(busy / tick, (busy + idle) / tick, time.process_time())


def host_load(before: CpuTimes | None, after: CpuTimes | None) -> float | None:
    """Mean busy fraction of the host's CPU capacity left outside this process between two readings (0..1); None
    when that capacity is under :data:`MIN_CAPACITY_S` (a few clock ticks: their share is noise)."""
    if before is None or after is None:
        return None
    own = after.own_s - before.own_s
    capacity = (after.total_s - before.total_s) - own
    if capacity < MIN_CAPACITY_S:
        return None
    return round(min(1.0, max(0.0, (after.busy_s - before.busy_s - own) / capacity)), 3)


def busy_since() -> Callable[[], bool]:
    """A probe that tells whether the host has been busy (a :func:`host_load` of at least :data:`BUSY_HOST`) since it
    was made; False while too little time passed to tell, or where /proc/stat does not exist."""
    before = cpu_times()

    def busy() -> bool:
        return is_busy(host_load(before, cpu_times()))

    return busy
