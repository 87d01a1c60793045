"""Two ``farm sweep submit`` processes of one spec at once: one sweep, both print its id, no traceback."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from farm.spec.load import load_spec
from tests.integration.farm.farm_support import farm_command
from tests.integration.test_concurrent_submit import SPEC


def test_two_farm_sweep_submits_at_once_make_one_sweep(make_farm: Callable[..., Any], tmp_path: Path) -> None:
    farm = make_farm(artifacts_url=str(tmp_path / "artifacts"))
    spec = tmp_path / "raced.yaml"
    spec.write_text(SPEC)
    argv = [*farm_command(), "sweep", "submit", str(spec)]
    for _ in range(3):  # three rounds of two processes started together
        procs = [
            subprocess.Popen(argv, env=farm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=120) for p in procs]
        for p, (_, err) in zip(procs, outputs, strict=True):
            assert p.returncode == 0, err
            assert "Traceback" not in err, err
        assert len({out.strip() for out, _ in outputs}) == 1, outputs
    assert farm.scalar("SELECT COUNT(*) FROM sweeps") == 1
    assert farm.scalar("SELECT COUNT(*) FROM jobs") == len(load_spec(SPEC).jobs)
