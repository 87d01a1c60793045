"""OpenVINO's and NNCF's usage telemetry, declined in QuantFarm's processes.

OpenVINO's model conversion (``ov.convert_model``) and NNCF send usage events to Google Analytics through the
``openvino-telemetry`` package unless the user opted out with its ``opt_in_out --opt_out`` (a file under ``~/intel``);
the first event also writes a client id under ``~/intel``. On Linux each event is sent from a new process
(``multiprocessing``, so that a hung connection can be cut after 3 s): a static OpenVINO job of digits-cnn started 23
of them, ~0.07 s of CPU each, and a digits-cnn ``farm tune`` about 200 — 12 s of CPU beside the 17.5 s its jobs
computed, on the cores the jobs and their timings ran on. A user running QuantFarm never agreed to that, and a
benchmark must not have it running beside it.

:func:`decline` makes the package decline in this process (events are dropped before any process starts, nothing is
written under ``~/intel``); the user's own choice file is neither read nor changed. ``FARM_VENDOR_TELEMETRY=1``
leaves the vendor's setting in force. Standard library only; the package is imported only where it is installed.
"""

from __future__ import annotations

import functools
import os
from typing import Any

#: Set to 1 (or true, yes, on) to leave OpenVINO's and NNCF's telemetry as the vendor's own opt-out file says.
ENV = "FARM_VENDOR_TELEMETRY"


def allowed() -> bool:
    """Whether the user asked for the vendors' telemetry to be left as their own setting says."""
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def decline() -> None:
    """Make ``openvino-telemetry`` decline in this process: call before ``import openvino`` or ``import nncf`` (each
    sends an event as it is imported; an instance made earlier is turned off too). Called where QuantFarm uses
    OpenVINO (``farm.runtimes.openvino.require_openvino``) and before any model is loaded (a user's module may import
    either: ``farm.zoo.models.load_model``, which every job runs). Idempotent; nothing happens where the package is
    not installed or :func:`allowed` says so."""
    package = None if allowed() else _package()
    if package is None:
        return
    Telemetry, ConsentCheckResult, OptInChecker = package
    if not getattr(OptInChecker.check, "_farm_declined", False):

        def check(self: Any, enable_opt_in_dialog: bool, disable_in_ci: bool = False) -> Any:
            return ConsentCheckResult.DECLINED

        check._farm_declined = True  # type: ignore[attr-defined]
        OptInChecker.check = check  # type: ignore[method-assign]
    # The package's Telemetry is a singleton (its metaclass keeps the one instance): one made before this call
    # decided its consent already.
    instance = getattr(Telemetry, "_SingletonMetaClass__single_instance", None)
    if instance is not None:
        instance.consent = False


@functools.cache
def _package() -> tuple[Any, Any, Any] | None:
    """openvino-telemetry's singleton, consent results and checker; None where it is not installed (looked for once
    a process)."""
    try:
        from openvino_telemetry import Telemetry
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:
        return None
    return Telemetry, ConsentCheckResult, OptInChecker
