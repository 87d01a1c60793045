"""The engine imports none of the farm's outside systems, and the spec-side modules import no torch.

Checked in a fresh interpreter, since this test process has long since imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ENGINE_MODULES = (
    "farm.quant",
    "farm.quant.config",
    "farm.zoo.refs",
    "farm.jobs.contract",
    "farm.quant.static",
    "farm.quant.qat",
    "farm.zoo.models",
    "farm.zoo.data",
)
OUTSIDE_SYSTEMS = ("celery", "kombu", "sqlalchemy", "boto3", "botocore", "click", "redis")


def loaded_after_import(modules: tuple[str, ...], env: dict[str, str]) -> set[str]:
    return loaded_after(f"import importlib\nfor name in {list(modules)!r}:\n    importlib.import_module(name)\n", env)


def loaded_after(code: str, env: dict[str, str]) -> set[str]:
    """The modules a fresh interpreter holds once it ran ``code``."""
    code += "import json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout))


def top_level(names: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in names}


@pytest.mark.slow  # a fresh interpreter imports torch (a few seconds)
def test_engine_imports_no_queue_database_object_store_or_cli(subprocess_env: dict[str, str]) -> None:
    loaded = loaded_after_import(ENGINE_MODULES, subprocess_env)
    assert set(ENGINE_MODULES) <= loaded
    assert "torch" in loaded  # the check is real: the engine modules did load their heavy dependency
    assert top_level(loaded) & set(OUTSIDE_SYSTEMS) == set()


def test_config_and_refs_import_no_torch(subprocess_env: dict[str, str]) -> None:
    loaded = loaded_after_import(("farm.quant.config", "farm.zoo.refs"), subprocess_env)
    assert {"farm.quant.config", "farm.zoo.refs"} <= loaded
    assert top_level(loaded) & {"torch", "numpy", "torchvision", "sklearn", *OUTSIDE_SYSTEMS} == set()


def test_planning_a_tune_imports_no_torch(subprocess_env: dict[str, str]) -> None:
    """`farm tune` plans stage 1 before any worker starts: importing torch there (2 s) delayed every job."""
    code = (
        "import yaml\n"
        "from farm.jobs.tune_plan import TuneSettings, plan_tune, tune_text\n"
        "settings = TuneSettings('sqnr_db', min_metric=40.0)\n"
        "text = tune_text(model='farm:digits-cnn', dataset='sklearn:digits', method='static', settings=settings,\n"
        "                 runtimes=['torch', 'onnxruntime', 'openvino'], batch_size=1, threads=1)\n"
        "plan = plan_tune(text, yaml.safe_load(text), labelled=True)\n"
        "assert len(plan.jobs) > 5\n"
    )
    assert "torch" not in top_level(loaded_after(code, subprocess_env))


@pytest.mark.slow  # a fresh interpreter imports torch (a few seconds)
def test_the_digits_data_is_read_without_importing_sklearn_datasets(subprocess_env: dict[str, str]) -> None:
    """`sklearn:digits` reads the file scikit-learn ships: importing sklearn.datasets took 0.9 s of every fresh
    worker process's first job; the arrays are load_digits' own."""
    code = (
        "import numpy as np\n"
        "from farm.zoo.digits import _digits_arrays, digits_data\n"
        "data, target = _digits_arrays()\n"
        "assert data.shape == (1797, 64) and target.shape == (1797,) and data.dtype == np.float64\n"
        "assert len(digits_data().x_test) == 360\n"
        "import sys\n"
        "assert 'sklearn.datasets' not in sys.modules, 'imported'\n"
        "from sklearn.datasets import load_digits\n"
        "raw = load_digits()\n"
        "assert np.array_equal(data, raw.data) and np.array_equal(target, raw.target)\n"
        "assert target.dtype == raw.target.dtype\n"
    )
    loaded_after(code, subprocess_env)


@pytest.mark.slow  # a fresh interpreter imports torch (a few seconds)
def test_a_fingerprint_names_torchvision_without_importing_it(subprocess_env: dict[str, str]) -> None:
    """Every job fingerprints its host, and importing torchvision for its version pulled in torch._dynamo: 1.4 s of
    each process's first job, the tune's fp32 reference (which every other job waits for) among them."""
    pytest.importorskip("torchvision")
    code = (
        "import sys\n"
        "from farm.quant.fingerprint import fingerprint\n"
        "named = fingerprint('cpu')['torchvision']\n"
        "assert 'torchvision' not in sys.modules and 'torch._dynamo' not in sys.modules, 'imported'\n"
        "import torchvision\n"
        "assert named == torchvision.__version__, (named, torchvision.__version__)\n"
        "assert fingerprint('cpu')['torchvision'] == named\n"
    )
    loaded_after(code, subprocess_env)
