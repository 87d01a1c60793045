"""Calibration for onnxruntime's static quantizer: our observers mapped to its calibration methods, and a
``CalibrationDataReader`` over the same deterministic batches the torch methods calibrate on.

Observer mapping (``farm.quant.config.OBSERVERS`` -> ``onnxruntime.quantization.CalibrationMethod``):

- minmax -> MinMax;
- moving_average -> MinMax with ``CalibMovingAverage`` (constant ``averaging_constant``, torch's 0.01 default);
- histogram -> Entropy (both pick the range that keeps the histogram's information; the algorithms differ);
- percentile -> Percentile with ``CalibPercentile`` = our ``percentile``.

Symmetric activations set ``ActivationSymmetric`` and ``CalibTensorRangeSymmetric``; symmetric weights set
``WeightSymmetric``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from farm.errors import QuantizationError
from farm.quant.inputs import Batch
from farm.quant.isolation import yield_to_benchmark
from farm.runtimes.ort import make_feeds

#: Our observer -> onnxruntime CalibrationMethod member name.
OBSERVER_METHODS = {
    "minmax": "MinMax",
    "moving_average": "MinMax",
    "histogram": "Entropy",
    "percentile": "Percentile",
}


def calibration_recipe(
    observer: str,
    *,
    percentile: float = 99.99,
    averaging_constant: float = 0.01,
    symmetric_activations: bool = False,
    symmetric_weights: bool = True,
) -> tuple[str, dict[str, Any]]:
    """(CalibrationMethod member name, ``extra_options``) for one of our observers.

    Raises:
        QuantizationError: an observer onnxruntime cannot do (the message lists those it can), or a percentile
            outside (50, 100].
    """
    if observer not in OBSERVER_METHODS:
        raise QuantizationError(
            f"onnxruntime cannot calibrate with observer {observer!r}; it can do {', '.join(OBSERVER_METHODS)}"
        )
    extra: dict[str, Any] = {"ActivationSymmetric": symmetric_activations, "WeightSymmetric": symmetric_weights}
    if symmetric_activations:
        extra["CalibTensorRangeSymmetric"] = True
    if observer == "moving_average":
        extra.update(CalibMovingAverage=True, CalibMovingAverageConstant=averaging_constant)
    if observer == "percentile":
        if not 50.0 < percentile <= 100.0:
            raise QuantizationError(f"percentile must be in (50, 100], not {percentile}")
        extra["CalibPercentile"] = percentile
    return OBSERVER_METHODS[observer], extra


def onnx_inputs(path: str | Path) -> list[tuple[str, Any]]:
    """(name, numpy dtype) of each real input (not an initializer) of the ONNX file at ``path``."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    return [
        (i.name, tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)) for i in graph.input if i.name not in inits
    ]


def calibration_reader(
    batches: Iterable[Batch], inputs: list[tuple[str, Any]], stop: Callable[[], bool] | None = None
) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` feeding ``batches`` (tensors, tuples or dicts of
    tensors, as the torch methods see them) to a graph with ``inputs``; ``count`` says how many it fed.

    Raises:
        QuantizationError: a batch that does not match the graph's inputs (when the quantizer reads it).
    """
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._source = batches
            self._it: Iterator[Batch] = iter(batches)
            self.count = 0

        def get_next(self) -> dict[str, Any] | None:
            yield_to_benchmark(stop)  # the quantizer holds the lock for its whole loop: a waiting benchmark goes first
            batch = next(self._it, None)
            if batch is None:
                return None
            self.count += 1
            return make_feeds(batch, inputs)

        def rewind(self) -> None:
            self._it = iter(self._source)
            self.count = 0

    return _Reader()
