"""A qat fine-tuning checkpoint, the file that carries a qat job from the worker that fine-tunes it to the one
that converts it: the prepared model's state dict plus JSON (step timings, the method config). Read back with
tensors and JSON only, since it comes from another machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from farm.errors import QuantizationError

CHECKPOINT_FILE = "checkpoint.pt"


def write_checkpoint(path: Path, state: dict[str, Any], timings: dict[str, float], method: dict[str, Any]) -> Path:
    """Write a checkpoint to ``path`` and return it."""
    import torch

    torch.save({"state": state, "meta": json.dumps({"timings": timings, "method": method})}, path)
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a :func:`write_checkpoint` checkpoint (tensors and JSON only: ``weights_only=True``).

    Raises:
        QuantizationError: the file is not such a checkpoint (corrupted, or something else).
    """
    import io
    import pickle

    import torch

    from farm.zoo.safe_load import PROMISE, UnsafeFile, check_torch_file

    try:
        raw = path.read_bytes()  # once: torch.load gets the very bytes inspected, not the path again
    except OSError as e:
        raise QuantizationError(f"qat: could not read checkpoint {path.name} ({e.strerror or e})") from None
    try:
        check_torch_file(raw, path.name)
    except UnsafeFile as e:
        raise QuantizationError(f"qat: checkpoint {path.name} refused: {e} ({PROMISE})") from None
    try:
        data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        state, meta = data["state"], json.loads(data["meta"])
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        detail = " ".join(str(e).split())[:200] or type(e).__name__
        raise QuantizationError(f"qat: {path.name} is not a fine-tuning checkpoint of this job ({detail})") from None
    if not isinstance(state, dict):
        raise QuantizationError(f"qat: {path.name} is not a fine-tuning checkpoint of this job (no state dict)")
    meta = meta if isinstance(meta, dict) else {}
    return {"state": state, "timings": meta.get("timings", {}), "method": meta.get("method")}
