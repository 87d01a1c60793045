"""The fp32 reference: the unquantized model's figures on the test split, measured once per model, dataset and
device and shared by every trial that compares with it (accuracy drop, agreement, speedup, size ratio).

A reference job writes it as ``reference.pt`` beside its artifact; a trial on another worker loads that file
instead of measuring the fp32 model again. A trial on another split (a tune's validation-split jobs) carries it
there itself (farm.jobs.fp32_reference.on_split): ``split`` says which split the outputs are on.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.errors import QuantizationError
from farm.jobs.contract import jsonable

REFERENCE_FILE = "reference.pt"


@dataclass
class Reference:
    """The fp32 model's figures on its job's split (``split``; the test split unless a tune's), shared by every job
    of the same model.

    Attributes:
        outputs: fp32 outputs on the test split, (N, classes), CPU float32.
        labels: test labels (-1 where there are none).
        labelled: whether the labels are real.
        accuracy, top5: fp32 accuracy on the labels (None without labels).
        latency: fp32 latency figures by batch size.
        size_bytes: size of the fp32 artifact.
        device: where the figures were measured.
        hardware_id: fingerprint hash of that machine.
    """

    outputs: Any
    labels: Any
    labelled: bool
    accuracy: float | None
    top5: float | None
    latency: dict[int, dict[str, Any]]
    size_bytes: int
    device: str
    hardware_id: str
    #: The fp32 model as measured (in this process only; never saved).
    module: Any = None
    #: The form the fp32 figures were measured in: "torchscript" (what :func:`farm.quant.artifact.deployable`
    #: made of it) or "eager"; None in files written before it was recorded.
    deployed_as: str | None = None
    #: The split the outputs are on ("test"; "validation": a reference job of a tune's validation split, or one
    #: carried there by farm.jobs.fp32_reference.on_split). Files written before it was recorded hold "test".
    split: str = "test"

    def save(self, path: Path) -> None:
        """Write the figures as tensors plus JSON (what :meth:`load` accepts with ``weights_only=True``)."""
        import torch

        meta: dict[str, Any] = {
            "labelled": self.labelled,
            "accuracy": self.accuracy,
            "top5": self.top5,
            "latency": {str(k): v for k, v in self.latency.items()},
            "size_bytes": self.size_bytes,
            "device": self.device,
            "hardware_id": self.hardware_id,
            "deployed_as": self.deployed_as,
            "split": self.split,
        }
        torch.save({"outputs": self.outputs, "labels": self.labels, "meta": json.dumps(jsonable(meta))}, path)

    @classmethod
    def load(cls, path: Path) -> Reference:
        """Read a ``reference.pt`` (tensors and JSON only: inspected, then ``weights_only=True``).

        Raises:
            QuantizationError: the file holds something a weights-only load refuses.
        """
        import io

        import torch

        from farm.zoo.safe_load import PROMISE, UnsafeFile, check_torch_file

        raw = path.read_bytes()  # once: torch.load gets the very bytes inspected, not the path again
        try:
            check_torch_file(raw, path.name)
        except UnsafeFile as e:
            raise QuantizationError(f"fp32 reference {path} refused: {e} ({PROMISE})") from None
        data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        meta = json.loads(data["meta"])
        meta["latency"] = {int(k): v for k, v in meta["latency"].items()}
        known = {f.name for f in dataclasses.fields(cls)}  # a file from a newer engine: the fields this one knows
        return cls(outputs=data["outputs"], labels=data["labels"], **{k: v for k, v in meta.items() if k in known})


@dataclass
class Baseline:
    """The fp32 model a job compares with, as a user would deploy it, beside its eager form.

    Attributes:
        deployed: a ``QuantOutcome`` of the deployed form (frozen TorchScript when it verifies, else eager).
        deployed_as: "torchscript" or "eager".
        eager: a ``QuantOutcome`` of the eager module when the deployed form differs from it, else None.
    """

    deployed: Any
    deployed_as: str
    eager: Any = None


def fp32_baseline(model: Any, example: Any, device: str) -> Baseline:
    """Deploy an fp32 model the way every job does (:func:`farm.quant.artifact.deployable`), keeping its eager
    form beside it: the reference and a trial's side-by-side baseline are then the same program.

    Args:
        model: an untouched fp32 ``nn.Module`` (moved to ``device``).
        example: one input batch (a tensor, tuple or dict of tensors), for tracing.
        device: where it runs.
    """
    from farm.quant.artifact import deployable
    from farm.quant.context import QuantOutcome
    from farm.quant.inputs import place

    module = model.to(device)
    deployed, scripted = deployable(module, place(example, device))
    return Baseline(
        deployed=QuantOutcome(deployed, device=device),
        deployed_as="torchscript" if scripted else "eager",
        # A model loaded as a graph (TorchScript) is its own deployed form: there is no eager one to time.
        eager=QuantOutcome(module, device=device) if scripted and deployed is not module else None,
    )
