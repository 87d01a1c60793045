"""A toy model whose loading fails while a marker file exists: the farm tests toggle it between two runs.

Loaded by worker subprocesses as ``entrypoint:tests.integration.farm.farm_toys:flaky_mlp`` (the module must be
listed in FARM_ALLOWED_MODULES). The marker's path comes from FARM_TEST_FLAKY_MARKER; the job's key does not
depend on it, so the same job fails or succeeds depending only on what the test did with the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

MARKER_ENV = "FARM_TEST_FLAKY_MARKER"


def flaky_mlp() -> nn.Module:
    """tests.toys.tiny_mlp, unless the marker file exists: then loading the model fails."""
    from tests.toys import tiny_mlp

    marker = os.environ.get(MARKER_ENV)
    if marker and Path(marker).exists():
        raise RuntimeError(f"flaky toy: marker {marker} is present")
    return tiny_mlp()
