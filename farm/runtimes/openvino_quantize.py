"""NNCF's quantization of an OpenVINO model: static (``nncf.quantize``) and int8 weight compression (OpenVINO's
stand-in for dynamic), with our observers mapped to NNCF's activation range estimators.

Callers (:func:`farm.runtimes.openvino.build`) check first that nncf is installed; it is imported only here, inside
the functions.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from farm.errors import QuantizationError
from farm.quant.inputs import Batch
from farm.quant.isolation import yield_to_benchmark
from farm.runtimes.ort import make_feeds

#: Our observers -> NNCF's activation range estimator presets (RangeEstimatorParametersSet members).
RANGE_ESTIMATORS = {
    "minmax": "MINMAX",
    "moving_average": "MEAN_MINMAX",
    "histogram": "HISTOGRAM",
    "percentile": "MEAN_QUANTILE",
}


def check_static(cfg: Any) -> Any:
    """Refuse what NNCF's static quantization cannot do (bits other than 8, an observer it has no estimator for);
    the activation range estimator for our observer."""
    if cfg.bits != 8:
        raise QuantizationError(f"OpenVINO static quantization runs int8 only; bits must be 8, not {cfg.bits}")
    return range_estimator(cfg)


def range_estimator(cfg: Any) -> Any:
    """NNCF's activation range estimator for our observer: minmax -> MINMAX, moving_average -> MEAN_MINMAX (the
    mean over batches of each batch's range), histogram -> HISTOGRAM, percentile -> MEAN_QUANTILE at our percentile.

    Raises:
        QuantizationError: an observer the installed NNCF has no estimator for.
    """
    from nncf.quantization.range_estimator import (
        AggregatorType,
        RangeEstimatorParameters,
        RangeEstimatorParametersSet,
        StatisticsCollectorParameters,
        StatisticsType,
    )

    name = RANGE_ESTIMATORS.get(cfg.observer)
    if name is None or not hasattr(RangeEstimatorParametersSet, name):
        has = [o for o, n in RANGE_ESTIMATORS.items() if hasattr(RangeEstimatorParametersSet, n)]
        raise QuantizationError(
            f"this NNCF cannot calibrate with observer {cfg.observer!r}; it can do {', '.join(has)}"
        )
    if cfg.observer != "percentile":
        return getattr(RangeEstimatorParametersSet, name)
    outlier = round((100.0 - float(cfg.percentile)) / 100.0, 12)  # 99.99 -> exactly NNCF's 1e-4
    side = StatisticsCollectorParameters(StatisticsType.QUANTILE, AggregatorType.MEAN, quantile_outlier_prob=outlier)
    return RangeEstimatorParameters(min=side, max=side)


def quantize_static(
    ov_model: Any,
    cfg: Any,
    batches: list[Batch],
    inputs: list[tuple[str, Any]],
    ignored: Sequence[str] = (),
    stop: Callable[[], bool] | None = None,
) -> tuple[Any, dict]:
    """``nncf.quantize`` of ``ov_model`` (a copy) on ``batches``; the quantized model and the recipe it ran. The
    nodes named in ``ignored`` (per-layer rules' skipped layers) are NNCF's ignored scope: they stay fp32.

    Raises:
        QuantizationError: bits other than 8, an observer NNCF has no estimator for, or NNCF failing (one line).
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    estimator = check_static(cfg)
    symmetric = cfg.activation == "symmetric"
    recipe = {
        "preset": "performance" if symmetric else "mixed",
        "range_estimator": RANGE_ESTIMATORS.get(cfg.observer),
        "per_channel": cfg.granularity == "per_channel",
        "model_type": "transformer" if _has_attention(ov_model) else None,
        "subset_size": cfg.calibration_size,
        "calibration_batches": len(batches),
    }
    advanced = AdvancedQuantizationParameters(
        weights_quantization_params=QuantizationParameters(per_channel=recipe["per_channel"]),
        activations_range_estimator_params=estimator,
    )

    def feeds(batch: Batch) -> list[Any]:
        yield_to_benchmark(stop)  # NNCF's loop holds the lock for the whole step: a waiting benchmark goes first
        return list(make_feeds(batch, inputs).values())

    dataset = nncf.Dataset(batches, feeds)
    try:
        with _quiet():
            quantized = nncf.quantize(
                ov_model.clone(),
                dataset,
                preset=nncf.QuantizationPreset.PERFORMANCE if symmetric else nncf.QuantizationPreset.MIXED,
                subset_size=cfg.calibration_size,
                model_type=nncf.ModelType.TRANSFORMER if recipe["model_type"] else None,
                ignored_scope=_ignored_scope(ignored),
                advanced_parameters=advanced,
            )
    except Exception as e:
        raise QuantizationError(f"NNCF static quantization failed: {_one_line(e)}") from e
    return quantized, recipe


def compress_weights(ov_model: Any, ignored: Sequence[str] = ()) -> tuple[Any, dict]:
    """NNCF int8 weight compression (INT8_SYM) of ``ov_model`` (a copy): OpenVINO's stand-in for dynamic; the
    nodes named in ``ignored`` keep fp32 weights."""
    import nncf

    try:
        with _quiet():
            compressed = nncf.compress_weights(
                ov_model.clone(), mode=nncf.CompressWeightsMode.INT8_SYM, ignored_scope=_ignored_scope(ignored)
            )
    except Exception as e:
        raise QuantizationError(f"NNCF weight compression failed: {_one_line(e)}") from e
    return compressed, {"weight_compression": "INT8_SYM", "per_channel": True}


def _ignored_scope(names: Sequence[str]) -> Any:
    """NNCF's ignored scope for these node names (validated: a name NNCF does not find fails the build), or None."""
    import nncf

    return nncf.IgnoredScope(names=list(names)) if names else None


def _has_attention(ov_model: Any) -> bool:
    """A Softmax in the graph: NNCF's TRANSFORMER model type keeps its quantizers off attention's fragile parts."""
    return any(op.get_type_name() == "Softmax" for op in ov_model.get_ordered_ops())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF prints progress bars and logs its statistics collection; the figures go in the results instead."""
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
