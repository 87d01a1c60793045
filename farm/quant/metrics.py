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
    """Whether every element of ``t`` is finite (no NaN, no Inf)."""
    return bool(torch.isfinite(t).all())


#: A result's health: whether its figures mean anything (docs/schema.md, column ``health``).
HEALTH_OK, HEALTH_DEGENERATE, HEALTH_COLLAPSED, HEALTH_NAN = "ok", "degenerate_reference", "collapsed", "nan"
#: Below this spread across samples, relative to the outputs' magnitude, the reference says the same for every input.
FLAT_SPREAD = 1e-3
#: Agreement or cosine at or below this is "about zero": the trial's outputs have nothing to do with fp32's.
COLLAPSED_FIDELITY = 0.01
#: "One class for every input" needs this many samples to mean anything (a trained model may agree on a few).
MIN_SAMPLES_ONE_CLASS = 8


@dataclass(frozen=True)
class Health:
    """Whether a result's figures can be trusted, and why not.

    Attributes:
        status: ``ok``, ``degenerate_reference`` (the fp32 outputs carry no class signal: every trial compared
            with them is meaningless), ``collapsed`` (the trial's outputs no longer follow fp32's) or ``nan``.
        reason: one line for result.warnings; None when ok.
    """

    status: str
    reason: str | None = None


def reference_health(reference: torch.Tensor) -> Health:
    """Whether the fp32 outputs can serve as a reference at all.

    A randomly initialised network (the issue's MobileNetV2: logits ~1e-9, one class for every input) gives
    outputs that are the same for every sample: agreement, SQNR and cosine against them are noise, and a trial
    that "collapses" cannot be told from one that works.

    Args:
        reference: the fp32 outputs, shape (N, ...).

    Returns:
        ``nan`` on non-finite outputs, ``degenerate_reference`` when they are near-constant across samples or
        every sample has the same top-1 class (with more than one class and at least
        :data:`MIN_SAMPLES_ONE_CLASS` samples), else ok.
    """
    ref = reference.detach().double().reshape(len(reference), -1)
    if not bool(torch.isfinite(ref).all()):
        return Health(HEALTH_NAN, "health: the fp32 outputs contain NaN or Inf")
    if len(ref) < 2:
        return Health(HEALTH_OK)
    magnitude = ref.abs().mean().item()
    spread = ref.std(dim=0).mean().item()
    if magnitude == 0 or spread <= FLAT_SPREAD * magnitude:
        return Health(
            HEALTH_DEGENERATE,
            f"health: degenerate reference: the fp32 outputs are near-constant across samples (spread "
            f"{spread:.3g} against magnitude {magnitude:.3g}); accuracy and fidelity figures compared with them "
            "mean nothing (untrained weights?)",
        )
    if len(ref) >= MIN_SAMPLES_ONE_CLASS and ref.shape[-1] > 1 and bool((ref.argmax(-1) == ref[0].argmax()).all()):
        return Health(
            HEALTH_DEGENERATE,
            f"health: degenerate reference: the fp32 model gives class {int(ref[0].argmax())} for all {len(ref)} "
            "samples; agreement and accuracy compared with it mean nothing (untrained weights?)",
        )
    return Health(HEALTH_OK)


def result_health(reference: torch.Tensor, outputs: torch.Tensor, fid: Fidelity) -> Health:
    """The health of a result: its reference's first, then whether its own outputs collapsed.

    Args:
        reference: the fp32 outputs.
        outputs: this job's outputs on the same inputs (the reference's own for the fp32 job).
        fid: :func:`fidelity` of the two.

    Returns:
        ``nan`` (outputs or figures not finite), ``degenerate_reference``, ``collapsed`` (agreement or cosine
        about 0, or SQNR at or below 0 dB: the noise is as large as the signal), or ok.
    """
    ref_health = reference_health(reference)
    if ref_health.status != HEALTH_OK:
        return ref_health
    figures = [fid.agreement, fid.cosine, *([fid.sqnr_db] if fid.sqnr_db is not None else [])]
    if not bool(torch.isfinite(outputs.detach().double()).all()) or any(math.isnan(f) for f in figures):
        return Health(HEALTH_NAN, "health: the outputs or their fidelity figures are NaN")
    sqnr_bad = fid.sqnr_db is not None and fid.sqnr_db <= 0
    if fid.agreement <= COLLAPSED_FIDELITY or fid.cosine <= COLLAPSED_FIDELITY or sqnr_bad:
        sqnr = "identical" if fid.sqnr_db is None else f"{fid.sqnr_db:.1f} dB"
        return Health(
            HEALTH_COLLAPSED,
            f"health: collapsed: the outputs no longer follow fp32's (agreement {fid.agreement:.3f}, cosine "
            f"{fid.cosine:.3f}, SQNR {sqnr}); its speed and size figures describe a broken model",
        )
    return Health(HEALTH_OK)
