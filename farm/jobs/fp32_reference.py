"""The fp32 reference a job compares with: computed by an fp32 job (:func:`compute_reference`), and carried over to
another split of the same data (:func:`on_split`) for a trial that measures there.

A tune's sensitivity jobs measure on the validation split (they must never choose on the test split) and compare
with the fp32 outputs on it. Their reference is the tune's one fp32 reference job, timed on the test split: its
latency and size are the model's own whatever the split, and the fp32 outputs on the validation split are
computed in the trial's process, by the same program (the deployed fp32 form, the same threads) a reference job
runs, once per process and split (:data:`_ON_SPLIT`). A separate reference job on the validation split was a job
of torch's budget that took the verify job's place (its candidates were then timed exclusively, holding the host).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

from farm.errors import ConfigError
from farm.jobs.contract import JobSpec
from farm.quant.measure import ProgressFn, benchmark, evaluate
from farm.quant.reference import Reference

#: The last reference carried to another split in this process: (key, its figures on that split). One: a worker
#: process runs a tune's sensitivity jobs one after another, on one model and split.
_ON_SPLIT: dict[tuple[Any, ...], Reference] = {}


def compute_reference(
    model: Any,
    test: Any,
    labelled: bool,
    spec: JobSpec,
    device: str,
    report: ProgressFn,
    stop: Callable[[], bool],
    num_classes: int | None = None,
    *,
    timed: bool = True,
) -> Reference:
    """Evaluate and time the fp32 model on ``test`` (the job's split; accuracy only on class scores:
    :func:`farm.quant.metrics.is_class_scores`).

    Args:
        timed: False: outputs only (no latency, no size: :func:`on_split` takes the reference job's).

    Raises:
        ConfigError: the model produces NaN or Inf on the reference inputs.
    """
    from farm.quant.artifact import model_size_bytes
    from farm.quant.fingerprint import fingerprint, hardware_id
    from farm.quant.inputs import place
    from farm.quant.metrics import all_finite, is_class_scores, labels_fit, topk_accuracy
    from farm.quant.reference import fp32_baseline
    from farm.zoo.data import first_batch

    baseline = fp32_baseline(model, first_batch(test, 1), device)
    outcome = baseline.deployed
    outputs, labels = evaluate(outcome, test, report, stop, label="fp32", with_labels=True, output=spec.output)
    if not all_finite(outputs):
        raise ConfigError(
            f"model {spec.model} produces NaN/Inf outputs on the reference inputs ({spec.dataset} {spec.split} "
            "split); check its weights"
        )
    latency: dict[int, dict[str, Any]] = {}
    if timed:
        latency = {lat["batch_size"]: lat for lat in benchmark(outcome, test, spec.benchmark, report, stop, baseline)}
    shape = tuple(outputs.shape)
    scores = labelled and is_class_scores(shape, num_classes, spec.output) and labels_fit(shape, num_classes)
    accuracy = topk_accuracy(outputs, labels, 1) if scores else None
    top5 = topk_accuracy(outputs, labels, 5) if scores and outputs.shape[-1] >= 10 else None
    size = model_size_bytes(model, place(first_batch(test, 1), device)) if timed else 0
    return Reference(
        outputs, labels, labelled, accuracy, top5, latency, size, device, hardware_id(fingerprint(device)),
        module=outcome.model, deployed_as=baseline.deployed_as, split=spec.split,
    )  # fmt: skip


def on_split(
    reference: Reference,
    spec: JobSpec,
    module: Any,
    splits: Any,
    device: str,
    report: ProgressFn,
    stop: Callable[[], bool],
) -> Reference:
    """``reference`` (an fp32 job's, measured on another split) carried to ``spec.split``: the fp32 outputs, labels
    and accuracy on the job's split (``splits``, loaded for it), computed here from an untouched copy of ``module``
    on the device the reference job ran on (a trial on a GPU runtime compares with the same fp32 as on the test
    split: no TF32 convolutions), where this host has it; latency, size and how fp32 was deployed stay the
    reference job's."""
    import torch

    cpu = not reference.device.startswith("cuda")
    where = reference.device if cpu or torch.cuda.is_available() else device
    n = len(splits.test)
    key: tuple[Any, ...] = (_digest(reference), spec.model, spec.weights, spec.dataset, spec.split, spec.output)
    key += (where, n, spec.benchmark.threads)
    here = _ON_SPLIT.get(key)
    if here is None or len(here.outputs) != n:
        here = compute_reference(
            copy.deepcopy(module), splits.test, splits.labelled, spec, where, report, stop, splits.num_classes,
            timed=False,
        )  # fmt: skip
        here.module = None  # the trial builds its own baseline; the copy goes
        _ON_SPLIT.clear()
        _ON_SPLIT[key] = here
    return dataclasses.replace(
        here,
        latency=reference.latency,
        size_bytes=reference.size_bytes,
        hardware_id=reference.hardware_id,
        deployed_as=reference.deployed_as,
    )


def _digest(reference: Reference) -> str:
    """The reference's identity: its fp32 outputs (the model, its weights, the data and the output compared)."""
    import torch

    outputs = reference.outputs.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(outputs.numpy().tobytes()).hexdigest() + f":{reference.device}"
