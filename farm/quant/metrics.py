"""Accuracy against labels, fidelity against the fp32 reference on the same inputs, and the user's own metric.

Accuracy and agreement read a top-1 class, so they are computed only on class scores (:func:`is_class_scores`);
cosine and SQNR compare any output (logits, embeddings, hidden states).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from farm.errors import QuantizationError


@dataclass(frozen=True)
class Fidelity:
    """How close a model's outputs are to the fp32 reference's.

    Attributes:
        agreement: fraction of samples whose top-1 class matches the reference's; None when the outputs are not
            class scores (an embedding's argmax means nothing).
        sqnr_db: signal-to-quantization-noise ratio of the outputs in dB; None when they are identical
            (infinite SQNR).
        cosine: mean per-sample cosine similarity of the output vectors.
    """

    agreement: float | None
    sqnr_db: float | None
    cosine: float


#: Output names taken as class scores when the dataset does not say how many classes there are.
SCORE_NAMES = ("logits", "scores")


def is_class_scores(shape: tuple[int, ...], num_classes: int | None, output: str | int | None = None) -> bool:
    """Whether outputs of ``shape`` are class scores ``[batch, classes]``, whose argmax is a class.

    Args:
        shape: the outputs' shape, batch first.
        num_classes: the dataset's class count where known (``DatasetSplits.num_classes``).
        output: the output the job selected (``JobSpec.output``): None is the model's default (its logits).

    Returns:
        True for a 2-D output with at least two columns that is the model's default output, index 0 or one named
        ``logits`` / ``scores`` (a 1000-class model on a 10-folder dataset still has a top-1 to agree on), or any
        other output whose width is the class count. An output picked by another name or index (``embedding``,
        ``pooler_output``, a hidden state) is taken as features. Accuracy against labels also needs
        :func:`labels_fit`.
    """
    if len(shape) != 2 or shape[-1] < 2:
        return False
    if output is None or output == 0 or (isinstance(output, str) and output.lower() in SCORE_NAMES):
        return True
    return num_classes is not None and shape[-1] == num_classes


def labels_fit(shape: tuple[int, ...], num_classes: int | None) -> bool:
    """Whether a class-score output's argmax can be read as the dataset's label (its width is the class count,
    where that is known)."""
    return num_classes is None or shape[-1] == num_classes


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of samples whose label is among the ``k`` highest logits."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    return (top == labels.unsqueeze(-1)).any(dim=-1).float().mean().item()


def fidelity(reference: torch.Tensor, outputs: torch.Tensor, *, class_scores: bool = True) -> Fidelity:
    """Compare ``outputs`` with ``reference`` (same inputs, shape (N, ...)).

    Args:
        class_scores: whether the outputs are class scores (:func:`is_class_scores`); agreement is None if not.
    """
    ref = reference.detach().float().reshape(len(reference), -1)
    out = outputs.detach().float().reshape(len(outputs), -1)
    agreement = (ref.argmax(-1) == out.argmax(-1)).float().mean().item() if class_scores else None
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


def reference_health(reference: torch.Tensor, *, class_scores: bool = True) -> Health:
    """Whether the fp32 outputs can serve as a reference at all.

    A randomly initialised network (the issue's MobileNetV2: logits ~1e-9, one class for every input) gives
    outputs that are the same for every sample: agreement, SQNR and cosine against them are noise, and a trial
    that "collapses" cannot be told from one that works.

    Args:
        reference: the fp32 outputs, shape (N, ...).
        class_scores: whether they are class scores; "the same top-1 class for every sample" is checked only then.

    Returns:
        ``nan`` on non-finite outputs, ``degenerate_reference`` when they are near-constant across samples or
        (class scores only) every sample has the same top-1 class (with more than one class and at least
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
    one_class_matters = class_scores and len(ref) >= MIN_SAMPLES_ONE_CLASS and ref.shape[-1] > 1
    if one_class_matters and bool((ref.argmax(-1) == ref[0].argmax()).all()):
        return Health(
            HEALTH_DEGENERATE,
            f"health: degenerate reference: the fp32 model gives class {int(ref[0].argmax())} for all {len(ref)} "
            "samples; agreement and accuracy compared with it mean nothing (untrained weights?)",
        )
    return Health(HEALTH_OK)


def result_health(
    reference: torch.Tensor, outputs: torch.Tensor, fid: Fidelity, *, class_scores: bool = True
) -> Health:
    """The health of a result: its reference's first, then whether its own outputs collapsed.

    Args:
        reference: the fp32 outputs.
        outputs: this job's outputs on the same inputs (the reference's own for the fp32 job).
        fid: :func:`fidelity` of the two.
        class_scores: whether the outputs are class scores (:func:`is_class_scores`).

    Returns:
        ``nan`` (outputs or figures not finite), ``degenerate_reference``, ``collapsed`` (agreement or cosine
        about 0, or SQNR at or below 0 dB: the noise is as large as the signal), or ok.
    """
    ref_health = reference_health(reference, class_scores=class_scores)
    if ref_health.status != HEALTH_OK:
        return ref_health
    figures = [f for f in (fid.agreement, fid.cosine, fid.sqnr_db) if f is not None]
    if not bool(torch.isfinite(outputs.detach().double()).all()) or any(math.isnan(f) for f in figures):
        return Health(HEALTH_NAN, "health: the outputs or their fidelity figures are NaN")
    sqnr_bad = fid.sqnr_db is not None and fid.sqnr_db <= 0
    agreement_bad = fid.agreement is not None and fid.agreement <= COLLAPSED_FIDELITY
    if agreement_bad or fid.cosine <= COLLAPSED_FIDELITY or sqnr_bad:
        sqnr = "identical" if fid.sqnr_db is None else f"{fid.sqnr_db:.1f} dB"
        agreement = "" if fid.agreement is None else f"agreement {fid.agreement:.3f}, "
        return Health(
            HEALTH_COLLAPSED,
            f"health: collapsed: the outputs no longer follow fp32's ({agreement}cosine {fid.cosine:.3f}, SQNR "
            f"{sqnr}); its speed and size figures describe a broken model",
        )
    return Health(HEALTH_OK)


#: A user's metric function: (outputs, reference_outputs, labels or None) -> a float, higher is better.
MetricFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], Any]


def load_metric_fn(ref: str, allowed: list[str] | None = None) -> MetricFn:
    """Import the user's metric function, allowlisted exactly like ``entrypoint:`` models.

    Args:
        ref: ``entrypoint:pkg.module:function``.
        allowed: module prefixes it may import; default FARM_ALLOWED_MODULES.

    Returns:
        The function.

    Raises:
        ConfigError: a malformed reference, a module outside FARM_ALLOWED_MODULES, one that does not import, or no
            such callable.
    """
    from farm.metric_targets import parse_metric_fn
    from farm.zoo.models import import_entrypoint
    from farm.zoo.refs import Ref, check_entrypoint_allowed

    body = parse_metric_fn(ref).removeprefix("entrypoint:")
    module_name, function_name = check_entrypoint_allowed(Ref("metric", "entrypoint", body), allowed)
    function: MetricFn = import_entrypoint(module_name, function_name, ref)
    return function


def user_metric(fn: MetricFn, name: str, outputs: torch.Tensor, reference: torch.Tensor, labels: Any) -> float:
    """Call the user's metric on a job's outputs: copies of the tensors, so it can't alter the shared reference.

    Args:
        fn: from :func:`load_metric_fn`.
        name: its reference, for messages.
        outputs: the job's selected outputs on the whole split.
        reference: the fp32 outputs on the same samples.
        labels: the labels, or None for an unlabelled dataset.

    Returns:
        The value as a float.

    Raises:
        QuantizationError: the function raised, or returned something that is not a finite number (one line,
            naming the function).
    """
    try:
        value = fn(outputs.clone(), reference.clone(), None if labels is None else labels.clone())
    except Exception as e:
        raise QuantizationError(
            f"metric function {name} raised {type(e).__name__}: {' '.join(str(e).split())[:240]}"
        ) from e
    try:
        if isinstance(value, bool):  # float(True) is 1.0, but a pass/fail is no metric to rank by
            raise TypeError
        number = float(value.item() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError):
        raise QuantizationError(
            f"metric function {name} returned {type(value).__name__}, not a number (return one float)"
        ) from None
    if not math.isfinite(number):
        raise QuantizationError(f"metric function {name} returned {number}, not a finite number")
    return number
