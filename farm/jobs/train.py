"""The first half of a qat job split across workers: fine-tune (on a GPU worker) and write the checkpoint that
:func:`farm.jobs.steps.run_job` converts, with ``checkpoint=``, on another machine (the file's format:
:mod:`farm.quant.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from farm.errors import ConfigError
from farm.jobs.contract import JobSpec
from farm.jobs.preflight import preflight
from farm.jobs.steps import seeded, timed_step
from farm.quant.checkpoint import CHECKPOINT_FILE, write_checkpoint
from farm.quant.measure import ProgressFn


def train_job(
    spec: JobSpec,
    out_dir: Path,
    *,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Path:
    """The first half of a qat job split across workers: fine-tune, and write ``checkpoint.pt``.

    The checkpoint is the prepared model's state dict (weights, fake-quantizer ranges, observer state)
    plus the step timings; :func:`run_job` with ``checkpoint=`` rebuilds and converts it on another machine.

    Raises:
        ConfigError: not a qat job, bad references, or CUDA asked for on a machine without it.
        QuantizationError: the model can't be prepared or the loss diverged.
    """

    from farm.quant import qat
    from farm.quant.latency import torch_threads
    from farm.quant.registry import QuantContext, quiet_torch_ao
    from farm.zoo.data import calibration_subset, first_batch, load_dataset
    from farm.zoo.models import load_model

    cfg = spec.method
    if cfg.method != "qat":
        raise ConfigError(f"only qat jobs are fine-tuned in a separate stage, not {cfg.method}")
    preflight(cfg, "cpu")
    timings: dict[str, float] = {}
    report = progress or (lambda step, fraction: None)
    with torch_threads(spec.benchmark.threads), seeded(spec.seed), quiet_torch_ao():
        with timed_step("load", timings, report):
            splits = load_dataset(spec.dataset)
            loaded = load_model(spec.model, weights=spec.weights)
        ctx = QuantContext(
            model_ref=spec.model,
            example_input=first_batch(splits.test, 1),
            calibration=calibration_subset(splits, cfg.calibration_size, spec.seed),  # type: ignore[attr-defined]
            train=splits.train,
            labelled=splits.labelled,
            teacher=loaded.module,
            seed=spec.seed,
            graph=loaded.graph,
            output=spec.output,
            progress=report,
            should_stop=should_stop or (lambda: False),
        )
        prepared = qat.train(loaded.module, cfg, ctx, timings)  # type: ignore[arg-type]
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_checkpoint(out_dir / CHECKPOINT_FILE, prepared.state_dict(), timings, cfg.to_dict())
