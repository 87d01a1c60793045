"""CI installs ``.[all,dev]``: there, the runtime tests above must run, not skip for a missing package."""

from __future__ import annotations

import importlib.util
import os

import pytest

from farm.runtimes.registry import unavailable


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="only CI promises every CPU runtime is installed")
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_ci_has_every_cpu_runtime(runtime: str) -> None:
    assert unavailable(runtime) is None


def test_a_missing_runtime_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "nncf" else real(name))
    assert unavailable("openvino") == (
        "runtime openvino needs nncf, which this machine lacks: pip install 'quantfarm[openvino]'"
    )
