"""Accuracy against labels, and fidelity against the fp32 reference on the same inputs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Fidelity:
    """How close a model's outputs are to the fp32 reference's.

    Attributes:
        agreement: fraction of samples whose top-1 class matches the reference's.
        sqnr_db: signal-to-quantization-noise ratio of the outputs in dB; None when they are identical
            (infinite SQNR).
        cosine: mean per-sample cosine similarity of the output vectors.
    """

    agreement: float
    sqnr_db: float | None
    cosine: float


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of samples whose label is among the ``k`` highest logits."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    return (top == labels.unsqueeze(-1)).any(dim=-1).float().mean().item()


def fidelity(reference: torch.Tensor, outputs: torch.Tensor) -> Fidelity:
    """Compare ``outputs`` with ``reference`` (same inputs, shape (N, ...))."""
    ref = reference.detach().float().reshape(len(reference), -1)
    out = outputs.detach().float().reshape(len(outputs), -1)
    agreement = (ref.argmax(-1) == out.argmax(-1)).float().mean().item()
    noise = (ref - out).double().pow(2).sum().item()
    signal = ref.double().pow(2).sum().item()
    sqnr = None if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else float("-inf"))
    cosine = torch.nn.functional.cosine_similarity(ref.double(), out.double(), dim=-1, eps=1e-12).mean().item()
    return Fidelity(agreement, sqnr, cosine)


def all_finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())
