"""OpenVINO's and NNCF's usage telemetry is declined in QuantFarm's processes (farm.runtimes.vendor_telemetry).

Checked in fresh interpreters whose HOME is the test's own and with no CI variable set (the package declines in CI on
its own): there, unless declined, the package consents by default and writes a client id under ~/intel; every event
it sends starts a process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino_telemetry")

CI_VARIABLES = ("CI", "TF_BUILD", "JENKINS_URL")

#: What the package decides for NNCF (the settings nncf/telemetry/wrapper.py passes), and what it writes.
CONSENT = """
import json, os
from openvino_telemetry import Telemetry
t = Telemetry(app_name="nncf", app_version="0", tid="G-TEST", backend="ga4", enable_opt_in_dialog=False,
              disable_in_ci=True)
print(json.dumps({"consent": t.consent, "intel": sorted(os.listdir(os.path.expanduser("~/intel")))
                  if os.path.isdir(os.path.expanduser("~/intel")) else []}))
"""

#: A real conversion and NNCF quantization, counting the processes started while they run.
CONVERT_AND_QUANTIZE = """
import json, os, multiprocessing.process as mp
started = []
_start = mp.BaseProcess.start
mp.BaseProcess.start = lambda self: (started.append(repr(self)), _start(self))[1]
import torch
from farm.runtimes.openvino import require_openvino
ov = require_openvino(nncf=True)
import nncf
model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
example = torch.randn(4, 8)
converted = ov.convert_model(model, example_input=example)
nncf.quantize(converted, nncf.Dataset([example.numpy()]), subset_size=1)
from openvino_telemetry import Telemetry
print(json.dumps({"started": started, "consent": Telemetry().consent,
                  "intel": os.path.isdir(os.path.expanduser("~/intel"))}))
"""


def _run(code: str, env: dict[str, str], home: Path, **extra: str) -> dict:
    env = {k: v for k, v in env.items() if k not in (*CI_VARIABLES, "FARM_VENDOR_TELEMETRY")}
    env.update(HOME=str(home), **extra)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_left_alone_the_package_consents_and_writes_a_client_id(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """The hazard itself (what the package does where nothing declines): consent by default, an id in ~/intel."""
    seen = _run(CONSENT, subprocess_env, tmp_path)
    assert seen["consent"] is True
    assert "openvino_ga_cid" in seen["intel"]


def test_declined_in_this_process_nothing_is_written(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    code = "from farm.runtimes.vendor_telemetry import decline\ndecline()\n" + CONSENT
    seen = _run(code, subprocess_env, tmp_path)
    assert seen == {"consent": False, "intel": []}


def test_an_instance_made_before_declining_is_turned_off(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    code = CONSENT + "from farm.runtimes.vendor_telemetry import decline\ndecline()\nprint(json.dumps(t.consent))\n"
    env = {k: v for k, v in subprocess_env.items() if k not in CI_VARIABLES}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) is False


def test_the_user_may_leave_the_vendor_setting_in_force(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    code = "from farm.runtimes.vendor_telemetry import decline\ndecline()\n" + CONSENT
    seen = _run(code, subprocess_env, tmp_path, FARM_VENDOR_TELEMETRY="1")
    assert seen["consent"] is True


@pytest.mark.slow  # imports torch, openvino and nncf in a fresh interpreter (several seconds)
def test_an_openvino_build_sends_nothing_and_starts_no_process(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """Through QuantFarm's own entry (require_openvino): a conversion and an NNCF quantization, which send events
    when left alone (a process each), start no process and write nothing under ~/intel."""
    pytest.importorskip("nncf")
    seen = _run(CONVERT_AND_QUANTIZE, subprocess_env, tmp_path)
    assert seen == {"started": [], "consent": False, "intel": False}


def test_loading_any_model_declines_first(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """A user's model module may import OpenVINO or NNCF (each sends an event as it is imported): every job, and
    `farm layers`, load their model through load_model, which declines before anything is imported."""
    code = (
        "from farm.zoo.models import load_model\n"
        "load_model('farm:digits-mlp')\n"
        "from openvino_telemetry.utils.opt_in_checker import OptInChecker\n"
        "import json\n"
        "print(json.dumps(getattr(OptInChecker.check, '_farm_declined', False)))\n"
    )
    env = {k: v for k, v in subprocess_env.items() if k not in (*CI_VARIABLES, "FARM_VENDOR_TELEMETRY")}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) is True
