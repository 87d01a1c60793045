"""Pinning of pool processes to cores of their own (:mod:`farm.quant.isolation`'s first remedy): each claims
``threads`` cores with a file lock per core, held for the process's life, so claims are disjoint whichever executor
started the process; torch threads never exceed them (:func:`torch_threads`). Standard library only (torch is
imported inside :func:`torch_threads`, whose callers have it already).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from farm.quant.lockdir import lock_dir
from farm.quant.lockdir import open_lock as _open

log = logging.getLogger("farm.isolation")


@dataclass
class _Pinning:
    cores: tuple[int, ...] | None = None
    fds: tuple[int, ...] = ()


_pinning = _Pinning()


def allowed_cpus() -> list[int]:
    """The CPU ids this process may run on, sorted."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def claim_cores(
    threads: int, allowed: Sequence[int], *, prefer: int | None = None, directory: Path | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Claim ``threads`` cores of ``allowed`` for this process: group ``i`` is ``allowed[i*threads:(i+1)*threads]``.

    A core is claimed by holding a file lock on ``core-ID.lock`` (released by the kernel when the process ends,
    however it ends), so claims of all processes of this user on this host are disjoint.

    Args:
        prefer: the group to try first (a Celery pool process's index); then the others in order.

    Returns:
        (cores, open lock files to keep) or None when no group is free.
    """
    directory = directory or lock_dir()
    groups = [tuple(allowed[i : i + threads]) for i in range(0, len(allowed) - threads + 1, threads)]
    if prefer is not None and 0 <= prefer < len(groups):
        groups.insert(0, groups.pop(prefer))
    for group in groups:
        fds: list[int] = []
        for cpu in group:
            fd = _open(directory / f"core-{cpu}.lock")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                break
            fds.append(fd)
        if len(fds) == len(group):
            return group, tuple(fds)
        for fd in fds:
            os.close(fd)  # closing the last descriptor of an open file drops its lock
    return None


def oversubscribed(processes: int, threads: int) -> str | None:
    """What to say when ``processes`` x ``threads`` exceed the CPUs this process may use, or None."""
    cpus = len(allowed_cpus())
    if processes * threads <= cpus:
        return None
    return (
        f"{processes} processes x {threads} threads need {processes * threads} cores and {cpus} are available: "
        "processes that find no free cores share them (their latency figures record isolation none, or exclusive "
        "with no cores)"
    )


def pin_process(threads: int, *, prefer: int | None = None, directory: Path | None = None) -> tuple[int, ...] | None:
    """Pin this process (every thread of it) to ``threads`` cores of its own, for the rest of its life.

    Called once in a pool process, before it runs a job. torch threads are capped by :func:`cap_threads`.

    Returns:
        The cores, or None when none were free: the process shares them (its caller says so, once).
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    release_pinning()
    claimed = claim_cores(max(1, threads), allowed_cpus(), prefer=prefer, directory=directory)
    if claimed is None:
        log.debug("process %s: no %d free core(s) on this host: sharing them", os.getpid(), threads)
        return None
    cores, fds = claimed
    for tid in _threads():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, cores)
    _pinning.cores, _pinning.fds = cores, fds
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(len(cores))
    return cores


@contextlib.contextmanager
def pinned_for(threads: int, *, directory: Path | None = None) -> Iterator[tuple[int, ...] | None]:
    """Pin this process to ``threads`` cores of its own for the block only (``farm quantize``: one trial, in a
    process that outlives it); its affinity is restored after. A process already pinned stays as it is."""
    if _pinning.cores is not None or not hasattr(os, "sched_setaffinity"):
        yield _pinning.cores
        return
    previous = os.sched_getaffinity(0)
    env = {var: os.environ.get(var) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cores = pin_process(threads, directory=directory)
    try:
        yield cores
    finally:
        if cores is not None:
            release_pinning()
            for tid in _threads():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(tid, previous)
            for var, value in env.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value


def _threads() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def release_pinning() -> None:
    """Give the claimed cores back (affinity is left as it is: for tests and a process that re-pins)."""
    for fd in _pinning.fds:
        os.close(fd)
    _pinning.cores, _pinning.fds = None, ()


def pinned_cores() -> tuple[int, ...] | None:
    """The cores this process is pinned to, or None."""
    return _pinning.cores


def cap_threads(threads: int) -> int:
    """``threads``, but never more than the cores this process is pinned to."""
    return min(threads, len(_pinning.cores)) if _pinning.cores else threads


def applied(requested: str) -> str:
    """The isolation a measurement really had: exclusive (the lock), pinned (own cores, the lock held shared), or
    none (no cores of its own: a pinned request that found none still held the lock shared)."""
    if requested == "exclusive":
        return "exclusive"
    return "pinned" if _pinning.cores else "none"


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads (None: leave as is)."""
    if n is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(cap_threads(n))  # never more than the cores this process is pinned to
    try:
        yield
    finally:
        torch.set_num_threads(previous)
