"""``farm worker --concurrency N``: each Celery pool process pins itself to cores of its own when it starts
(worker_process_init), its pool index choosing its group first. Run in fresh interpreters: pinning is for life."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from farm.quant.isolation import LOCK_DIR_ENV
from farm.quant.pinning import allowed_cpus

ROOT = Path(__file__).resolve().parents[3]

POOL_PROCESS = """
import json, os, sys, weakref
from billiard.process import current_process
from celery.signals import worker_process_init

import workers.tasks as tasks

connected = [r() if isinstance(r, weakref.ReferenceType) else r for _, r in worker_process_init.receivers]
assert tasks._pin in connected, connected
current_process().index = int(sys.argv[1])  # as billiard numbers its pool processes
cores = tasks.pin()
print(json.dumps({"cores": cores, "affinity": sorted(os.sched_getaffinity(0))}), flush=True)
sys.stdin.readline()  # holds its cores until told
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pinning needs sched_setaffinity")
def test_pool_processes_take_their_index_s_cores_first_and_never_share(tmp_path: Path) -> None:
    allowed = allowed_cpus()
    if len(allowed) < 2:
        pytest.skip("needs two CPUs")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        LOCK_DIR_ENV: str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    procs, seen = [], []
    for index in (1, 1, 0):  # a replaced process reuses its predecessor's index while that one still runs
        proc = subprocess.Popen(
            [sys.executable, "-c", POOL_PROCESS, str(index)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        seen.append(json.loads(proc.stdout.readline()))
        procs.append(proc)
    for proc in procs:
        proc.communicate("\n")
        assert proc.returncode == 0
    first, second, third = seen
    assert first["cores"] == first["affinity"] == [allowed[1]]  # its index's group
    assert second["cores"] == second["affinity"] == [allowed[0]]  # group 1 taken: the next free one
    if len(allowed) == 2:
        assert third["cores"] is None and third["affinity"] == allowed  # none left: it shares, unpinned
    else:
        assert third["cores"] == [allowed[2]]
