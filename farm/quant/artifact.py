"""Saving and loading quantized models as files another process runs without the original Python class.

Format choice (docs/methods.md says why): a frozen TorchScript module. torch.export cannot serialize
torch.ao's quantized modules (their packed parameters are TorchScript custom classes), so TorchScript is
what round-trips every method here. If a model can't be traced or scripted, its state dict is saved and
the manifest says the original class is needed to load it.

An artifact is a directory: ``model.pt`` and ``manifest.json`` (method config, metrics, fingerprint,
sha256 of the model file, the quantized engine to load it with). A job on ONNX Runtime ships ``model.onnx``
instead; :func:`load_artifact` opens it as an onnxruntime session called like the torch module.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from farm.errors import ArtifactError
from farm.quant import inputs
from farm.quant.inputs import Batch

MODEL_FILE = "model.pt"
STATE_FILE = "model_state.pt"
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class SavedModel:
    """A model file written by :func:`save_model`."""

    path: Path
    format: str  # "torchscript" or "state_dict"
    sha256: str
    size_bytes: int


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def to_torchscript(model: nn.Module, example_input: Batch, *, autocast: torch.dtype | None = None) -> Any:
    """Trace (or script) and freeze ``model``; None when neither works.

    A tuple batch is traced as positional arguments, a dict batch as keyword arguments (``example_kwarg_inputs``).
    """
    from farm.quant.context import quiet_torch_ao

    with quiet_torch_ao(), torch.inference_mode(False), torch.no_grad():
        if isinstance(model, torch.jit.ScriptModule):
            return model
        scripted = None
        try:
            if autocast is not None:
                with torch.autocast(device_type=_device_type(example_input), dtype=autocast):
                    scripted = _trace(model, example_input)
            else:
                scripted = _trace(model, example_input)
        except Exception:  # noqa: BLE001 - tracing failures are expected for some models; try scripting
            try:
                scripted = torch.jit.script(model)
            except Exception:  # noqa: BLE001
                return None
        try:
            return torch.jit.freeze(scripted.eval())
        except Exception:  # noqa: BLE001 - freezing is an optimisation; unfrozen still loads and runs
            return scripted


def _trace(model: nn.Module, example: Batch) -> Any:
    # strict=False: dict and list outputs (a model returning {"embedding", "logits"}) trace too.
    if isinstance(example, dict):
        return torch.jit.trace(model, example_kwarg_inputs=example, check_trace=False, strict=False)
    return torch.jit.trace(model, example, check_trace=False, strict=False)


def _device_type(batch: Batch) -> str:
    first = (
        batch if isinstance(batch, torch.Tensor) else next(iter(batch.values() if isinstance(batch, dict) else batch))
    )
    return first.device.type


def deployable(model: nn.Module, example_input: Batch, *, autocast: torch.dtype | None = None) -> tuple[Any, bool]:
    """The form an artifact ships in, which is also the form that is evaluated and timed.

    Frozen TorchScript when tracing works and the traced module reproduces the eager one on a batch of two
    (a trace that baked in the batch size, or a data-dependent branch, fails that check). Measuring the
    frozen module matters: an FX GraphModule pays ~1 ms of Python per call that a deployment does not.

    Returns:
        (module, True) for verified TorchScript, else (the eager model, False). Autocast models stay eager.
    """
    if autocast is not None:
        return model, False
    from farm.quant.isolation import compute_step

    with compute_step():  # tracing and freezing compute: they pause while another job on this host times
        return _verified_script(model, example_input)


def _verified_script(model: nn.Module, example_input: Batch) -> tuple[Any, bool]:
    scripted = to_torchscript(model, example_input)
    if scripted is None:
        return model, False
    from farm.quant.context import quiet_torch_ao

    batch = inputs.concat([example_input, _other_samples(example_input)])
    try:
        with quiet_torch_ao(), torch.inference_mode():
            want, got = _output_tensors(inputs.call(model, batch)), _output_tensors(inputs.call(scripted, batch))
    except Exception:  # noqa: BLE001 - a trace that can't run on another batch size is not deployable
        return model, False
    if len(want) != len(got) or not want:
        return model, False
    for w, g in zip(want, got, strict=True):
        w, g = w.float(), g.float()
        tolerance = 1e-3 * float(w.abs().max()) + 1e-5 if w.numel() else 0.0
        if w.shape != g.shape or (w.numel() and float((w - g).abs().max()) > tolerance):
            return model, False
    return scripted, True


def _other_samples(batch: Batch) -> Batch:
    """Samples that differ from ``batch``'s: its samples reversed, or its floats halved for a batch of one (token
    ids and masks are kept: other ids could be out of the vocabulary)."""
    if inputs.batch_len(batch) > 1:
        return inputs.take(batch, torch.arange(inputs.batch_len(batch) - 1, -1, -1))
    if isinstance(batch, torch.Tensor):
        return batch * 0.5 if batch.is_floating_point() else batch
    items = batch.items() if isinstance(batch, dict) else enumerate(batch)
    halved = {k: t * 0.5 if t.is_floating_point() else t for k, t in items}
    return halved if isinstance(batch, dict) else tuple(halved.values())  # type: ignore[return-value]


def _output_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor of a model's output, in order (dict values by key)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _output_tensors(o)]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _output_tensors(out[k])]
    return []


def save_model(
    model: nn.Module, example_input: Batch, directory: Path, *, autocast: torch.dtype | None = None
) -> SavedModel:
    """Write ``model`` into ``directory`` as frozen TorchScript (or a state dict when that fails).

    Raises:
        ArtifactError: the file could not be written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    scripted = to_torchscript(model, example_input, autocast=autocast)
    buf = io.BytesIO()
    from farm.quant.context import quiet_torch_ao

    with quiet_torch_ao():
        if scripted is not None:
            torch.jit.save(scripted, buf)
            name, fmt = MODEL_FILE, "torchscript"
        else:
            torch.save(model.state_dict(), buf)
            name, fmt = STATE_FILE, "state_dict"
    path = directory / name
    _atomic_write(path, buf.getvalue())
    return SavedModel(path, fmt, hashlib.sha256(buf.getvalue()).hexdigest(), len(buf.getvalue()))


def model_size_bytes(model: nn.Module, example_input: Batch) -> int:
    """Size the model would have as an artifact file, without writing it."""
    scripted = to_torchscript(model, example_input)
    buf = io.BytesIO()
    from farm.quant.context import quiet_torch_ao

    with quiet_torch_ao():
        if scripted is not None:
            torch.jit.save(scripted, buf)
        else:
            torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` (atomically) and return its path."""
    path = directory / MANIFEST_FILE
    data = {"manifest_version": MANIFEST_VERSION, **manifest}
    _atomic_write(path, (json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n").encode())
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read and check an artifact's manifest.

    Raises:
        ArtifactError: missing, unreadable, or written by a newer version.
    """
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{directory} is not an artifact: it has no {MANIFEST_FILE}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is unreadable: {e}") from None
    if manifest.get("manifest_version", 0) > MANIFEST_VERSION:
        raise ArtifactError(f"{path} was written by a newer QuantFarm (manifest {manifest['manifest_version']})")
    return manifest


def load_artifact(
    directory: str | Path, *, map_location: str = "cpu", verify: bool = True
) -> tuple[Any, dict[str, Any]]:
    """Load an artifact written by a trial: ``(module, manifest)``.

    Sets ``torch.backends.quantized.engine`` to the engine the model was converted for, so its int8
    kernels run as they did when it was measured. An ONNX artifact (``model.onnx``, a job on onnxruntime) comes
    back as a :class:`farm.runtimes.ort.OrtCallable`: called like the torch module (``m(x)``, ``m(a, b)``,
    ``m(input_ids=..., attention_mask=...)``), it returns torch tensors; ``map_location`` cuda picks the CUDA
    execution provider.

    Raises:
        ArtifactError: missing files, sha256 mismatch, or a state-dict artifact (needs the original class).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    model_info = manifest.get("artifact", {})
    path = directory / model_info.get("file", MODEL_FILE)
    if not path.is_file():
        raise ArtifactError(f"artifact {directory} is missing its model file {path.name}")
    try:
        # read once: the sha256, the inspection and torch.jit.load all see these bytes, not a later file
        data = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"could not read artifact {path}: {e.strerror or e}") from None
    if verify and model_info.get("sha256") and hashlib.sha256(data).hexdigest() != model_info["sha256"]:
        raise ArtifactError(f"artifact {path} does not match the sha256 in its manifest: corrupted or altered")
    fmt = model_info.get("format", "torchscript")
    if fmt == "onnx":
        return _onnx_callable(data, path, map_location), manifest
    if fmt == "state_dict":
        raise ArtifactError(
            f"artifact {directory} holds a state dict: load it into the original model class ({manifest.get('model')})"
        )
    if fmt != "torchscript":
        raise ArtifactError(
            f"artifact {directory} holds a {fmt} model ({path.name}) for runtime {manifest.get('runtime')}: "
            "load it with that runtime"
        )
    engine = manifest.get("quantized_engine")
    if engine and engine in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = engine
    from farm.quant.context import quiet_torch_ao
    from farm.zoo.safe_load import PROMISE, UnsafeFile, check_torchscript

    try:
        # A manifest's sha256 is no guard: whoever wrote the file wrote the manifest too.
        check_torchscript(data, str(path))
    except UnsafeFile as e:
        raise ArtifactError(f"artifact {path} refused: {e} ({PROMISE})") from None
    with quiet_torch_ao():
        module = torch.jit.load(io.BytesIO(data), map_location=map_location)
    return module.eval(), manifest


def _onnx_callable(data: bytes, path: Path, map_location: str) -> Any:
    """An onnxruntime session on the model's bytes (the very bytes checked against the manifest; external data
    files are not followed), called like the torch module it was exported from.

    Raises:
        ArtifactError: onnxruntime is missing or cannot load the file (one line).
    """
    from farm.errors import QuantizationError
    from farm.runtimes.ort import OrtCallable, OrtModel

    provider = "CUDAExecutionProvider" if map_location.startswith("cuda") else "CPUExecutionProvider"
    try:
        return OrtCallable(OrtModel.load(data, provider=provider))
    except QuantizationError as e:
        raise ArtifactError(f"artifact {path}: {e}") from None


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ArtifactError(f"could not write {path}: {e}") from e


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return None
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
