"""Where the host's lock files live (the measurement lock, :mod:`farm.quant.isolation`; the core claims,
:mod:`farm.quant.pinning`) and how they are opened. Standard library only."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: Where the lock files live (default: a per-user directory under the system's temp dir, which is per host).
LOCK_DIR_ENV = "FARM_LOCK_DIR"


def lock_dir() -> Path:
    """The per-host, per-user directory of the lock files (created, private).

    /tmp rather than the farm's home: a home on a network file system would make the lock span hosts.
    """
    configured = os.environ.get(LOCK_DIR_ENV)
    path = Path(configured) if configured else Path(tempfile.gettempdir()) / f"farm-locks-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def open_lock(path: Path) -> int:
    """A lock file opened for ``flock`` (created private if missing, closed in children that exec)."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
