"""A toy model whose loading waits for the test: the outage tests cut a service while a job is surely running.

Loaded by worker subprocesses as ``entrypoint:tests.integration.farm.outage_toys:gated_mlp`` (the module must be
listed in FARM_ALLOWED_MODULES). FARM_TEST_GATE names a directory: loading writes ``started`` there, then waits
(at most 120 s) until the test writes ``go``. The job's key does not depend on the gate.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from torch import nn

GATE_ENV = "FARM_TEST_GATE"


def gated_mlp() -> nn.Module:
    """tests.toys.tiny_mlp, once the test says go."""
    from tests.toys import tiny_mlp

    gate = os.environ.get(GATE_ENV)
    if gate:
        (Path(gate) / "started").write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not (Path(gate) / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return tiny_mlp()
