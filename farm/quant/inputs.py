"""Model inputs and outputs as they are: one tensor, a tuple of tensors (positional arguments) or a dict of tensors
(keyword arguments), and the one tensor of a model's output that every metric is computed on.

A :data:`Batch` holds samples along dim 0 of every tensor. Token ids and masks are integer tensors and keep their
dtype wherever a batch is placed: only floating-point tensors follow a method's input dtype (bf16, fp16).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from farm.errors import QuantizationError

Batch = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]


def _map(batch: Batch, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: fn(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return tuple(fn(t) for t in batch)
    raise QuantizationError(f"a model input must be a tensor, a tuple or a dict of tensors, got {type(batch).__name__}")


def _tensors(batch: Batch) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, Mapping):
        return list(batch.values())
    return list(batch)


def place(batch: Batch, device: str, float_dtype: torch.dtype | None = None) -> Batch:
    """Move every tensor of ``batch`` to ``device``; cast only the floating-point ones to ``float_dtype``.

    Args:
        batch: a tensor, tuple or dict of tensors.
        device: where the model runs.
        float_dtype: the dtype floating-point inputs take (None: keep theirs). Integer and bool tensors (token
            ids, attention masks) always keep their dtype.

    Returns:
        A batch of the same structure.
    """

    def one(t: torch.Tensor) -> torch.Tensor:
        if float_dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=float_dtype)
        return t.to(device=device)

    return _map(batch, one)


def call(model: Callable[..., Any], batch: Batch) -> Any:
    """``model(x)``, ``model(*x)`` for a tuple, ``model(**x)`` for a dict."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    return model(*batch)


def batch_len(batch: Batch) -> int:
    """The number of samples in ``batch`` (dim 0 of its first tensor; 1 for a scalar tensor).

    Raises:
        QuantizationError: an empty tuple or dict.
    """
    tensors = _tensors(batch)
    if not tensors:
        raise QuantizationError("a model input holds no tensors")
    first = tensors[0]
    return int(first.shape[0]) if first.dim() > 0 else 1


def take(batch: Batch, index: torch.Tensor | slice) -> Batch:
    """The samples ``index`` selects (along dim 0 of every tensor)."""
    return _map(batch, lambda t: t[index])


def concat(batches: Sequence[Batch]) -> Batch:
    """Batches of one structure joined along dim 0.

    Raises:
        QuantizationError: no batches, or batches of different structures.
    """
    if not batches:
        raise QuantizationError("nothing to concatenate")
    first: Any = batches[0]
    rest: list[Any] = list(batches)
    if isinstance(first, torch.Tensor):
        if any(not isinstance(b, torch.Tensor) for b in rest):
            raise QuantizationError("inputs change structure between batches (first is one tensor)")
        return torch.cat(rest)
    if isinstance(first, Mapping):
        keys = list(first)
        if any(not isinstance(b, Mapping) or list(b) != keys for b in rest):
            raise QuantizationError(f"inputs change structure between batches (first has keys {keys})")
        return {k: torch.cat([b[k] for b in rest]) for k in keys}
    if any(isinstance(b, (torch.Tensor, Mapping)) or len(b) != len(first) for b in rest):
        raise QuantizationError(f"inputs change structure between batches (first is a tuple of {len(first)})")
    return tuple(torch.cat([b[i] for b in rest]) for i in range(len(first)))


def collate(samples: Sequence[Any]) -> Batch:
    """Per-sample inputs stacked into one batch: tensors (or arrays, numbers), tuples or dicts of them.

    Raises:
        QuantizationError: no samples, samples of different structures, or tensors of different shapes.
    """
    if not samples:
        raise QuantizationError("no samples to collate")
    first = samples[0]
    try:
        if isinstance(first, Mapping):
            keys = list(first)
            return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in keys}
        if isinstance(first, (tuple, list)):
            return tuple(torch.stack([torch.as_tensor(s[i]) for s in samples]) for i in range(len(first)))
        return torch.stack([torch.as_tensor(s) for s in samples])
    except (KeyError, IndexError, RuntimeError, TypeError) as e:
        detail = " ".join(str(e).split())[:200]
        raise QuantizationError(f"samples cannot be stacked into a batch: {type(e).__name__}: {detail}") from None


def repeat_to(batch: Batch, n: int) -> Batch:
    """The first ``n`` samples of ``batch``, cycling through it again when it holds fewer."""
    size = batch_len(batch)
    if size == 0:
        raise QuantizationError("cannot repeat an empty batch")
    if size >= n:
        return take(batch, slice(0, n))
    return take(batch, torch.arange(n) % size)


def describe(batch: Batch) -> list[dict[str, Any]]:
    """Each input's name (a dict key, or its position), shape without the batch dim, and dtype (a manifest's
    ``input``)."""
    if isinstance(batch, torch.Tensor):
        named: list[tuple[str, torch.Tensor]] = [("0", batch)]
    elif isinstance(batch, Mapping):
        named = [(str(k), v) for k, v in batch.items()]
    else:
        named = [(str(i), t) for i, t in enumerate(batch)]
    return [{"name": k, "shape": list(t.shape[1:]), "dtype": str(t.dtype).replace("torch.", "")} for k, t in named]


def select_output(out: Any, output: str | int | None = None) -> torch.Tensor:
    """The tensor of a model's output that metrics are computed on.

    Args:
        out: what the model returned: a tensor, a tuple / list, a dict, or an object with attributes (Hugging Face
            style).
        output: None: the tensor itself; a tuple's first item; a dict's (or an object's) ``logits``, else
            ``out``, else its first value. A string: that dict key or attribute. An integer: that tuple index.

    Raises:
        QuantizationError: ``output`` names nothing the model returns (the message lists what it returns), or the
            output holds no tensor.
    """
    if output is None:
        return _default(out)
    if isinstance(output, int) and not isinstance(output, bool):
        if isinstance(out, (tuple, list)):
            if -len(out) <= output < len(out):
                return _default(out[output])
            raise QuantizationError(
                f"output {output} does not exist: the model returns {len(out)} outputs (indices 0..{len(out) - 1})"
            )
        raise QuantizationError(f"output {output} does not exist: {_what(out)}")
    fields = _fields(out)
    if fields is None:
        raise QuantizationError(f"output {output!r} does not exist: {_what(out)}")
    if output not in fields:
        raise QuantizationError(
            f"output {output!r} does not exist: the model's outputs are {', '.join(map(str, fields)) or 'none'}"
        )
    return _default(fields[output])


def _fields(out: Any) -> dict[str, Any] | None:
    """A dict output's items, or an object's public tensor attributes; None for tensors and tuples."""
    if isinstance(out, Mapping):
        return {str(k): v for k, v in out.items()}
    if isinstance(out, (torch.Tensor, tuple, list)) or out is None:
        return None
    names = [n for n in dir(out) if not n.startswith("_")]
    found = {n: getattr(out, n, None) for n in names}
    return {n: v for n, v in found.items() if isinstance(v, (torch.Tensor, tuple, list))}


def _what(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return "the model returns a single tensor (leave output unset)"
    if isinstance(out, (tuple, list)):
        return f"the model returns {len(out)} outputs by position; name one by its index 0..{len(out) - 1}"
    fields = _fields(out) or {}
    return f"the model's outputs are {', '.join(fields) or 'none'}; name one of them"


def _default(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return _default(out[0])
    fields = _fields(out)
    if fields:
        for name in ("logits", "out"):
            if name in fields and fields[name] is not None:
                return _default(fields[name])
        return _default(next(iter(fields.values())))
    raise QuantizationError(f"the model's output holds no tensor (it returned {type(out).__name__})")
